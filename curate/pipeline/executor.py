"""Executors: where a stage's `process` runs. The runner asks its executor to run each
stage over the table; the local executor calls the stage directly, the Ray executor
(curate/pipeline/ray_executor.py, `[run] executor = "ray"`) spreads the same stage code over a
Ray cluster. Both must give identical tables, row for row."""
from __future__ import annotations

from typing import Protocol

import polars as pl

from curate.stages.base import Stage, StageResult


class Executor(Protocol):
    name: str

    def process(self, stage: Stage, table: pl.DataFrame) -> StageResult: ...

    def close(self) -> None: ...


class LocalExecutor:
    """Runs each stage in this process. With `part_rows`, the stages that can be cut into
    parts without changing their output (curate/pipeline/blocks.py) run part by part and
    keep each finished part in `RUN/stages/NN-name/parts/` (`process_in_parts`), so a run
    killed inside a stage resumes from its last finished part."""

    name = "local"

    def __init__(self, part_rows: int | None = None):
        self.part_rows = part_rows

    def process(self, stage: Stage, table: pl.DataFrame) -> StageResult:
        return self.process_in_parts(stage, table, None)

    def process_in_parts(self, stage: Stage, table: pl.DataFrame, cache) -> StageResult:
        if not self.part_rows:
            return stage.process(table)
        from curate.pipeline.blocks import process_in_parts

        return process_in_parts(stage, table, self.part_rows, cache, stage.context.log)

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
