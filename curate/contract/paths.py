"""Where a write may go: inside the run directory, once symlinks are resolved. The runner's
run directory (curate/pipeline/rundir.py) and the trainer (train/paths.py) both refuse a
path through this one check, each with its own error."""
from __future__ import annotations

from pathlib import Path


def resolved_inside(root: str | Path, path: str | Path) -> Path | None:
    """`path` (relative paths are taken under `root`) with symlinks resolved, when it is
    `root` or lies under it; None when it escapes."""
    base = Path(root).resolve()
    p = Path(path)
    real = (p if p.is_absolute() else base / p).resolve()
    return real if real == base or base in real.parents else None
