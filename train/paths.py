"""Names from data become file names only through here, and every write of the trainer is
checked to land under the run directory.

Task names come from the data (a Dolly `category`, a user's `task` column): with
`adapters = "per_task"` each one names a checkpoint folder and an adapter folder. A task
called `/some/dir` or `../../x` must not make the trainer write (or delete) anywhere else,
so `safe_name` maps every name onto `[A-Za-z0-9._-]`, at most 64 characters, with a short
hash of the original when anything had to change (two names that sanitise alike still get
two folders). The mapping is recorded in the training summary (`adapter_names`).

`inside(run_dir, path)` resolves symlinks on both sides before comparing, so a symlink
planted inside the run that points outside is refused too. Trade-off: it checks at the
moment of the call; a symlink swapped in between the check and the write is not caught
(the run directory is assumed to be owned by the user running the trainer)."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from curate.contract.paths import resolved_inside
from train.data import DataError

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_RESERVED = {"", ".", "..", "tmp", "checkpoints"}


class UnsafePathError(DataError):
    """A path the trainer would write lies outside the run directory."""


def safe_name(name: str) -> str:
    """A file-system-safe, collision-resistant folder name for a name from data."""
    s = _UNSAFE.sub("_", str(name)).strip("._-")[:64]
    if s == str(name) and s not in _RESERVED and not s.startswith("-"):
        return s
    digest = hashlib.sha256(str(name).encode("utf-8")).hexdigest()[:8]
    return f"{s or 'task'}-{digest}".lstrip("-")


def safe_names(names: list[str]) -> dict[str, str]:
    """{name from data: folder name}; distinct names always map to distinct folders."""
    out = {n: safe_name(n) for n in names}
    if len(set(out.values())) != len(out):  # only possible when a raw name looks like another's hashed one
        out = {n: f"{_UNSAFE.sub('_', n).strip('._')[:48] or 'task'}-{hashlib.sha256(n.encode()).hexdigest()[:16]}"
               for n in names}
    return out


def inside(run_dir: Path, path: Path) -> Path:
    """`path` (made absolute, symlinks resolved) when it lies under `run_dir`; else refuse."""
    real = resolved_inside(run_dir, path)
    if real is None:
        root = Path(run_dir).resolve()
        raise UnsafePathError(f"refusing to write {path}: it resolves to {(root / path).resolve()}, "
                              f"outside the run directory {root}")
    return real
