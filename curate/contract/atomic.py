"""Atomic file writes (write to a temp file beside the target, fsync, rename) and hashing.
A run killed at any point leaves either the old file or the new one, never half of one.

Temporary files are named `.NAME.tmpPID` beside their target. A normal failure removes
its own (the `finally` below); a process killed outright (SIGKILL, power loss) cannot, so
the runner sweeps them with `remove_temp_files(run_dir)` when a run starts.

A write that fails because the disk is full raises `NoSpaceError` naming the file, so the
command line can say so in one line instead of a raw ENOSPC traceback.

Fault injection (tests only): `CURATE_FAULT_AFTER_WRITES=K` makes the process exit hard
(`os._exit(137)`, as a kill would) at the K-th atomic write, after its temp file is written
and before the rename when `CURATE_FAULT_MODE=tmp`, after the rename otherwise. Unset, it
costs one integer comparison per write.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

TEMP_RE = re.compile(r"^\..+\.tmp\d+$")


class NoSpaceError(OSError):
    """The disk filled up while writing `path`."""

    def __init__(self, path: str | Path):
        super().__init__(errno.ENOSPC, "no space left on device", str(path))
        self.path = Path(path)


def _is_no_space(exc: BaseException) -> bool:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return "No space left on device" in str(exc) or "os error 28" in str(exc)


_FAULT_AFTER = int(os.environ.get("CURATE_FAULT_AFTER_WRITES", "0")) if \
    os.environ.get("CURATE_FAULT_AFTER_WRITES", "").isdigit() else 0
_FAULT_TMP = os.environ.get("CURATE_FAULT_MODE", "") == "tmp"
_writes = 0


def _fault_point(before_rename: bool) -> None:
    global _writes
    if not _FAULT_AFTER or before_rename != _FAULT_TMP:
        return
    _writes += 1
    if _writes == _FAULT_AFTER:
        os._exit(137)


def temp_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.tmp{os.getpid()}")


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temp path to write to; on success it is fsynced and renamed onto `target`."""
    target = Path(target)
    tmp = temp_path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        if _FAULT_AFTER:
            _fault_point(before_rename=True)
        os.replace(tmp, target)
        fsync_dir(target.parent)
        if _FAULT_AFTER:
            _fault_point(before_rename=False)
    except Exception as exc:
        if _is_no_space(exc) and not isinstance(exc, NoSpaceError):
            raise NoSpaceError(target) from exc
        raise
    finally:
        with contextlib.suppress(OSError):
            if tmp.exists():
                tmp.unlink()


def remove_temp_files(root: str | Path) -> list[Path]:
    """Delete the `.NAME.tmpPID` files a killed process left under `root` (symlinks are
    not followed). Returns what was removed."""
    removed = []
    root = Path(root)
    if not root.is_dir():
        return removed
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in filenames:
            if TEMP_RE.match(name):
                p = Path(dirpath) / name
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p)
    return removed


def fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(target: str | Path, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | Path, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | Path, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n")


def write_parquet(target: str | Path, df) -> None:
    """polars DataFrame -> parquet, atomically. Statistics off and one row group size fixed,
    so the same frame always gives the same bytes."""
    # Parquet bytes depend on the frame's chunk layout, not only its values: rechunk so a
    # frame read back from parquet (resume) writes the same bytes as a freshly built one.
    with atomic_path(target) as tmp:
        df.rechunk().write_parquet(tmp, compression="zstd", statistics=False, row_group_size=65536)


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
