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
# The minimal part writer the Ray parts path needs (curate/pipeline/ray_executor.py,
# `RayExecutor.run_parts`), in the run layout of issue #19: a stage's output is
# `RUN/stages/NN-name/part-*.parquet` plus a `done.json` listing the parts in order with
# their rows and sha256; its rejects `RUN/rejects/NN-name/part-*.parquet`. Workers write
# their parts straight into the run directory, which must therefore be on a file system
# every node sees at the same path (one machine: always; a cluster: NFS or the like).
# Written atomically (temp file, fsync, rename): a task that Ray retries after its worker
# died rewrites the same bytes, and a half-written part is never seen under its name.
# The streaming local runner's part API (curate/pipeline/parts.py, branch h1) owns this
# layout once it lands; this writer keeps the same file names so the two can meet.

TEXT_COLUMNS = ("messages", "meta", "origin", "id")  # what a worker never sends to the driver


def part_name(*index: int) -> str:
    """`part-00003.parquet`, or `part-001-00003.parquet` for (source 1, batch 3)."""
    return "part-" + "-".join(f"{i:03d}" if k < len(index) - 1 else f"{i:05d}" for k, i in enumerate(index)) + ".parquet"


def write_part(folder: Path, name: str, df: pl.DataFrame) -> dict:
    """One part, atomically, with the project's deterministic parquet settings; returns
    its entry for done.json: name, rows, sha256."""
    from curate.contract.atomic import sha256_file, write_parquet

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    write_parquet(target, df)
    return {"name": name, "rows": df.height, "sha256": sha256_file(target)}


def write_rejects_part(folder: Path, name: str, stage: str, dropped: pl.DataFrame) -> dict:
    """A stage's dropped rows of one part, with stage, reason and detail columns
    (curate.contract.ledger.write_rejects)."""
    from curate.contract.atomic import sha256_file
    from curate.contract.ledger import write_rejects

    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    write_rejects(target, stage, dropped)
    return {"name": name, "rows": dropped.height, "sha256": sha256_file(target)}


def read_parts(folder: Path, parts: list[dict], columns: list[str] | None = None) -> pl.DataFrame:
    """Parts concatenated in order (the whole stage output: only where a step needs it)."""
    frames = [pl.read_parquet(folder / p["name"], columns=columns) for p in parts]
    return pl.concat(frames, how="vertical") if frames else pl.DataFrame()


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
