"""Running one stage part by part, the same way on every executor: which stages can be
cut into parts without changing a byte of their output, and how the parts' results are
put back together. The Ray executor runs the parts on workers; the local executor runs
them in turn, keeping each finished part on disk so a run killed inside a stage resumes
from its last finished part (`PartCache`).

  blocks    normalize; quality with the heuristic / fasttext / verifier scorers:
            `stage.process` per part; kept and dropped concatenated in part order, the
            stats merged (`merge_stats`: counts add, constants must agree, quality's
            score summary recomputed over the whole table by the stage's own code).
  annotate  FilterStage subclasses (filter, language, pii, decontaminate):
            `stage.annotate` per part (the expensive work); the parts' `block_state()`
            merged by the stage's own `merge_block_states`, then the stage's own
            `decide` over the concatenated annotations, so the decision and every
            statistic come from the local code path.
  None      every other stage (dedup, select, mix, LM-scored quality): whole table.

Parts only bound the work in flight, not the memory of the table: the runner still holds
the stage's input and output (see docs/run-directory.md, "Memory model").
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from curate.contract.atomic import atomic_path, sha256_file, write_json
from curate.pipeline.ray_blocks import from_ipc, to_ipc
from curate.stages.base import FilterStage, Stage, StageResult

BLOCK_KINDS = {"normalize", "quality"}
LOCAL_SCORERS = {"heuristic", "fasttext", "verifier"}


def part_mode(stage: Stage) -> str | None:
    """"blocks", "annotate" or None (see the module doc)."""
    if isinstance(stage, FilterStage):
        return "annotate"
    if stage.kind == "normalize":
        return "blocks"
    if stage.kind == "quality" and getattr(stage.config, "scorer", None) in LOCAL_SCORERS:
        return "blocks"
    return None


def encode_state(state: dict) -> str:
    """A FilterStage's `block_state()` as JSON: polars Series travel as Arrow IPC (hex)."""
    out = {}
    for k, v in state.items():
        out[k] = {"series": to_ipc(v.to_frame()).hex()} if isinstance(v, pl.Series) else {"json": v}
    return json.dumps(out)


def decode_state(text: str) -> dict:
    return {k: from_ipc(bytes.fromhex(v["series"])).to_series() if "series" in v else v["json"]
            for k, v in json.loads(text).items()}


def sum_values(values: list) -> Any:
    if all(isinstance(v, dict) for v in values):
        out: dict = {}
        for v in values:
            for k, x in v.items():
                out[k] = sum_values([out[k], x]) if k in out else x
        return out
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return sum(values)
    raise TypeError(f"cannot sum {values!r}")


def same_values(values: list) -> Any:
    if any(v != values[0] for v in values):
        raise ValueError(f"per-block values differ: {values!r}")
    return values[0]


def merge_stats(stage: Stage, kept: pl.DataFrame, parts: list[dict]) -> dict:
    """The stats of a "blocks" stage over the whole table, from its parts' stats."""
    if stage.kind == "normalize":
        return {"hits": sum_values([p["hits"] for p in parts])}
    # quality: constants stay, error counts add up, and the score summary is
    # recomputed over the whole table by the stage's own summariser.
    out = {k: same_values([p[k] for p in parts]) for k in parts[0]
           if k not in ("errors", "scored", "unscored", "by_task", "signal")}
    if "errors" in parts[0]:
        out["errors"] = sum_values([p["errors"] for p in parts])
    out.update(stage.summary(kept, stage.config.score_column))
    if "signal" in parts[0]:  # the scorer's AUC over the whole table, not one block's
        out["signal"] = stage.signal(kept, stage.config.score_column)
    return out


def assemble_blocks(stage: Stage, kept: list[pl.DataFrame], dropped: list[pl.DataFrame], stats: list[dict]) -> StageResult:
    # One chunk, as a whole-table stage's output is: parquet bytes depend on the chunk layout.
    k = pl.concat(kept, how="vertical", rechunk=True)
    d = pl.concat(dropped, how="vertical", rechunk=True)
    return StageResult(kept=k, dropped=d, stats=merge_stats(stage, k, stats))


def assemble_annotations(stage: FilterStage, table: pl.DataFrame, annotated: list[pl.DataFrame],
                         states: list[dict]) -> StageResult:
    a = pl.concat(annotated, how="vertical", rechunk=True)
    stage.merge_block_states(states)
    return stage.decide(table, a)


class PartCache:
    """Finished parts of one stage computation, in `folder` (RUN/stages/NN-name/parts):
    `part-IIIII.arrow` (the part's kept rows or annotations), `part-IIIII.dropped.arrow`
    ("blocks" mode) and `part-IIIII.json` (its state or stats, row count and the sha256 of
    its files), written last, atomically. Arrow IPC, not Parquet: it gives back exactly
    the polars types it was given (a Null column included). `key` identifies the
    computation (the stage's fingerprint and the part size); parts made under another key
    are deleted first. A part whose files do not match its json is computed again."""

    def __init__(self, folder: Path, key: str):
        self.folder = folder
        self.key = key
        self._checked = False

    def _check_key(self) -> None:
        if self._checked:
            return
        keyfile = self.folder / "key.json"
        if self.folder.is_dir():
            try:
                same = json.loads(keyfile.read_text(encoding="utf-8")).get("key") == self.key
            except (OSError, ValueError, AttributeError):
                same = False
            if not same:
                for f in self.folder.iterdir():
                    if f.is_file():
                        f.unlink()
        if not keyfile.is_file():
            write_json(keyfile, {"key": self.key})
        self._checked = True

    def _files(self, i: int) -> tuple[Path, Path, Path]:
        base = f"part-{i:05d}"
        return self.folder / f"{base}.arrow", self.folder / f"{base}.dropped.arrow", self.folder / f"{base}.json"

    def load(self, i: int, rows: int) -> tuple[pl.DataFrame, pl.DataFrame | None, Any] | None:
        self._check_key()
        a, b, meta = self._files(i)
        if not meta.is_file():
            return None
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
            if info.get("rows") != rows or info["sha256"]["a"] != sha256_file(a):
                return None
            dropped = None
            if info["sha256"].get("b") is not None:
                if info["sha256"]["b"] != sha256_file(b):
                    return None
                dropped = from_ipc(b.read_bytes())
            return from_ipc(a.read_bytes()), dropped, info["payload"]
        except (OSError, ValueError, KeyError, pl.exceptions.PolarsError):  # a damaged part is computed again
            return None

    def save(self, i: int, rows: int, a_df: pl.DataFrame, b_df: pl.DataFrame | None, payload: Any) -> None:
        self._check_key()
        a, b, meta = self._files(i)
        _write_ipc(a, a_df)
        sha = {"a": sha256_file(a), "b": None}
        if b_df is not None:
            _write_ipc(b, b_df)
            sha["b"] = sha256_file(b)
        write_json(meta, {"rows": rows, "sha256": sha, "payload": payload})


def _write_ipc(target: Path, df: pl.DataFrame) -> None:
    with atomic_path(target) as tmp:
        df.write_ipc(tmp, compression="zstd")


def process_in_parts(stage: Stage, table: pl.DataFrame, part_rows: int, cache: PartCache | None,
                     log=lambda s: None) -> StageResult:
    """`stage.process(table)`, computed part by part (`part_mode`), each finished part
    kept in `cache`; identical output by construction (see the module doc)."""
    mode = part_mode(stage)
    if mode is None or table.height <= part_rows:
        return stage.process(table)
    # One worker instance for all parts (models load once), apart from `stage`, which
    # decides over the merged states as the driver does under Ray. Reuse is safe:
    # `block_state()` is what the *last* `annotate` call left (FilterStage's contract).
    worker = type(stage)(stage.config, stage.context)
    if mode == "annotate":
        shared = stage.shared_resource()
        if shared is not None:
            worker.use_shared_resource(shared)
    outs_a, outs_b, payloads, resumed = [], [], [], 0
    for i, lo in enumerate(range(0, table.height, part_rows)):
        part = table.slice(lo, part_rows)
        hit = cache.load(i, part.height) if cache is not None else None
        if hit is not None:
            a_df, b_df, payload = hit
            resumed += 1
        else:
            if mode == "annotate":
                a_df, b_df = worker.annotate(part), None
                payload = encode_state(worker.block_state())
            else:
                res = worker.process(part)
                a_df, b_df = res.kept, res.dropped
                payload = json.loads(json.dumps(res.stats, default=str))
            if cache is not None:
                cache.save(i, part.height, a_df, b_df, payload)
        outs_a.append(a_df)
        outs_b.append(b_df)
        payloads.append(payload)
    log(f"[{stage.name}] {len(outs_a)} parts of up to {part_rows:,} rows ({mode})"
        + (f", {resumed} resumed from {cache.folder}" if resumed else ""))
    if mode == "annotate":
        return assemble_annotations(stage, table, outs_a, [decode_state(p) for p in payloads])
    return assemble_blocks(stage, outs_a, outs_b, payloads)
