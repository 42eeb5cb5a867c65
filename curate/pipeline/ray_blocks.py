"""What the Ray executor and Ray dedup both send to workers: tables as Arrow IPC bytes,
the stage context without the driver's logger, a fresh stage per task, and the fault hook
the worker-crash test uses."""
from __future__ import annotations

import io
import os
from dataclasses import replace
from pathlib import Path
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


# ---------------------------------------------------------------------------- parts
# What the Ray parts path (curate/pipeline/ray_executor.py, `RayExecutor.stage_parts`)
# adds to the part layout of curate/pipeline/parts.py (RUN/stages/NN-name/part-IIIII.parquet
# + done.json). Workers write their parts straight into the run directory, which must
# therefore be on a file system every node sees at the same path (one machine: always; a
# cluster: NFS or the like). Every write is atomic (temp file, fsync, rename): a task that
# Ray retries after its worker died rewrites the same bytes, and a half-written part is
# never seen under its name.

TEXT_COLUMNS = ("messages", "meta", "origin", "id")  # what a worker never sends to the driver


def rejects_part(stage_dir: Path, i: int) -> Path:
    """Where a worker writes input part `i`'s rejects while the stage runs (the name
    parts.StageProgress uses); merged into RUN/rejects/NN-name.parquet at the end."""
    return Path(stage_dir) / "parts" / f"rejects-{i:05d}.parquet"


def write_rejects_part(path: Path, stage: str, dropped: pl.DataFrame) -> dict:
    """One part's dropped rows with stage, reason and detail columns
    (curate.contract.ledger.write_rejects); returns {"file", "rows", "sha256"}."""
    from curate.contract.atomic import sha256_file
    from curate.contract.ledger import write_rejects

    path.parent.mkdir(parents=True, exist_ok=True)
    write_rejects(path, stage, dropped)
    return {"file": path.name, "rows": dropped.height, "sha256": sha256_file(path)}


def without_text(df: pl.DataFrame) -> pl.DataFrame:
    """What a worker sends back of a part's rows: every column but the record text and
    the per-row strings (`TEXT_COLUMNS`): statistic columns, reasons, groups, scores."""
    return df.drop([c for c in TEXT_COLUMNS if c in df.columns])


def state_without_rows(state: dict) -> dict:
    """A FilterStage `block_state()` with its per-row columns (pii's redacted messages)
    replaced by nulls of the same length: the driver merges states to compute the
    stage's statistics, which never read those columns; the rows stay on the worker."""
    return {k: (pl.Series(k, [None] * len(v), dtype=pl.Null) if isinstance(v, pl.Series) else v)
            for k, v in state.items()}
