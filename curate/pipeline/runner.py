"""The pipeline runner: read -> [[stages]] -> render -> shards -> manifest.

The runner, not the stages, owns the bookkeeping:
  - the run directory (curate/pipeline/rundir.py): it must be new, empty or a curate run
    (marker `RUN/.curate-run.json` listing what runs wrote there); every write goes
    through `RunDir.own/path`, checked inside RUN after resolving symlinks; only entries
    a run wrote are ever deleted,
  - the ledger (read = kept + quarantined + dropped, checked stage by stage), recomputed
    from the stage outputs and rejects on disk, never taken from a `done.json`; rows a
    `mix` stage repeated (`repeat` > 0) are counted apart: `upsampled` when added,
    `copies_dropped` when a later stage or render drops them,
  - rejects (`RUN/rejects/NN-name.parquet`) and quarantine (`RUN/quarantine.jsonl`),
  - resume: each finished stage leaves `RUN/stages/NN-name/{part-*.parquet,done.json}`. Its
    fingerprint chains the inputs' bytes, every config up to that stage, the sha256 of
    every file those configs read (curate/pipeline/fingerprint.py) and the sha256 of the
    stage's input data. `done.json` records the sha256 of its data and rejects and its
    counts; a rerun reuses a stage only when all of them still match the files, otherwise
    it recomputes that stage and logs why,
  - atomic writes, so a run killed anywhere resumes to the same bytes; temporary files a
    killed run left are removed when the next one starts.
Timings go to `RUN/timings.json`, not the manifest, so the manifest is as deterministic as
the shards are.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import json
import platform
import shutil
import sys
import time
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq

from curate import __version__
from curate.contract.atomic import atomic_path, write_json
from curate.contract.ledger import Ledger, drop_counts
from curate.contract.progress import Progress
from curate.contract.schema import empty_records
from curate.pipeline.config import PipelineConfig, pipeline_inputs, source_roots
from curate.pipeline import parts as P
from curate.pipeline.executor import Executor, StageJob, make_executor, run_whole
from curate.pipeline.parts import StageProgress
from curate.pipeline.memory import choose_part_rows
from curate.pipeline.fingerprint import FileHashes, config_files
from curate.pipeline import trusted
from curate.pipeline.rundir import RunDir, check_output_dir
from curate.read.readers import iter_source, read_source
from curate.read.sources import source_files
from curate.stages import stage_class
from curate.stages.base import StageContext

READ_DIR = "00-read"
HASH_CACHE = ".curate-cache/hashes.json"
VERSIONED = ("polars", "pyarrow", "numpy", "datasketch", "tokenizers", "transformers", "jinja2", "torch")


class LedgerError(RuntimeError):
    """A stage lost or invented rows: an internal bug, never a data problem."""


def _plain(obj: Any) -> Any:
    return asdict(obj) if is_dataclass(obj) else obj


def _hash(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()


def input_fingerprint(cfg: PipelineConfig, hashes: FileHashes | None = None) -> str:
    """Hash of every input file's bytes plus the source configs and seed."""
    hashes = hashes or FileHashes(None)
    files = []
    for s in cfg.sources:
        for f in source_files(s, cfg.base_dir):
            files.append([s.name, f.name, f.stat().st_size, hashes.sha256(f)])
    return _hash("curate", __version__, [_plain(s) for s in cfg.sources], cfg.run.seed, files)


def versions() -> dict:
    """Versions of the libraries a run may use, read from package metadata: nothing is
    imported for this (importing torch and transformers costs ~250 MB and seconds)."""
    out = {"python": platform.python_version(), "curate": __version__}
    for mod in VERSIONED:
        m = sys.modules.get(mod)
        v = getattr(m, "__version__", None) if m is not None else None
        if v is None:
            try:
                v = importlib.metadata.version(mod)
            except importlib.metadata.PackageNotFoundError:
                continue  # a missing optional module is just not listed
        out[mod] = v
    return out


def _load_done(done_path: Path, fingerprint: str) -> tuple[dict | None, str]:
    """done.json if it was written under `fingerprint`; else (None, why) with why "" when
    the stage simply has not run (or ran under another fingerprint)."""
    if not done_path.is_file():
        return None, ""
    try:
        info = json.loads(done_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"its done.json is unreadable ({exc})"
    if not isinstance(info, dict):
        return None, "its done.json is not an object"
    if info.get("fingerprint") != fingerprint:
        return None, "its config, the files it reads or its input changed"
    return info, ""


def _check_done(folder: Path, fingerprint: str, files: dict[str, Path], hashes: FileHashes) -> tuple[dict | None, str]:
    """done.json of the dataset in `folder` if it matches `fingerprint`, every part's
    sha256 (curate/pipeline/parts.py) and the sha256 of each of `files`; else (None, why)."""
    info, why = _load_done(folder / P.DONE, fingerprint)
    if info is None:
        return None, why
    why = P.check_parts(folder, info.get("parts"), hashes.sha256)
    if why:
        return None, why
    recorded = info.get("sha256") or {}
    for key, path in files.items():
        if not path.is_file():
            return None, f"{path.name} is missing"
        if recorded.get(key) != hashes.sha256(path):
            return None, f"{path.name} does not match the checksum in its done.json"
    if sum(int(e["rows"]) for e in info["parts"]) != info.get("rows_out"):
        return None, "its done.json counts do not match its data"
    return info, ""


def _start_dataset(folder: Path) -> None:
    """Before (re)computing the dataset in `folder`: its done.json goes first (a run killed
    from here on is never mistaken for a finished one), and the single-file layout of
    earlier versions (`data.parquet`) with it."""
    for name in (P.DONE, "data.parquet"):
        if (folder / name).is_file():
            (folder / name).unlink()


def _data_sha(entries: list[dict]) -> str:
    """One checksum of a dataset: its parts' checksums in order (the fingerprint chain)."""
    return _hash([e["sha256"] for e in entries])


# the stage's rejects as one file (parts.merge_rejects); an executor with its own merge
# (Ray: on a worker) is called instead
_write_rejects = P.merge_rejects


def _all_reasons(path: Path) -> dict[str, int]:
    """Rows of a rejects file by reason (copies included): the stage's `dropped`."""
    r = pl.read_parquet(path, columns=["reason"])
    if r.height == 0:
        return {}
    return {str(k): int(n) for k, n in r.group_by("reason").len().sort("reason").iter_rows()}


def _reject_counts(path: Path) -> tuple[int, dict[str, int], int]:
    """(rows, records dropped by reason, copies dropped) of a rejects file (small columns)."""
    cols = [c for c in ("reason", "repeat") if c in pq.read_schema(path).names]
    rejected = pl.read_parquet(path, columns=cols)
    records, copies = drop_counts(rejected, "reason")
    return rejected.height, records, copies


def _recompute_log(progress: Progress, name: str, why: str) -> None:
    if why:
        progress.log(f"[{name}] recomputing: {why}")


def limited_output_dir(cfg: PipelineConfig, limit: int) -> Path:
    """Where `--limit N` runs go: beside the full run, never into it."""
    base = cfg.output_dir()
    return base.with_name(f"{base.name}-limit-{limit}")


def run_pipeline(cfg: PipelineConfig, out_dir: str | Path | None = None, fresh: bool = False,
                 progress: Progress | None = None, executor: Executor | None = None,
                 limit: int | None = None) -> dict:
    """Run the curation pipeline of `cfg`; returns the manifest (also written to disk).
    `limit`: a seeded sample of that many records per source (curate.read.limit), run into
    `limited_output_dir` unless out_dir is given."""
    progress = progress or Progress(enabled=False)
    if limit is not None and out_dir is None:
        out_dir = limited_output_dir(cfg, limit)
    out = check_output_dir(cfg.output_dir(out_dir), pipeline_inputs(cfg), source_roots(cfg))
    run_dir = RunDir.open(out, fresh=fresh, log=progress.log)
    own_executor = executor is None
    executor = executor or make_executor(cfg.run)
    try:
        return _run(cfg, run_dir, progress, executor, limit)
    finally:
        if own_executor:
            executor.close()


def _clean_stale(rd: RunDir, keep_stage_dirs: set[str]) -> None:
    """Remove stage outputs and rejects an earlier, different pipeline wrote here (only
    entries listed in the run marker: nothing a run did not write)."""
    for rel in rd.owned_children("stages"):
        if Path(rel).name not in keep_stage_dirs:
            rd.remove(rel)
    for rel in rd.owned_children("rejects"):
        p = Path(rel)
        if p.suffix == ".parquet" and p.stem not in keep_stage_dirs and p.stem != "render":
            rd.remove(rel)


class _PartSink:
    """Record batches in, parts of exactly `part_rows` rows out (the last one shorter):
    holds at most one part plus one batch."""

    def __init__(self, folder: Path, part_rows: int):
        self.folder, self.part_rows = folder, part_rows
        self.entries: list[dict] = []
        self._buf: list[pl.DataFrame] = []
        self._rows = 0

    def add(self, table: pl.DataFrame) -> None:
        if not table.height:
            return
        self._buf.append(table)
        self._rows += table.height
        while self._rows >= self.part_rows:
            self._emit(self.part_rows)

    def _emit(self, n: int) -> None:
        t = pl.concat(self._buf, how="vertical") if len(self._buf) > 1 else self._buf[0]
        self.entries.append(P.write_part(self.folder, len(self.entries), t.slice(0, n)))
        rest = t.slice(n)
        self._buf, self._rows = ([rest] if rest.height else []), rest.height

    def close(self) -> list[dict]:
        if self._rows or not self.entries:
            self._emit(self._rows) if self._rows else self.entries.append(
                P.write_part(self.folder, 0, empty_records()))
        P.remove_parts(self.folder, keep=len(self.entries))
        return self.entries


def _read(cfg: PipelineConfig, rd: RunDir, hashes: FileHashes, progress: Progress, fingerprint: str,
          limit: int | None = None, part_rows: int | None = None, executor: Executor | None = None):
    """The sources, streamed in batches of `part_rows` records into the parts of
    stages/00-read; quarantine.jsonl written as the batches come. Returns done.json's info."""
    read_dir = rd.own(f"stages/{READ_DIR}")
    qpath = rd.own("quarantine.jsonl")
    info, why = _check_done(read_dir, fingerprint, {"quarantine": qpath}, hashes)
    if info is not None:
        try:
            n_quarantined = sum(1 for line in qpath.open("rb") if line.strip())
            if n_quarantined != info.get("quarantined") or "names" not in info:
                info, why = None, "its done.json counts do not match its data"
        except OSError as exc:
            info, why = None, f"its quarantine is unreadable ({exc})"
    if info is not None:
        progress.log(f"[read] resumed: {info['rows_out']:,} records from {read_dir}")
        return info
    _recompute_log(progress, "read", why)
    _start_dataset(read_dir)
    part_rows = part_rows or choose_part_rows(cfg, progress.log)
    # an executor that reads on its own workers (Ray: curate/pipeline/ray_read.py) gives the
    # same parts, quarantine, names and counts as the local streamed read
    reader = getattr(executor, "read_sources", None)
    with progress.stage("read", total=len(cfg.sources)) as done:
        with atomic_path(qpath) as qtmp, open(qtmp, "w", encoding="utf-8") as qf:
            if reader is not None:
                work = _fresh(rd, READ_WORK)
                got = reader(cfg, read_dir, work, qf, part_rows, limit, progress.log)
                rd.remove(READ_WORK)
            else:
                got = _read_local(cfg, read_dir, qf, part_rows, limit, progress.log)
        entries, n_quarantined = got["entries"], got["quarantined"]
        rows = sum(int(e["rows"]) for e in entries)
        info = {
            "fingerprint": fingerprint,
            "rows_out": rows,
            "quarantined": n_quarantined,
            "parts": entries,
            "names": {c: sorted(v) for c, v in got["names"].items()},
            "sha256": {"quarantine": hashes.sha256(qpath)},
            "sources": got["sources"],
        }
        if limit is not None:
            info["limit"] = {"per_source": limit, "records_before": got["totals"]}
        write_json(read_dir / P.DONE, info)
        done(rows, 0, f"{n_quarantined:,} quarantined")
    return info


READ_WORK = "read-work"  # an executor's read pieces (Ray); removed when the parts are written


def _read_local(cfg: PipelineConfig, read_dir: Path, qf, part_rows: int, limit: int | None, log) -> dict:
    """The sources streamed in batches of `part_rows` records into the parts of
    stages/00-read, quarantine lines written to `qf` as the batches come."""
    sink = _PartSink(read_dir, part_rows)
    sources, totals, names = [], {}, {"task": set(), "source": set()}
    n_quarantined = 0
    for s in cfg.sources:
        if limit is not None:  # --limit: a seeded sample per source (curate.read.limit); held whole
            from curate.read.limit import sample_records

            r = read_source(s, cfg.base_dir, log)
            totals[r.name] = r.table.height
            batches, stream = [(sample_records(r.table, limit, cfg.run.seed), r.quarantine)], r
        else:
            stream = iter_source(s, cfg.base_dir, part_rows, log)
            batches = stream
        records = quarantined = 0
        for table, q in batches:
            table = trusted.label(table, cfg.sources)  # `trusted = true` sources: the `trusted` label column
            sink.add(table)
            records += table.height
            quarantined += len(q)
            for c in names:
                names[c].update(table[c].drop_nulls().unique().to_list())
            qf.write("".join(json.dumps(x, ensure_ascii=False, sort_keys=True) + "\n" for x in q))
        n_quarantined += quarantined
        sources.append({"name": s.name, "format": stream.format, "files": stream.files,
                        "read": records + quarantined, "records": records, "quarantined": quarantined})
    return {"entries": sink.close(), "sources": sources, "names": names, "quarantined": n_quarantined,
            "totals": totals}


def _run(cfg: PipelineConfig, rd: RunDir, progress: Progress, executor: Executor, limit: int | None = None) -> dict:
    out = rd.root
    stage_names = [getattr(s, "name", None) or s.kind for s in cfg.stages]
    stage_dirs = [f"{i:02d}-{n}" for i, n in enumerate(stage_names, start=1)]
    _clean_stale(rd, {READ_DIR, *stage_dirs})
    hashes = FileHashes(rd.own(HASH_CACHE))
    timings: dict[str, float] = {}
    ledger = Ledger()

    # ---- read
    t0 = time.perf_counter()
    fingerprint = input_fingerprint(cfg, hashes)
    if limit is not None:
        fingerprint = _hash(fingerprint, "limit", limit)
    part_rows = cfg.run.part_rows or None
    info = _read(cfg, rd, hashes, progress, fingerprint, limit, part_rows, executor)
    timings["read"] = time.perf_counter() - t0
    n_quarantined = info["quarantined"]
    ledger.read = info["rows_out"] + n_quarantined
    ledger.quarantined = n_quarantined
    source_info = info["sources"]
    info_limit = info.get("limit")
    _check_names(cfg, info["names"], progress.log)
    if part_rows is None:  # resumed read: the part size its parts were cut to
        part_rows = max([int(e["rows"]) for e in info["parts"]] + [1])
    in_dir, in_entries, rows_in = rd.root / "stages" / READ_DIR, info["parts"], info["rows_out"]
    data_sha = _data_sha(in_entries)
    render_files = hashes.digest(config_files(cfg.render, cfg.base_dir, out)) if cfg.render is not None else None

    # ---- stages
    stage_reports = []
    for index, (stage_cfg, name, dirname) in enumerate(zip(cfg.stages, stage_names, stage_dirs), start=1):
        needs_render = _needs_render(stage_cfg)
        fingerprint = _hash(fingerprint, stage_cfg.kind, _plain(stage_cfg),
                            _plain(cfg.render) if needs_render else None,
                            hashes.digest(config_files(stage_cfg, cfg.base_dir, out)),
                            render_files if needs_render else None, data_sha)
        sdir = rd.own(f"stages/{dirname}")
        rejects_path = rd.own(f"rejects/{dirname}.parquet")
        t0 = time.perf_counter()
        info, why = _check_done(sdir, fingerprint, {"rejects": rejects_path}, hashes)
        if info is not None:
            try:
                n_rejected, records_dropped, copies_dropped = _reject_counts(rejects_path)
                if (info.get("rows_in"), sum((info.get("dropped") or {}).values())) != (rows_in, n_rejected):
                    info, why = None, "its done.json counts do not match its data"
            except Exception as exc:  # noqa: BLE001 - a damaged part means recompute, never a crash
                info, why = None, f"its rejects are unreadable ({type(exc).__name__}: {exc})"
        if info is not None:
            progress.log(f"[{name}] resumed: {info['rows_out']:,} rows from {sdir}")
        else:
            _recompute_log(progress, name, why)
            _start_dataset(sdir)
            context = StageContext(run_dir=out, config_dir=cfg.base_dir, seed=cfg.run.seed, stage_dir=sdir,
                                   log=progress.log, render=cfg.render)
            stage = stage_class(stage_cfg.kind)(stage_cfg, context)
            with progress.stage(f"{index}/{len(cfg.stages)} {name}", total=rows_in) as done:
                job = StageJob(in_dir=in_dir, in_entries=in_entries, out_dir=sdir, part_rows=part_rows,
                               progress=StageProgress(sdir, _hash(fingerprint, [e["rows"] for e in in_entries])),
                               log=progress.log)
                runner = getattr(executor, "run_stage", None)
                result = runner(stage, job) if runner is not None else run_whole(executor, stage, job)
                P.remove_parts(sdir, keep=len(result.entries))
                # an executor with its own merge (Ray: on a worker, so no rejected text reaches the driver)
                write_rejects = getattr(executor, "write_rejects", _write_rejects)
                rejected = write_rejects(rejects_path, result.rejects)
                del result.rejects[:]
                n_rejected, records_dropped, copies_dropped = _reject_counts(rejects_path)
                dropped = {k: v for k, v in sorted(_all_reasons(rejects_path).items())}
                upsampled = int(result.stats.get("upsampled", 0) or 0)
                if rows_in + upsampled != result.rows_out + n_rejected:
                    raise LedgerError(f"stage {name!r}: {rows_in} rows in, {upsampled} added by upsampling, but "
                                      f"{result.rows_out} kept + {n_rejected} dropped")
                info = {"fingerprint": fingerprint, "name": name, "kind": stage_cfg.kind, "rows_in": rows_in,
                        "rows_out": result.rows_out, "dropped": dropped, "upsampled": upsampled,
                        "stats": json.loads(json.dumps(result.stats, default=str)), "memory": result.memory,
                        "parts": result.entries, "sha256": {"rejects": rejected["sha256"]}}
                write_json(sdir / P.DONE, info)
                job.progress.clear()  # the finished stage supersedes its per-part records
                for legacy in ("parts",):
                    if (sdir / legacy).is_dir():
                        shutil.rmtree(sdir / legacy)
                done(result.rows_out, n_rejected, f"{upsampled:,} upsampled" if upsampled else "")
        data_sha = _data_sha(info["parts"])
        timings[name] = time.perf_counter() - t0
        # The ledger from the files: rows added = out - in + dropped rows.
        added = info["rows_out"] - rows_in + sum(records_dropped.values()) + copies_dropped
        ledger.drop(name, records_dropped)
        if added:
            ledger.upsampled[name] = added
        if copies_dropped:
            ledger.copies_dropped[name] = copies_dropped
        stage_reports.append({
            "index": index, "name": name, "kind": stage_cfg.kind, "rows_in": rows_in,
            "rows_out": info["rows_out"], "dropped": info["dropped"], "upsampled": info.get("upsampled", 0),
            "stats": info["stats"], "memory": info.get("memory", "whole-table"),
            "output": f"stages/{dirname}", "rejects": f"rejects/{dirname}.parquet",
        })
        in_dir, in_entries, rows_in = sdir, info["parts"], info["rows_out"]
    hashes.save()

    manifest: dict[str, Any] = {
        "curate_version": __version__,
        "pipeline": str(cfg.path),  # relative paths in `config` are relative to its folder
        "config_dir": str(cfg.base_dir),
        "config": cfg.resolved(),
        "config_hash": cfg.hash(),
        "seed": cfg.run.seed,
        "versions": versions(),
        "sources": source_info,
        "stages": stage_reports,
        "quarantine": {"file": "quarantine.jsonl", "rows": ledger.quarantined},
    }
    if info_limit is not None:
        manifest["limit"] = info_limit

    # ---- render and shards: streamed part by part (curate/render/stream.py)
    held = trusted.held_sources(cfg.sources)
    final_parts = _final_parts(in_dir, in_entries, held)
    columns = list(P.dataset_schema(in_dir, in_entries))
    final_rows = rows_in
    if held:  # validation-only rows out (only those rows are held in memory: the trusted set is small)
        final_rows -= trusted.hold_out_parts(P.iter_parts(in_dir, in_entries), cfg.sources, rd, ledger, manifest,
                                             progress.log)
    rendered = None
    if cfg.render is not None:
        t0 = time.perf_counter()
        from curate.render.stream import render_parts

        work = _fresh(rd, RENDER_WORK)
        with progress.stage("render", total=final_rows) as done:
            # an executor that keeps the render's per-row state off the driver (Ray) has its own
            remote = getattr(executor, "render_streamed", None)
            if remote is not None:
                rendered = remote(final_parts, columns, cfg.render, cfg.base_dir, cfg.run.seed, work / "tokens",
                                  work / "rejects")
            else:
                rendered = render_parts(final_parts, columns, cfg.render, cfg.base_dir, cfg.run.seed,
                                        work / "tokens", work / "rejects",
                                        map_blocks=getattr(executor, "render_blocks", None),
                                        map_parts=getattr(executor, "render_parts", None))
            n_examples, n_dropped = rendered.stats["examples"], sum(rendered.dropped.values())
            if rendered.rows_in != n_examples + n_dropped:
                raise LedgerError(f"render: {rendered.rows_in} rows in, {n_examples} rendered + "
                                  f"{n_dropped} dropped")
            getattr(executor, "write_rejects", _write_rejects)(rd.own("rejects/render.parquet"), rendered.rejects)
            ledger.drop("render", rendered.records_dropped)
            if rendered.copies_dropped:
                ledger.copies_dropped["render"] = rendered.copies_dropped
            done(n_examples, n_dropped)
        with progress.stage("shards", total=n_examples) as done:
            if (out / "shards").exists() or (out / "shards").is_symlink():
                rd.remove("shards")
            shards = rendered.write_shards(rd.own("shards"), cfg.render)
            done(n_examples, 0, f"{sum(len(v) for k, v in shards.items() if k in ('train', 'val'))} files")
        rd.remove(RENDER_WORK)
        fp = rendered.fingerprints
        manifest["render"] = {
            "template": fp.get("template"),
            "template_sha256": fp.get("template_sha256"),
            # the exact template (file relative to config_dir, text, date) for exporters
            "template_path": (fp.get("template_source") or {}).get("path"),
            "template_text": (fp.get("template_source") or {}).get("text"),
            "date": fp.get("date"),
            "tokenizer": fp.get("tokenizer"),
            "end_of_turn": fp.get("end_of_turn"),
            "train_on": cfg.render.train_on, "max_length": cfg.render.max_length, "pack": cfg.render.pack,
            "dropped": dict(rendered.dropped), "stats": rendered.stats,
        }
        manifest["shards"] = {k: v for k, v in shards.items() if k in ("train", "val")}
        manifest["tokens"] = rendered.token_counts()
        final_rows = n_examples
        timings["render"] = time.perf_counter() - t0
    ledger.kept = final_rows - ledger.copies_kept
    manifest["ledger"] = ledger.as_dict()
    if not ledger.reconciles():
        raise LedgerError(f"ledger does not reconcile: {manifest['ledger']}")
    if cfg.export is not None:  # the curated conversations as JSONL / Parquet / datasets (curate.render.export)
        from curate.render.export import write_export_parts

        rd.own(cfg.export.dir)
        manifest["export"] = write_export_parts(final_parts, columns, cfg, out, manifest,
                                                rendered.dropped_ids if rendered is not None else None)
    write_json(rd.own("manifest.json"), manifest)
    write_json(rd.own("timings.json"), {k: round(v, 3) for k, v in timings.items()})
    return manifest


RENDER_WORK = "render-work"  # the streamed render's token files and per-part rejects; removed when done


def _fresh(rd: RunDir, rel: str) -> Path:
    """RUN/rel, emptied of what an earlier (killed) run left there."""
    if rd.owns(rel) and ((rd.root / rel).exists() or (rd.root / rel).is_symlink()):
        rd.remove(rel)
    return rd.own(rel)


def _final_parts(folder: Path, entries: list[dict], held: list[str]) -> "FinalParts":
    return FinalParts(Path(folder), entries, held)


class FinalParts:
    """`parts(columns)` for the streamed render and export: the last stage's parts, one at a
    time, less the trusted hold-out rows (sources in `held`). Picklable: an executor that
    renders parts on workers (Ray) reads part `k` there (`read`)."""

    def __init__(self, folder: Path, entries: list[dict], held: list[str]):
        self.folder, self.entries, self.held = folder, entries, held
        self._schemas: dict = {}

    def _cols(self, columns: list[str] | None) -> list[str] | None:
        return None if columns is None else list(dict.fromkeys([*columns, *(["source"] if self.held else [])]))

    def _hold(self, df: pl.DataFrame, columns: list[str] | None) -> pl.DataFrame:
        if self.held:
            df = df.filter(~pl.col("source").is_in(self.held))
            if columns is not None:
                df = df.select(columns)
        return df

    def __call__(self, columns: list[str] | None):
        for df in P.iter_parts(self.folder, self.entries, self._cols(columns)):
            yield self._hold(df, columns)

    def __len__(self) -> int:
        return len(self.entries)

    def schema(self) -> dict:
        """The unified schema of every part (from the footers)."""
        return P.dataset_schema(self.folder, self.entries)

    def read(self, k: int, columns: list[str] | None = None) -> pl.DataFrame:
        """Part `k`, as the k-th frame of `self(columns)`."""
        df = P.read_part(self.folder / self.entries[k]["file"], self._cols(columns))
        if len(self.entries) > 1:
            key = tuple(columns) if columns is not None else None
            if key not in self._schemas:
                self._schemas[key] = P.dataset_schema(self.folder, self.entries, self._cols(columns))
            target = self._schemas[key]
            if dict(df.schema) != target:
                df = df.cast(target)
        return self._hold(df, columns)


def _check_names(cfg: PipelineConfig, names: dict, log) -> None:
    """Group names in stage configs (mix weights, select quotas) against the tasks and
    sources read (`names`: {"task": [...], "source": [...]}, sorted), before any stage
    runs; a refusal names the config file."""
    from curate.contract.typed_config import ConfigError
    from curate.pipeline.checks import check_names

    try:
        check_names(cfg.stages, names, log)
    except ConfigError as exc:
        exc.file = str(cfg.path)
        exc.args = (exc.message(),)
        raise


def _needs_render(stage_cfg: Any) -> bool:
    """Stages that count tokens depend on the render config (tokenizer) too."""
    return stage_cfg.kind in ("mix", "filter", "select")
