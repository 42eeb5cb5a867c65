"""Executors: where a stage's work runs. The runner hands its executor one stage at a time;
the local executor runs it here, part by part where it can (below); the Ray executor
(curate/pipeline/ray_executor.py, `[run] executor = "ray"`) spreads the same stage code over a
Ray cluster. Both must give identical outputs, row for row.

The local executor streams (`LocalExecutor.run_stage`), in one of three ways, recorded as
the manifest stage entry's `memory`; the per-part steps are curate/pipeline/stage_steps.py's,
which the Ray executor runs in its tasks too:

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

from typing import Protocol

import polars as pl

from curate.pipeline.stage_steps import (HEAVY, ROW, StageJob, StageOutput, all_part_keys, light, part_keys,  # noqa: F401
                                         plan_positions,
                                         apply_part, planned_output, resumed_part, row_local_output, row_local_part,
                                         run_whole, write_windows)
from curate.pipeline import parts as P
from curate.stages.base import Stage, StageResult, complete_plan, has_plan


class Executor(Protocol):
    name: str

    def process(self, stage: Stage, table: pl.DataFrame) -> StageResult: ...

    def close(self) -> None: ...


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
        plan = stage.plan(all_part_keys(stage, job))  # keys spilled to disk where the stage can (dedup)
        # a plan that needs more of some rows (base.Refine): passes over the parts holding them
        spans = list(zip(bounds[:-1].tolist(), bounds[1:].tolist()))
        plan = complete_plan(stage, plan, spans, lambda i: P.read_part(job.in_dir / job.in_entries[i]["file"]))
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


def make_executor(run_cfg) -> Executor:
    if run_cfg.executor == "ray":
        try:
            from curate.pipeline.ray_executor import RayExecutor
        except ImportError as exc:
            raise RuntimeError("executor = \"ray\" needs Ray: pip install 'curate[ray]' "
                               f"(import failed: {exc})") from None
        return RayExecutor(address=run_cfg.ray_address, seed=run_cfg.seed)
    return LocalExecutor(part_rows=getattr(run_cfg, "part_rows", None))
