"""The read on Ray workers (`RayExecutor.read_sources`, the runner's read hook): the same
`stages/00-read` parts, quarantine.jsonl, `--limit` sample, names and per-source counts as
the local streamed read (runner `_read_local`), byte for byte.

Three steps:
  plan     (driver) curate/read/ranges.py: every source's files, each cut into pieces (line
           ranges of plain JSONL found by counting newlines, else whole files), with the
           format resolved as the sequential reader would. Bytes only, no parse.
  pieces   (workers, one task per piece) read and normalise the piece with the sequential
           reader's own per-block code, write its records to RUN/read-work/piece-PPPPP.arrow
           (Arrow IPC, batch by batch: one block in memory) and return the counts, the
           quarantine lines (JSON text, in input order), the log lines and, under `--limit`,
           the seeded sample keys of the origins (8 B a record).
  parts    (driver) the quarantine written in piece order, the part cuts computed: parts of
           exactly `part_rows` records across pieces, files and sources, as the local sink
           cuts them; under `--limit`, each source's sample (curate.read.limit's rule: the
           `limit` smallest keys, ties by position) as a mask per piece.
           (workers, one task per part) the part's slices of the pieces read back, `trusted`
           labels added, the part written (parts.write_part) and its task/source names
           returned.
The driver holds: the plan (one entry per `part_rows` lines), the quarantine text of one
piece at a time (what the local read writes too), one small result per piece and per part;
under `--limit` the sample keys of every record (8 B each). The records themselves go
worker -> run directory -> worker. Cost against the local read: the records are written
once more (the pieces, then the parts) and read back once; the pieces are removed when the
parts are written. Workers need the source files at the same paths as the driver.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import polars as pl
import pyarrow as pa

from curate.contract.atomic import atomic_path
from curate.contract.schema import empty_records
from curate.pipeline import parts as P
from curate.pipeline import trusted
from curate.pipeline.ray_blocks import maybe_fault
from curate.read.limit import limit_keys
from curate.read.ranges import Piece, SourcePlan, plan_sources, read_piece

NAME_COLUMNS = ("task", "source")


def piece_file(work: Path, i: int) -> Path:
    return Path(work) / f"piece-{i:05d}.arrow"


def _piece_task(plans: list[SourcePlan], base_dir: Path, work: Path, batch_rows: int, limit: int | None,
                seed: int) -> Callable[[pa.Table], pa.Table]:
    def run(batch: pa.Table) -> pa.Table:
        out = []
        for d in batch.to_pylist():
            maybe_fault()
            piece = Piece(**json.loads(d["piece"]))
            if piece.span is not None:
                piece.span = tuple(piece.span)
            plan = plans[piece.source]
            logs: list[str] = []
            rows, quarantine, keys = 0, [], []
            writer, schema, target = None, None, piece_file(work, d["i"])
            with atomic_path(target) as tmp:
                try:
                    for table, q in read_piece(plan, piece, base_dir, batch_rows, logs.append):
                        quarantine += q
                        if not table.height:
                            continue
                        if limit is not None:
                            keys.append(limit_keys(table, seed))
                        arrow = table.to_arrow()
                        if writer is None:
                            sink, schema = pa.OSFile(str(tmp), "wb"), arrow.schema
                            writer = pa.ipc.new_file(sink, schema)
                        writer.write_table(arrow.cast(schema))
                        rows += table.height
                finally:
                    if writer is not None:
                        writer.close()
                        sink.close()
                if writer is None:  # no records: an empty file, so that the rename has something
                    Path(tmp).write_bytes(b"")
            out.append({"i": d["i"], "rows": rows, "quarantined": len(quarantine),
                        "quarantine": "".join(json.dumps(x, ensure_ascii=False, sort_keys=True) + "\n"
                                              for x in quarantine),
                        "logs": json.dumps(logs), "format": plan.format, "files": json.dumps(plan.files),
                        "keys": np.concatenate(keys).tobytes() if keys else b""})
        return pa.Table.from_pylist(out)

    return run


def _part_task(folder: Path, work: Path, sources) -> Callable[[pa.Table], pa.Table]:
    def run(batch: pa.Table) -> pa.Table:
        out = []
        for d in batch.to_pylist():
            maybe_fault()
            frames = []
            for p, lo, hi, mask in json.loads(d["slices"]):
                # memory-mapped: only the slice's pages are read
                t = pa.ipc.open_file(pa.memory_map(str(piece_file(work, p)), "r")).read_all()
                if mask is not None:
                    t = t.filter(pa.array(np.unpackbits(np.frombuffer(bytes.fromhex(mask), np.uint8),
                                                        count=t.num_rows).astype(bool)))
                frames.append(pl.from_arrow(t.slice(lo, hi - lo)))
            table = pl.concat(frames, how="vertical") if len(frames) > 1 else frames[0]
            table = trusted.label(table, sources)
            entry = P.write_part(folder, d["i"], table)
            names = {c: table[c].drop_nulls().unique().to_list() for c in NAME_COLUMNS}
            out.append({"i": d["i"], "entry": json.dumps(entry), "names": json.dumps(names)})
        return pa.Table.from_pylist(out)

    return run


def _limit_masks(results: list[dict], pieces: list[Piece], n_sources: int, limit: int
                 ) -> tuple[list[np.ndarray | None], dict[int, int]]:
    """Per piece, which of its records `--limit`'s sample keeps (None: all), and each
    source's record count before the sample: curate.read.limit.sample_records over the
    source's records in reading order."""
    masks: list[np.ndarray | None] = [None] * len(pieces)
    totals = {}
    for s in range(n_sources):
        idx = [k for k, pc in enumerate(pieces) if pc.source == s]
        sizes = [results[k]["rows"] for k in idx]
        totals[s] = int(sum(sizes))
        if totals[s] <= limit:
            continue
        keys = np.concatenate([np.frombuffer(results[k]["keys"], dtype=np.uint64) for k in idx])
        keep = np.zeros(len(keys), dtype=bool)
        keep[np.argsort(keys, kind="stable")[:limit]] = True
        for k, piece_keep in zip(idx, np.split(keep, np.cumsum(sizes)[:-1])):
            masks[k] = piece_keep
    return masks, totals


def read_on_workers(ex, cfg, folder: Path, work: Path, qf, part_rows: int, limit: int | None, log) -> dict:
    """The runner's read on the cluster (see the module doc). `qf`: quarantine.jsonl open for
    writing. Returns what the local read returns: parts (entries), sources, names, quarantined
    and, under `limit`, each source's records before the sample."""
    plans = plan_sources(cfg.sources, cfg.base_dir, part_rows, log)
    pieces = [pc for plan in plans for pc in plan.pieces]
    items = [{"i": k, "piece": json.dumps(asdict(pc))} for k, pc in enumerate(pieces)]
    log(f"[read] ray: {len(pieces)} piece(s) of up to {part_rows:,} lines on workers")
    results = ex.map_items(items, _piece_task(plans, cfg.base_dir, work, part_rows, limit, cfg.run.seed))
    if [r["i"] for r in results] != list(range(len(pieces))):
        raise RuntimeError(f"ray: read finished {len(results)} of {len(pieces)} pieces")
    masks, totals = (_limit_masks(results, pieces, len(plans), limit) if limit is not None
                     else ([None] * len(pieces), {}))
    per_source = [{"records": 0, "quarantined": 0} for _ in plans]
    for pc, r, m in zip(pieces, results, masks):
        for line in json.loads(r["logs"]):
            log(line)
        qf.write(r["quarantine"])
        s = per_source[pc.source]
        s["records"] += int(m.sum()) if m is not None else r["rows"]
        s["quarantined"] += r["quarantined"]
        if pc.whole:  # the sequential reader resolved them
            plans[pc.source].format, plans[pc.source].files = r["format"], json.loads(r["files"])
        r["keys"] = b""
    # the cuts: parts of exactly part_rows records over the pieces' kept records, in order
    jobs, cur, filled = [], [], 0
    for k, (r, m) in enumerate(zip(results, masks)):
        kept = int(m.sum()) if m is not None else r["rows"]
        lo = 0
        while lo < kept:
            take = min(part_rows - filled, kept - lo)
            cur.append([k, lo, lo + take, np.packbits(m).tobytes().hex() if m is not None else None])
            lo, filled = lo + take, filled + take
            if filled == part_rows:
                jobs.append(cur)
                cur, filled = [], 0
    if cur:
        jobs.append(cur)
    names: dict[str, set] = {c: set() for c in NAME_COLUMNS}
    if jobs:
        got = ex.map_items([{"i": j, "slices": json.dumps(sl)} for j, sl in enumerate(jobs)],
                           _part_task(folder, work, cfg.sources))
        if [g["i"] for g in got] != list(range(len(jobs))):
            raise RuntimeError(f"ray: read wrote {len(got)} of {len(jobs)} parts")
        entries = [json.loads(g["entry"]) for g in got]
        for g in got:
            for c, v in json.loads(g["names"]).items():
                names[c].update(v)
    else:
        entries = [P.write_part(folder, 0, empty_records())]
    P.remove_parts(folder, keep=len(entries))
    sources = []
    for plan, s in zip(plans, per_source):
        sources.append({"name": plan.cfg.name, "format": plan.format, "files": plan.files,
                        "read": s["records"] + s["quarantined"], "records": s["records"],
                        "quarantined": s["quarantined"]})
    return {"entries": entries, "sources": sources, "names": names,
            "quarantined": sum(s["quarantined"] for s in per_source),
            "totals": {plan.cfg.name: totals[i] for i, plan in enumerate(plans)} if limit is not None else None}

