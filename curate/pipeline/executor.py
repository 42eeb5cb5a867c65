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
    name = "local"

    def process(self, stage: Stage, table: pl.DataFrame) -> StageResult:
        return stage.process(table)

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
    return LocalExecutor()
