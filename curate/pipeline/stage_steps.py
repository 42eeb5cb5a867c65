"""The steps of a streamed stage, shared by every executor (curate/pipeline/executor.py
runs them in this process, curate/pipeline/ray_executor.py in Ray tasks on workers), so
a stage's parts, rejects and statistics are the same bytes whichever executor ran them:

  StageJob / StageOutput   what the runner hands an executor's `run_stage` and gets back
  row_local_part           one input part of a row-local stage: read, annotate + decide or
                           process, write its small columns, output part, rejects and its
                           record (parts.StageProgress; resume inside the stage)
  resumed_part             the record of a part an earlier run finished (files checked)
  row_local_output         the finished row-local stage: statistics by the stage's own
                           code over the small columns of all parts (never messages/meta)
  part_keys, plan_positions, apply_part, planned_output
                           a planned stage's keys of one part, where its applied parts go,
                           `apply` of the plan to one part, and the finished stage
  run_whole                any executor's `process` over the whole input, written as parts

Memory of each way is in curate/pipeline/executor.py's module doc.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import polars as pl

from curate.contract.ledger import reject_frame
from curate.contract.datasets import read_dataset
from curate.pipeline import parts as P
from curate.stages.base import PartColumns, Stage
from curate.stages.common.concat import concat_freeing

HEAVY = ("messages", "meta")  # the columns statistics never read (curate/pipeline/executor.py module doc)
ROW = "_row"


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


# The input columns a row-local stage's statistics may read besides the columns it adds:
# the record's group columns and the trusted labels (quality's `signal`).
STATS_INPUTS = ("id", "source", "task", "split", "repeat", "trusted", "verifier")


def _config_names(config) -> set[str]:
    """Every string (or string in a list) of a stage config: the columns it may name."""
    from dataclasses import fields, is_dataclass

    out: set[str] = set()
    if not is_dataclass(config):
        return out
    for f in fields(config):
        v = getattr(config, f.name, None)
        for x in (v if isinstance(v, (list, tuple)) else [v]):
            if isinstance(x, str):
                out.add(x)
    return out


def stats_columns(stage: Stage, out: pl.DataFrame, inputs: list[str]) -> pl.DataFrame:
    """What a row-local part keeps of its output for the stage's statistics: `light`, less
    the input columns the statistics have no use for (the statistic columns of earlier
    stages, `origin`), which otherwise pile up per row from stage to stage (~380 B a row
    by `quality` in the sample pipeline, ~130 B of them this stage's own). Kept: the
    columns the stage added or that its config names, and STATS_INPUTS."""
    added = set(out.columns) - set(inputs)
    keep = added | set(STATS_INPUTS) | _config_names(stage.config)
    return light(out).select([c for c in out.columns if c in keep and c not in HEAVY])


def _light_state(state: dict) -> dict:
    return {k: (pl.Series(v.name, [None] * v.len(), dtype=pl.Null) if isinstance(v, pl.Series) else v)
            for k, v in state.items()}


def write_windows(out_dir: Path, table: pl.DataFrame, part_rows: int, first: int = 0) -> list[dict]:
    """`table` as output parts of `part_rows` rows (at least one part, maybe empty)."""
    entries = []
    for k, lo in enumerate(range(0, max(table.height, 1), part_rows)):
        entries.append(P.write_part(out_dir, first + k, table.slice(lo, part_rows)))
    return entries


def run_whole(executor, stage: Stage, job: StageJob) -> StageOutput:
    """Any executor's `process` over the whole input table, written back as parts."""
    table = read_dataset(job.in_dir, job.in_entries)
    job.log(f"[{stage.name}] whole-table stage: holds all {table.height:,} rows in memory")
    result = executor.process(stage, table)
    del table
    entries = write_windows(job.out_dir, result.kept, job.part_rows)
    return StageOutput(entries=entries, rejects=[reject_frame(stage.name, result.dropped)],
                       stats=result.stats, memory="whole-table", rows_out=result.kept.height)


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
        lite = stats_columns(worker, annotated, part.columns)
    else:
        res = worker.process(part)
        payload = json.loads(json.dumps(res.stats, default=str))
        lite = stats_columns(worker, res.kept, part.columns)
    P.write_parquet(light_path(progress, i), lite)
    if before_save is not None:
        before_save()
    return progress.save(i, part.height, res.kept, reject_frame(worker.name, res.dropped), payload)


def row_local_output(stage: Stage, mode: str, progress: P.StageProgress, hits: list[dict]) -> StageOutput:
    """The finished row-local stage from its parts' records, in part order: the stage's
    statistics by its own code over the small columns of all parts, read from the parts'
    `light` files a few columns at a time (base.PartColumns: `FilterStage.statistics`,
    blocks.merge_stats), so no stage holds the small columns of every row at once unless
    its statistics need them together (the default `statistics`)."""
    from curate.pipeline.blocks import decode_state, merge_stats

    lite = PartColumns([light_path(progress, i) for i in range(len(hits))])
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


SPILL_DIR = "spill"  # RUN/stages/NN-name/parts/spill: keys a stage spilled while keyed (removed when done)


def spill_folder(job: StageJob) -> Path:
    """Where a planned stage spills its keys: inside the stage's progress folder (removed
    with it when the stage is done), emptied of what a killed run left there."""
    folder = job.progress.folder / SPILL_DIR
    if folder.exists():
        shutil.rmtree(folder)
    return folder


def hold_keys(stage: Stage, job: StageJob, frames: Iterable[pl.DataFrame]) -> pl.DataFrame:
    """What the plan gets of the parts' keys `frames` (in part order, `_row` set, taken
    one at a time): their concatenation, or, for a stage with the optional hook
    `spill_keys(keys, folder)` (dedup), what that hook returns of each (it writes the
    rest under `spill_folder(job)` and reads it back in `plan`): then the keys of all
    rows never meet in memory. The folder goes when the stage is done
    (`StageProgress.clear`). The local executor hands it keys it computes
    (`all_part_keys`), the Ray executor keys its workers wrote to disk. The
    concatenation frees the parts a column at a time (`concat_freeing`): every key once
    plus one column, not twice."""
    spill = getattr(stage, "spill_keys", None)
    folder = spill_folder(job) if callable(spill) else None
    return concat_freeing([spill(k, folder) if folder is not None else k for k in frames])


def _computed_keys(stage: Stage, job: StageJob) -> Iterator[pl.DataFrame]:
    bounds = P.offsets(job.in_entries)
    for first, part in zip(bounds.tolist(), P.iter_parts(job.in_dir, job.in_entries)):
        k = part_keys(stage, part, first)
        del part
        yield k


def all_part_keys(stage: Stage, job: StageJob) -> pl.DataFrame:
    """`part_keys` of every input part, in order, through `hold_keys` (spilled where the
    stage can), as the plan gets them."""
    return hold_keys(stage, job, _computed_keys(stage, job))


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


def _annotate_stats(stage, lite: PartColumns, states: list[dict]) -> dict:
    """The stage's statistics by its own code (`statistics`: `decide` over the small
    columns of all parts, or its column-at-a-time override), after merging the states."""
    stage.merge_block_states(states)
    return stage.statistics(lite)
