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

import polars as pl

from curate.contract.ledger import reject_frame
from curate.pipeline import parts as P
from curate.stages.base import Stage, StageResult, has_plan

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
        if has_plan(stage):
            return self._planned(stage, job)
        return self._whole(stage, job)

    def _row_local(self, stage: Stage, job: StageJob, mode: str) -> StageOutput:
        # One worker instance for all parts (models load once); `stage` itself decides the
        # statistics over the merged states, as the driver does under Ray.
        worker = type(stage)(stage.config, stage.context)
        if mode == "annotate":
            shared = stage.shared_resource()
            if shared is not None:
                worker.use_shared_resource(shared)
        hits, resumed = [], 0
        for i, e in enumerate(job.in_entries):
            hit = resumed_part(job.progress, i, e)
            if hit is not None:
                resumed += 1
            else:
                hit = row_local_part(worker, mode, job.progress, job.in_dir, i, e)
            hits.append(hit)
        job.log(f"[{stage.name}] {len(hits)} parts of up to {job.part_rows:,} rows ({mode})"
                + (f", {resumed} resumed" if resumed else ""))
        return row_local_output(stage, mode, job.progress, hits)

    def _planned(self, stage: Stage, job: StageJob) -> StageOutput:
        """keys per part -> one plan -> apply per part (curate/stages/base.py run_planned is
        the reference this equals). With an `order` sorted by `_row` (mix: repeats follow
        their original), the applied parts in part order are the output. Any other order
        (rows moved across parts): each applied part is written with its output positions
        and the output is read back in windows of `part_rows` positions (one filtered scan
        of the applied parts per window: I/O grows with windows x parts; memory stays one
        window)."""
        bounds = P.offsets(job.in_entries)
        keys = [part_keys(stage, part, first)
                for first, part in zip(bounds.tolist(), P.iter_parts(job.in_dir, job.in_entries))]
        plan = stage.plan(pl.concat(keys, how="vertical_relaxed", rechunk=True))
        del keys
        positions, target = plan_positions(plan, job)
        entries, part_stats = [], []
        for i, (first, part) in enumerate(zip(bounds.tolist(), P.iter_parts(job.in_dir, job.in_entries))):
            entry, st = apply_part(stage, plan, part, first, i, job.progress, target, positions)
            entries.append(entry)
            if st is not None:
                part_stats.append(st)
            del part
        job.log(f"[{stage.name}] {len(entries)} parts, planned from key columns of {int(bounds[-1]):,} rows")
        return planned_output(stage, plan, job, entries, part_stats, target)

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


# ---------------------------------------------------------------------------- per part
# The steps of a streamed stage, one part each, shared by every executor: the local one
# runs them in turn in this process, the Ray executor (curate/pipeline/ray_executor.py)
# runs the same functions in its tasks on workers, so the parts, rejects and statistics
# are the same bytes whichever ran them.

def light_path(progress: P.StageProgress, i: int) -> Path:
    """Where part `i`'s small columns (`light`) wait for the stage's statistics."""
    return progress.folder / f"light-{i:05d}.parquet"


def resumed_part(progress: P.StageProgress, i: int, entry: dict) -> dict | None:
    """Part `i`'s record when an earlier run finished it (files checked), else None."""
    hit = progress.load(i, int(entry["rows"]))
    return hit if hit is not None and light_path(progress, i).is_file() else None


def row_local_part(worker: Stage, mode: str, progress: P.StageProgress, in_dir: Path, i: int, entry: dict,
                   before_save: Callable[[], None] | None = None) -> dict:
    """Input part `i` of a row-local stage: read, annotate + decide ("annotate") or process
    ("blocks"), then write its small columns, its output part, its rejects and its
    record (parts.StageProgress, written last); returns the record. `before_save` runs
    between the first write and the rest (the Ray fault test's hook)."""
    from curate.pipeline.blocks import encode_state

    part = P.read_part(Path(in_dir) / entry["file"])
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
    P.write_parquet(light_path(progress, i), lite)
    if before_save is not None:
        before_save()
    return progress.save(i, part.height, res.kept, reject_frame(worker.name, res.dropped), payload)


def row_local_output(stage: Stage, mode: str, progress: P.StageProgress, hits: list[dict]) -> StageOutput:
    """The finished row-local stage from its parts' records, in part order: the stage's
    statistics by its own code over the small columns of all parts."""
    from curate.pipeline.blocks import decode_state, merge_stats

    lights = [pl.read_parquet(light_path(progress, i)) for i in range(len(hits))]
    lite = pl.concat(lights, how="vertical_relaxed", rechunk=True) if len(lights) > 1 else lights[0]
    del lights
    payloads = [h["payload"] for h in hits]
    if mode == "annotate":
        stats = _annotate_stats(stage, lite, [decode_state(p) for p in payloads])
    else:
        stats = merge_stats(stage, lite, payloads)
    entries = [h["part"] for h in hits]
    return StageOutput(entries=entries, rejects=[progress.rejects_path(i) for i in range(len(hits))], stats=stats,
                       memory="parts", rows_out=sum(int(x["rows"]) for x in entries))


def part_keys(stage: Stage, part: pl.DataFrame, first: int) -> pl.DataFrame:
    """A planned stage's keys of one part, checked (one row per input row), with `_row`."""
    k = stage.keys(part)
    if k.height != part.height:
        raise RuntimeError(f"stage {stage.name!r}: keys() gave {k.height} rows for a part of {part.height}")
    return k.with_columns(pl.int_range(first, first + part.height, dtype=pl.UInt64).alias(ROW))


def plan_positions(plan, job: StageJob) -> tuple[pl.DataFrame | None, Path]:
    """(each kept row's output position, where applied parts go): (None, the stage
    folder) unless the plan's `order` moves rows across parts (see `_planned`)."""
    order = plan.order
    moved = order is not None and order.height > 1 and not bool(order[ROW].is_sorted())
    if not moved:
        return None, job.out_dir
    return order.with_row_index("__out_pos").select(ROW, "__out_pos"), job.progress.folder / "applied"


def apply_part(stage: Stage, plan, part: pl.DataFrame, first: int, i: int, progress: P.StageProgress,
               target: Path, positions: pl.DataFrame | None) -> tuple[dict, dict | None]:
    """`apply` of the plan to part `i` (global rows from `first`): its rejects and its
    kept rows written (with their output positions when `positions`); returns the part's
    entry and what `apply` found for the stats (None when it returned the plan's own)."""
    res = stage.apply(part, plan, first)
    st = json.loads(json.dumps(res.stats or {}, default=str)) if res.stats is not plan.stats else None
    P.write_parquet(progress.rejects_path(i), reject_frame(stage.name, res.dropped))
    kept = res.kept
    if positions is not None:
        pos = positions.filter((pl.col(ROW) >= first) & (pl.col(ROW) < first + part.height))["__out_pos"]
        if len(pos) != kept.height:
            raise RuntimeError(f"stage {stage.name!r}: apply() kept {kept.height} rows of a part, "
                               f"its plan's order has {len(pos)}")
        kept = kept.with_columns(pos)
    return P.write_part(target, i, kept), st


def planned_output(stage: Stage, plan, job: StageJob, entries: list[dict], part_stats: list[dict],
                   target: Path) -> StageOutput:
    """The finished planned stage: the parts' stats merged into the plan's (the stage's
    `merge_part_stats`), and rows moved across parts read back in output order."""
    merge = getattr(stage, "merge_part_stats", None)
    if callable(merge) and part_stats:
        merge(plan, part_stats)
    if target != job.out_dir:
        files = [str(target / e["file"]) for e in entries]
        out = []
        for k, lo in enumerate(range(0, max(plan.order.height, 1), job.part_rows)):
            rows = (pl.scan_parquet(files).filter((pl.col("__out_pos") >= lo) & (pl.col("__out_pos") < lo + job.part_rows))
                    .collect().sort("__out_pos").drop("__out_pos"))
            out.append(P.write_part(job.out_dir, k, rows))
        entries = out
        shutil.rmtree(target, ignore_errors=True)
    return StageOutput(entries=entries, rejects=[job.progress.rejects_path(i) for i in range(len(job.in_entries))],
                       stats=plan.stats, memory="keys", rows_out=sum(int(x["rows"]) for x in entries))


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
