"""What the Ray executor and Ray dedup both send to workers: tables as Arrow IPC bytes,
the stage context without the driver's logger, a fresh stage per task, and the fault hook
the worker-crash test uses."""
from __future__ import annotations

import io
import os
from dataclasses import replace
from typing import Any

import polars as pl

from curate.stages.base import Stage

# Fault injection for the retry test: when this env var names an existing file, the
# first worker to claim it (atomic rename) dies mid-task, as a killed worker would.
FAULT_ENV = "CURATE_RAY_FAULT_FILE"


def to_ipc(df: pl.DataFrame) -> bytes:
    buf = io.BytesIO()
    df.write_ipc(buf, compression="uncompressed")
    return buf.getvalue()


def from_ipc(data: bytes) -> pl.DataFrame:
    return pl.read_ipc(io.BytesIO(data))


def maybe_fault() -> None:
    path = os.environ.get(FAULT_ENV)
    if not path or not os.path.exists(path):
        return
    try:
        os.rename(path, path + ".claimed")  # only one task wins, even across processes
    except OSError:
        return
    os._exit(1)  # a hard crash: no exception, no cleanup; Ray sees a dead worker and retries


def quiet(message: str) -> None:
    """Workers' log: the driver's logger (a console, a captured stream) does not travel."""


def portable(context: Any) -> Any:
    """The stage context as sent to workers: everything but the driver's logger."""
    return replace(context, log=quiet)


def worker_stage(cls: type, config: Any, context: Any) -> Stage:
    """A fresh stage instance on a worker. A stage that would spread its own work over
    processes (language ID's `workers`) gets one: Ray already gives each worker its core,
    and more would oversubscribe them (the output does not depend on it)."""
    if getattr(config, "workers", 0) is None:
        config = replace(config, workers=1)
    return cls(config, context)
