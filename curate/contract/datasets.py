"""Reading a stage's output as one table: `RUN/stages/NN-name/` holds a partitioned Parquet
dataset (`part-00000.parquet`, ... + `done.json`; written by curate/pipeline/parts.py, the
layout is described there). Runs made before the parts layout hold one `data.parquet`
instead; both read the same way here.

Parts may disagree on a column's dtype where it is all-null in one part (polars `Null`)
and typed in another: every reader here unifies them as `pl.concat(how="vertical_relaxed")`
does. `scan_dataset` is lazy (one scan per part): filters and column selections are pushed
into each part's scan, so e.g. a report reading two columns never loads message text.
`read_dataset` is the one eager reader of a whole dataset (the runner's whole-table stages
read their input with it, as do the report and inspect).
"""
from __future__ import annotations

from pathlib import Path

import polars as pl

LEGACY = "data.parquet"


def dataset_files(folder: str | Path) -> list[Path]:
    """The Parquet files of the dataset in `folder`, in order ([] when there is none)."""
    folder = Path(folder)
    if folder.is_file():  # a plain Parquet file is a dataset of one part
        return [folder]
    if not folder.is_dir():
        return []
    parts = sorted(folder.glob("part-*.parquet"))
    if parts:
        return parts
    return [folder / LEGACY] if (folder / LEGACY).is_file() else []


def has_dataset(folder: str | Path) -> bool:
    return bool(dataset_files(folder))


def files_schema(files: list[Path], columns: list[str] | None = None) -> dict:
    """The unified polars schema of Parquet files read as one dataset, from their footers
    (no data is read): a column all-null in one part (`Null`) takes the type it has in
    another, as `pl.concat(how="vertical_relaxed")` does. {} for no files."""
    frames = [pl.DataFrame(schema={k: v for k, v in pl.read_parquet_schema(p).items()
                                   if columns is None or k in columns}) for p in files]
    return dict(pl.concat(frames, how="vertical_relaxed").schema) if frames else {}


def dataset_schema(folder: str | Path) -> dict:
    """The unified polars schema (from the parts' footers: no data is read)."""
    files = dataset_files(folder)
    if not files:
        raise FileNotFoundError(f"no stage output (part-*.parquet) in {folder}")
    return files_schema(files)


def scan_dataset(folder: str | Path) -> pl.LazyFrame:
    files = dataset_files(folder)
    if not files:
        raise FileNotFoundError(f"no stage output (part-*.parquet) in {folder}")
    if len(files) == 1:
        return pl.scan_parquet(files[0])
    schema = dataset_schema(folder)
    return pl.concat([pl.scan_parquet(p).cast({k: v for k, v in schema.items()}) for p in files], how="vertical")


def read_dataset(folder: str | Path, entries: list[dict] | None = None,
                 columns: list[str] | None = None) -> pl.DataFrame:
    """The whole dataset in `folder` as one table, in one chunk (as a single frame written
    whole would be), each part cast to the unified schema (`files_schema`).

    entries  the part entries of the stage's done.json (`[{"file": "part-00000.parquet",
             ...}, ...]`, curate/pipeline/parts.py): exactly those parts, in that order;
             None: the part files found in `folder` (`dataset_files`)
    columns  read only these (in this order); None: all

    Memory: every part is read before they are joined, so the peak is about twice the
    table; a consumer that can go part by part reads with `iter_parts` (parts.py)."""
    files = [Path(folder) / e["file"] for e in entries] if entries is not None else dataset_files(folder)
    if not files:
        raise FileNotFoundError(f"no stage output (part-*.parquet) in {folder}")
    target = files_schema(files, columns) if len(files) > 1 else None
    frames = []
    for path in files:
        df = pl.read_parquet(path, columns=columns)
        frames.append(df.cast(target) if target is not None and dict(df.schema) != target else df)
    if len(frames) == 1:
        return frames[0]
    return pl.concat(frames, how="vertical_relaxed", rechunk=True)
