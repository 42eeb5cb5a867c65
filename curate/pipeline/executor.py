"""Executors: where a stage's work runs. The runner hands its executor one stage at a time;
the local executor runs it here, part by part where it can (below); the Ray executor
(curate/pipeline/ray_executor.py, `[run] executor = "ray"`) spreads the same stage code over a
Ray cluster. Both must give identical outputs, row for row.

The local executor streams (`LocalExecutor.run_stage`), in one of three ways, recorded as
the manifest stage entry's `memory`:

  "parts"        a row-local stage (curate/pipeline/blocks.py `part_mode`: normalize,
                 filter, pii, language, decontaminate, locally scored quality): read one
                 input part, process it, write one output part and its rejects, free it.
                 Each finished part is recorded (parts.StageProgress) so a run killed
                 inside the stage resumes from its last finished part. The stage's
                 statistics are computed at the end, by the stage's own code, over the
                 parts' small columns only (`light`: every column but `messages` and
                 `meta`; per-row state Series, e.g. pii's redacted messages, replaced by
                 nulls): statistics never read message text.
                 Memory: one part, the stage's own state, the small columns of all rows.
  "keys"         a whole-table stage with the keys/plan/apply protocol (`has_plan`):
                 `keys` per part, `plan` over all keys, `apply` per part; with an `order`
                 (rows reordered or repeated: mix), the output is gathered from the
                 applied parts in windows of `part_rows` rows of the order table
                 (parts.gather; its I/O cost is in curate/pipeline/parts.py).
                 Memory: one part plus the key columns and the plan of all rows.
  "whole-table"  any other stage: the whole input is loaded and `stage.process` runs on it
                 (logged, and recorded in the manifest). Memory: the whole table, twice.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np
import polars as pl

from curate.contract.ledger import REASON, reject_frame
from curate.pipeline import parts as P
from curate.stages.base import Stage, StageResult, complete_plan, has_plan

HEAVY = ("messages", "meta")  # the columns statistics never read (see the module doc)
ROW = "_row"


class Executor(Protocol):
    name: str

    def process(self, stage: Stage, table: pl.DataFrame) -> StageResult: ...

    def close(self) -> None: ...


@dataclass
class StageJob:
    """One stage's input and output locations, handed by the runner to `run_stage`."""

    in_dir: Path  # the input dataset (parts listed in in_entries)
    in_entries: list[dict]
    out_dir: Path  # RUN/stages/NN-name: output parts are written here
    progress: P.StageProgress  # per-part records (resume inside the stage)
    part_rows: int
    log: Callable[[str], None] = lambda s: None


@dataclass
class StageOutput:
    """What `run_stage` leaves: the output parts (written), the rejects as frames in the
    rejects layout (`reject_frame`) or files of it, in order, and the stage's stats."""

    entries: list[dict]
    rejects: list[Path | pl.DataFrame] = field(default_factory=list)
    stats: dict = field(default_factory=dict)
    memory: str = "parts"
    rows_out: int = 0


def light(df: pl.DataFrame) -> pl.DataFrame:
    return df.drop([c for c in HEAVY if c in df.columns])


def _light_state(state: dict) -> dict:
    return {k: (pl.Series(v.name, [None] * v.len(), dtype=pl.Null) if isinstance(v, pl.Series) else v)
            for k, v in state.items()}


def write_windows(out_dir: Path, table: pl.DataFrame, part_rows: int, first: int = 0) -> list[dict]:
    """`table` as output parts of `part_rows` rows (at least one part, maybe empty)."""
    entries = []
    for k, lo in enumerate(range(0, max(table.height, 1), part_rows)):
        entries.append(P.write_part(out_dir, first + k, table.slice(lo, part_rows)))
    return entries


class LocalExecutor:
    """Runs each stage in this process, streaming where it can (see the module doc)."""

    name = "local"

    def __init__(self, part_rows: int | None = None):
        self.part_rows = part_rows

    def process(self, stage: Stage, table: pl.DataFrame) -> StageResult:
        return stage.process(table)

    # ------------------------------------------------------------------ streaming
    def run_stage(self, stage: Stage, job: StageJob) -> StageOutput:
        from curate.pipeline.blocks import part_mode

        mode = part_mode(stage)
        if mode is not None:
            return self._row_local(stage, job, mode)
        if has_plan(stage, refine=True):
            return self._planned(stage, job)
        return self._whole(stage, job)

    def _row_local(self, stage: Stage, job: StageJob, mode: str) -> StageOutput:
        from curate.pipeline.blocks import decode_state, encode_state, merge_stats

        # One worker instance for all parts (models load once); `stage` itself decides the
        # statistics over the merged states, as the driver does under Ray.
        worker = type(stage)(stage.config, stage.context)
        if mode == "annotate":
            shared = stage.shared_resource()
            if shared is not None:
                worker.use_shared_resource(shared)
        entries, rejects, payloads, lights, resumed = [], [], [], [], 0
        for i, e in enumerate(job.in_entries):
            hit = job.progress.load(i, int(e["rows"]))
            if hit is not None and (job.progress.folder / f"light-{i:05d}.parquet").is_file():
                resumed += 1
                lite = pl.read_parquet(job.progress.folder / f"light-{i:05d}.parquet")
            else:
                part = P.read_part(job.in_dir / e["file"])
                if mode == "annotate":
                    annotated = worker.annotate(part)
                    state = worker.block_state()
                    res = worker.decide(part, annotated)
                    payload = encode_state(_light_state(state))
                    lite = light(annotated)
                else:
                    res = worker.process(part)
                    payload = json.loads(json.dumps(res.stats, default=str))
                    lite = light(res.kept)
                P.write_parquet(job.progress.folder / f"light-{i:05d}.parquet", lite)
                hit = job.progress.save(i, part.height, res.kept, reject_frame(stage.name, res.dropped), payload)
                del part, res
            entries.append(hit["part"])
            rejects.append(job.progress.rejects_path(i))
            payloads.append(hit["payload"])
            lights.append(lite)
        job.log(f"[{stage.name}] {len(entries)} parts of up to {job.part_rows:,} rows ({mode})"
                + (f", {resumed} resumed" if resumed else ""))
        lite = pl.concat(lights, how="vertical_relaxed", rechunk=True) if len(lights) > 1 else lights[0]
        if mode == "annotate":
            stats = _annotate_stats(stage, lite, [decode_state(p) for p in payloads])
        else:
            stats = merge_stats(stage, lite, payloads)
        return StageOutput(entries=entries, rejects=rejects, stats=stats, memory="parts",
                           rows_out=sum(int(x["rows"]) for x in entries))

    def _planned(self, stage: Stage, job: StageJob) -> StageOutput:
        """keys per part -> one plan -> apply per part (curate/stages/base.py run_planned is
        the reference this equals). With an `order` sorted by `_row` (mix: repeats follow
        their original), the applied parts in part order are the output. Any other order
        (rows moved across parts): each applied part is written with its output positions
        and the output is read back in windows of `part_rows` positions (one filtered scan
        of the applied parts per window: I/O grows with windows x parts; memory stays one
        window)."""
        bounds = P.offsets(job.in_entries)
        keys = []
        for first, part in zip(bounds.tolist(), P.iter_parts(job.in_dir, job.in_entries)):
            k = stage.keys(part)
            if k.height != part.height:
                raise RuntimeError(f"stage {stage.name!r}: keys() gave {k.height} rows for a part of {part.height}")
            keys.append(k.with_columns(pl.int_range(first, first + part.height, dtype=pl.UInt64).alias(ROW)))
        plan = stage.plan(pl.concat(keys, how="vertical_relaxed", rechunk=True))
        del keys
        # a plan that needs more of some rows (base.Refine): passes over the parts holding them
        spans = list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))
        plan = complete_plan(stage, plan, spans, lambda i: P.read_part(job.in_dir / job.in_entries[i]["file"]))
        order = plan.order
        moved = order is not None and order.height > 1 and not bool(order[ROW].is_sorted())
        positions = order.with_row_index("__out_pos").select(ROW, "__out_pos") if moved else None
        target = job.progress.folder / "applied" if moved else job.out_dir
        entries, rejects, part_stats = [], [], []
        for i, (first, part) in enumerate(zip(bounds.tolist(), P.iter_parts(job.in_dir, job.in_entries))):
            res = stage.apply(part, plan, first)
            if res.stats is not plan.stats:
                part_stats.append(json.loads(json.dumps(res.stats or {}, default=str)))
            P.write_parquet(job.progress.rejects_path(i), reject_frame(stage.name, res.dropped))
            rejects.append(job.progress.rejects_path(i))
            kept = res.kept
            if moved:
                pos = positions.filter((pl.col(ROW) >= first) & (pl.col(ROW) < first + part.height))["__out_pos"]
                if len(pos) != kept.height:
                    raise RuntimeError(f"stage {stage.name!r}: apply() kept {kept.height} rows of a part, "
                                       f"its plan's order has {len(pos)}")
                kept = kept.with_columns(pos)
            entries.append(P.write_part(target, i, kept))
            del part, res, kept
        merge = getattr(stage, "merge_part_stats", None)
        if callable(merge) and part_stats:
            merge(plan, part_stats)
        job.log(f"[{stage.name}] {len(entries)} parts, planned from key columns of {int(bounds[-1]):,} rows")
        if moved:
            files = [str(target / e["file"]) for e in entries]
            out = []
            for k, lo in enumerate(range(0, max(order.height, 1), job.part_rows)):
                rows = (pl.scan_parquet(files).filter((pl.col("__out_pos") >= lo) & (pl.col("__out_pos") < lo + job.part_rows))
                        .collect().sort("__out_pos").drop("__out_pos"))
                out.append(P.write_part(job.out_dir, k, rows))
            entries = out
            shutil.rmtree(target, ignore_errors=True)
        return StageOutput(entries=entries, rejects=rejects, stats=plan.stats, memory="keys",
                           rows_out=sum(int(x["rows"]) for x in entries))

    def _whole(self, stage: Stage, job: StageJob) -> StageOutput:
        return run_whole(self, stage, job)

    def close(self) -> None:
        pass


def run_whole(executor, stage: Stage, job: StageJob) -> StageOutput:
    """Any executor's `process` over the whole input table, written back as parts."""
    table = P.read_dataset(job.in_dir, job.in_entries)
    job.log(f"[{stage.name}] whole-table stage: holds all {table.height:,} rows in memory")
    result = executor.process(stage, table)
    del table
    entries = write_windows(job.out_dir, result.kept, job.part_rows)
    return StageOutput(entries=entries, rejects=[reject_frame(stage.name, result.dropped)],
                       stats=result.stats, memory="whole-table", rows_out=result.kept.height)


def _annotate_stats(stage, lite: pl.DataFrame, states: list[dict]) -> dict:
    """The stage's statistics from its own `decide`, over the small columns of all parts."""
    stage.merge_block_states(states)
    return stage.decide(lite, lite).stats


def make_executor(run_cfg) -> Executor:
    if run_cfg.executor == "ray":
        try:
            from curate.pipeline.ray_executor import RayExecutor
        except ImportError as exc:
            raise RuntimeError("executor = \"ray\" needs Ray: pip install 'curate[ray]' "
                               f"(import failed: {exc})") from None
        return RayExecutor(address=run_cfg.ray_address, seed=run_cfg.seed)
    return LocalExecutor(part_rows=getattr(run_cfg, "part_rows", None))
