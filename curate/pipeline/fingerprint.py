"""Content fingerprints: which files a config reads, and their sha256.

A stage's resume fingerprint must change when a file it reads changes (eval sets, fastText
models, tokenizers, LM weights, adapters, verifier modules, templates), not only when its
config values do. `config_files(cfg, base_dir)` lists those files:
  - a config that defines `files(base_dir) -> list[Path]` says so itself;
  - otherwise every string value in the config (nested dataclasses, lists and dicts
    included) that names an existing file or folder, resolved as the config resolves
    paths (relative to the pipeline file), is taken as read. Folders count with all their
    files (hidden files and `__pycache__` skipped). A value that resolves to the config
    folder itself or one of its ancestors, or into the run directory, is never taken (a
    stray "." must not hash the whole project).
The generic rule may over-include (a stage `name` that happens to match a folder): that
costs a hash, never a wrong resume. It cannot see what a config does not name: a hub id,
a bundled default model (covered by the curate version in the fingerprint).

`FileHashes` caches sha256 by (path, size, mtime_ns) in `RUN/.curate-cache/hashes.json`, so
multi-GB weights are read once, not on every run. A file rewritten in place with the same
size within one mtime tick would be missed: the price of not rehashing models each run.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Iterable

from curate.contract.atomic import sha256_file, write_json

SKIP_DIRS = {"__pycache__", ".git"}


def _strings(obj: Any) -> Iterable[str]:
    if isinstance(obj, str):
        yield obj
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _strings(getattr(obj, f.name))
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _strings(v)


def _expand(p: Path, run_dir: Path | None) -> list[Path]:
    if p.is_file():
        return [p]
    out = []
    for dirpath, dirnames, filenames in os.walk(p, followlinks=False):
        d = Path(dirpath)
        if run_dir is not None and (d == run_dir or run_dir in d.parents):
            dirnames[:] = []
            continue
        dirnames[:] = sorted(x for x in dirnames if x not in SKIP_DIRS and not x.startswith("."))
        out.extend(d / f for f in sorted(filenames) if not f.startswith("."))
    return out


def config_files(cfg: Any, base_dir: Path, run_dir: Path | None = None) -> list[Path]:
    """The files `cfg` reads (see the module doc), resolved, sorted, without duplicates."""
    if cfg is None:
        return []
    base = Path(base_dir).resolve()
    run_dir = run_dir.resolve() if run_dir is not None else None
    own = getattr(cfg, "files", None)
    if callable(own):
        found = [Path(p) for p in own(base)]
    else:
        found = []
        for s in _strings(cfg):
            if not s or len(s) > 4096 or "\n" in s or "\0" in s:
                continue
            try:
                p = Path(s).expanduser()
                p = (p if p.is_absolute() else base / p).resolve()
                if not p.exists():
                    continue
            except (OSError, RuntimeError, ValueError):
                continue
            if p == base or p in base.parents or (p.is_dir() and p == p.parent):
                continue
            if run_dir is not None and (p == run_dir or run_dir in p.parents or p in run_dir.parents):
                continue
            found.append(p)
    files: set[Path] = set()
    for p in found:
        files.update(x.resolve() for x in _expand(Path(p), run_dir) if x.is_file())
    return sorted(files)


class FileHashes:
    """sha256 of files, cached by (path, size, mtime_ns) in a JSON file (see module doc)."""

    def __init__(self, cache_file: Path | None):
        self.cache_file = cache_file
        self.cache: dict[str, list] = {}
        self.dirty = False
        if cache_file is not None and cache_file.is_file():
            try:
                data = json.loads(cache_file.read_text(encoding="utf-8"))
                if isinstance(data, dict):
                    self.cache = {k: v for k, v in data.items() if isinstance(v, list) and len(v) == 3}
            except (OSError, ValueError):
                self.cache = {}  # a damaged cache is only a slower run

    def sha256(self, path: Path) -> str:
        st = Path(path).stat()
        key = str(Path(path).resolve())
        hit = self.cache.get(key)
        if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            return hit[2]
        digest = sha256_file(path)
        self.cache[key] = [st.st_size, st.st_mtime_ns, digest]
        self.dirty = True
        return digest

    def digest(self, files: list[Path]) -> list[list]:
        """[[path, size, sha256], ...] for a fingerprint."""
        return [[str(f), f.stat().st_size, self.sha256(f)] for f in files]

    def save(self) -> None:
        if self.dirty and self.cache_file is not None:
            write_json(self.cache_file, dict(sorted(self.cache.items())))
            self.dirty = False
