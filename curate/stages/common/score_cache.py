"""A per-stage cache of values keyed by record id, in the stage's own directory, so that a
rerun (or a resumed run) never recomputes an LM score or an embedding it already has.

The cache file name carries a fingerprint of everything the values depend on (model
files, adapter, prompt format, max length), so changing any of them starts a new cache
instead of silently reusing stale values."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Callable

import polars as pl

from curate.contract.atomic import atomic_path


def fingerprint(settings: dict, files: list[Path] = ()) -> str:
    """sha256 over the settings and the (size, mtime-free) content hash of small files /
    size of big ones: weights are hashed by content so a retrained adapter is noticed."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    for f in sorted(Path(x) for x in files):
        if f.is_file():
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    return h.hexdigest()[:16]


def model_files(*dirs: str | Path | None) -> list[Path]:
    out: list[Path] = []
    for d in dirs:
        if d is None:
            continue
        d = Path(d)
        out += sorted(p for p in d.iterdir() if p.is_file() and p.suffix in (".safetensors", ".json", ".model"))
    return out


def _write_parquet_atomic(df: pl.DataFrame, path: Path) -> None:
    # A per-process temp name (contract.atomic): Ray workers filling the same cache at
    # once never write into one temp file. The last writer's union wins; values another
    # worker added meanwhile are recomputed on a later run, never served wrong.
    with atomic_path(path) as tmp:
        df.write_parquet(tmp)


def cached(path: Path, ids: pl.Series, compute: Callable[[list[str]], pl.DataFrame],
           log: Callable[[str], None] | None = None) -> pl.DataFrame:
    """Values for `ids` (one row per distinct id, column `id` plus value columns): read
    what `path` has, compute the rest with `compute(missing_ids)` and store the union.
    `compute([])` must be cheap (return the empty frame without loading a model)."""
    have = pl.read_parquet(path) if path.is_file() else None
    wanted = ids.unique(maintain_order=True)
    missing = wanted if have is None else wanted.filter(~wanted.is_in(have["id"].implode()))
    if log is not None:
        log(f"cache {path.name}: {len(wanted) - len(missing)} cached, {len(missing)} to compute")
    if len(missing):
        new = compute(missing.to_list())
        have = new if have is None else pl.concat([have, new], how="vertical_relaxed")
        _write_parquet_atomic(have.sort("id"), path)
    if have is None:  # nothing cached, nothing to compute: compute([]) gives the empty schema
        have = compute([])
    return have.filter(pl.col("id").is_in(wanted.implode()))
