"""Partitioned stage outputs: the on-disk layout every executor writes and reads.

Layout (RUN/stages/NN-name/, also RUN/stages/00-read/):

    part-00000.parquet, part-00001.parquet, ...   the rows, in order; always at least one
                                                  part (an empty one when no row is left)
    done.json                                     written last: {"fingerprint", "rows_in",
                                                  "rows_out", "parts": [PART_ENTRY...],
                                                  "rejects": {"file", "rows", "sha256"}, ...}
    parts/part-IIIII.json (+ rejects-IIIII.parquet)  while the stage runs: one finished
                                                  input part each (resume inside a stage);
                                                  removed once done.json is written

    PART_ENTRY = {"file": "part-00000.parquet", "rows": int, "sha256": hex}

Contract (stable: the local runner and the Ray executor both follow it):
  - `write_part(folder, i, df)` writes `part-{i:05d}.parquet` atomically (stats off, fixed
    row-group size: the same frame always gives the same bytes) and returns its entry.
  - Parts are numbered from 0 without gaps; the dataset is their concatenation in number
    order. Part sizes are an execution detail (they follow the input parts of a row-local
    stage, `part_rows` windows otherwise): nothing downstream may depend on them. The
    bytes that must not depend on them (rejects, shards, manifest) are written through
    `RowGroupWriter`, whose row groups have a fixed size whatever the write calls were.
  - `check_parts(folder, entries, sha256)` is "" when every listed part exists with its
    checksum and no unlisted part lies beside them, else a one-line reason.
  - Readers: `iter_parts` (one part at a time: memory = one part), `gather` (rows by
    global position, in the order given); the whole table in one chunk is
    `curate.contract.datasets.read_dataset(folder, entries)`.
  - dtypes may differ between parts where a column is all-null in one part (polars
    `Null`) and typed in another; every reader here unifies them the way
    `pl.concat(how="vertical_relaxed")` does, so a consumer sees one schema.

I/O cost of `gather`: each call reads, of each part that holds a wanted row, only the
requested columns, then takes the rows (Parquet statistics are off for byte stability, so
there is no row-group pruning: a part is the unit read). Gathering in windows of an order
table that mostly follows the input reads each part about once; a fully shuffled order
reads every part once per window (windows x parts reads): the price of bounded memory.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from curate.contract.atomic import atomic_path, sha256_file, write_json, write_parquet
from curate.contract.datasets import files_schema

PART_PREFIX = "part-"
PART_GLOB = "part-*.parquet"
DONE = "done.json"
PROGRESS_DIR = "parts"  # per-part progress of a stage that is still running
ROW_GROUP_ROWS = 65536  # as curate.contract.atomic.write_parquet


def part_file(i: int) -> str:
    return f"{PART_PREFIX}{i:05d}.parquet"


def write_part(folder: Path, i: int, df: pl.DataFrame) -> dict:
    """Write part `i` of the dataset in `folder`; returns its PART_ENTRY."""
    path = Path(folder) / part_file(i)
    write_parquet(path, df)
    return {"file": path.name, "rows": df.height, "sha256": sha256_file(path)}


def part_paths(folder: Path) -> list[Path]:
    """The part files on disk in `folder`, in number order."""
    folder = Path(folder)
    return sorted(folder.glob(PART_GLOB)) if folder.is_dir() else []


def remove_parts(folder: Path, keep: int = 0) -> None:
    """Delete part files numbered `keep` and above (left by an earlier, larger run)."""
    for p in part_paths(folder):
        try:
            n = int(p.stem[len(PART_PREFIX):])
        except ValueError:
            continue
        if n >= keep:
            p.unlink()


def check_parts(folder: Path, entries: list[dict], sha256: Callable[[Path], str] = sha256_file) -> str:
    """"" when `entries` describe exactly the parts in `folder`, else why not."""
    folder = Path(folder)
    if not isinstance(entries, list) or not entries:
        return "its done.json lists no parts"
    names = [e.get("file") for e in entries]
    if names != [part_file(i) for i in range(len(entries))]:
        return "its done.json lists parts out of order"
    extra = sorted({p.name for p in part_paths(folder)} - set(names))
    if extra:
        return f"{extra[0]} is not listed in its done.json"
    for e in entries:
        p = folder / e["file"]
        if not p.is_file():
            return f"{p.name} is missing"
        if sha256(p) != e.get("sha256"):
            return f"{p.name} does not match the checksum in its done.json"
    return ""


def offsets(entries: list[dict]) -> np.ndarray:
    """First global row of each part, plus the total at the end (len = parts + 1)."""
    return np.concatenate(([0], np.cumsum([int(e["rows"]) for e in entries], dtype=np.int64))).astype(np.int64)


def read_part(path: Path, columns: list[str] | None = None) -> pl.DataFrame:
    return pl.read_parquet(path, columns=columns)


def iter_parts(folder: Path, entries: list[dict], columns: list[str] | None = None,
               unify: bool = True) -> Iterator[pl.DataFrame]:
    """The parts one at a time, in order (cast to the unified schema when `unify`)."""
    folder = Path(folder)
    target = dataset_schema(folder, entries, columns) if unify and len(entries) > 1 else None
    for e in entries:
        df = read_part(folder / e["file"], columns)
        if target is not None and dict(df.schema) != target:
            df = df.cast(target)
        yield df


def dataset_schema(folder: Path, entries: list[dict], columns: list[str] | None = None) -> dict:
    """The unified polars schema of the parts (from their footers: no data is read)."""
    return files_schema([Path(folder) / e["file"] for e in entries], columns)


def gather(folder: Path, entries: list[dict], rows, columns: list[str] | None = None) -> pl.DataFrame:
    """Rows at global positions `rows` (any order, repeats allowed), in that order; reads
    only the parts holding them (see the module doc for the I/O cost)."""
    folder = Path(folder)
    rows = np.asarray(rows, dtype=np.int64)
    bounds = offsets(entries)
    if len(rows) and (rows.min() < 0 or rows.max() >= bounds[-1]):
        raise IndexError(f"row positions outside 0..{bounds[-1] - 1}")
    which = np.searchsorted(bounds, rows, side="right") - 1
    target = dataset_schema(folder, entries, columns) if len(entries) > 1 else None
    pieces, slots = [], []
    for p in np.unique(which).tolist():
        sel = np.flatnonzero(which == p)
        df = read_part(folder / entries[p]["file"], columns)
        if target is not None and dict(df.schema) != target:
            df = df.cast(target)
        pieces.append(df[(rows[sel] - bounds[p]).tolist()])
        slots.append(sel)
    if not pieces:
        return pl.DataFrame(schema=target or dataset_schema(folder, entries[:1], columns))
    out = pl.concat(pieces, how="vertical_relaxed") if len(pieces) > 1 else pieces[0]
    back = np.empty(len(rows), dtype=np.int64)
    back[np.concatenate(slots)] = np.arange(len(rows))
    return out[back.tolist()].rechunk()


class RowGroupWriter:
    """A Parquet file written as a stream of frames in row groups of exactly
    `row_group_rows` rows (the last one shorter): its bytes depend on the rows and the
    schema only, never on how they were cut into `write` calls. Memory: one row group.
    The schema is fixed when opened (`schema`, polars); frames are cast to it. Written to a
    temp file beside `path`, renamed on `close()` (atomic); `abort()` removes it."""

    def __init__(self, path: Path, schema: dict, row_group_rows: int = ROW_GROUP_ROWS):
        self.path = Path(path)
        self.schema = dict(schema)
        self.rows = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._group = row_group_rows
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        self._arrow_schema = pl.DataFrame(schema=self.schema).to_arrow().schema
        self._writer = pq.ParquetWriter(self._tmp, self._arrow_schema, compression="zstd",
                                        write_statistics=False)

    def write(self, df: pl.DataFrame) -> None:
        if df.height == 0:
            return
        if dict(df.schema) != self.schema:
            df = df.select(list(self.schema)).cast(self.schema)
        self._pending.append(df.to_arrow().cast(self._arrow_schema))
        self._pending_rows += df.height
        self.rows += df.height
        while self._pending_rows >= self._group:
            self._flush(self._group)

    def _flush(self, n: int) -> None:
        t = pa.concat_tables(self._pending).combine_chunks()
        self._writer.write_table(t.slice(0, n), row_group_size=n)
        rest = t.slice(n)
        self._pending = [rest] if rest.num_rows else []
        self._pending_rows = rest.num_rows

    def close(self) -> dict:
        """Finish the file; returns {"rows", "sha256"}."""
        if self._pending_rows:
            self._flush(self._pending_rows)
        self._writer.close()
        self._ctx.__exit__(None, None, None)
        return {"rows": self.rows, "sha256": sha256_file(self.path)}

    def abort(self) -> None:
        try:
            self._writer.close()
        finally:
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)


class StageProgress:
    """Finished input parts of a stage that is still running, in RUN/stages/NN-name/parts/:
    `part-IIIII.json` {"key", "rows_in", "part": PART_ENTRY, "rejects": {"file", "rows",
    "sha256"}, "payload"} written last, after the output part (in the stage folder) and
    its rejects (`rejects-IIIII.parquet` here). `key` identifies the computation (the
    stage's fingerprint and the part layout); a part recorded under another key, or whose
    files no longer match, is computed again."""

    def __init__(self, stage_dir: Path, key: str):
        self.stage_dir = Path(stage_dir)
        self.folder = self.stage_dir / PROGRESS_DIR
        self.key = key

    def rejects_path(self, i: int) -> Path:
        return self.folder / f"rejects-{i:05d}.parquet"

    def _meta(self, i: int) -> Path:
        return self.folder / f"part-{i:05d}.json"

    def load(self, i: int, rows_in: int) -> dict | None:
        meta = self._meta(i)
        if not meta.is_file():
            return None
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
            if info.get("key") != self.key or info.get("rows_in") != rows_in:
                return None
            if sha256_file(self.stage_dir / info["part"]["file"]) != info["part"]["sha256"]:
                return None
            if sha256_file(self.rejects_path(i)) != info["rejects"]["sha256"]:
                return None
            return info
        except (OSError, ValueError, KeyError, TypeError):  # damaged: computed again
            return None

    def save(self, i: int, rows_in: int, kept: pl.DataFrame, dropped: pl.DataFrame, payload) -> dict:
        entry = write_part(self.stage_dir, i, kept)
        rej = self.rejects_path(i)
        write_parquet(rej, dropped)
        info = {"key": self.key, "rows_in": rows_in, "part": entry,
                "rejects": {"file": rej.name, "rows": dropped.height, "sha256": sha256_file(rej)},
                "payload": payload}
        write_json(self._meta(i), info)
        return info

    def clear(self) -> None:
        import shutil

        if self.folder.is_dir():
            shutil.rmtree(self.folder)


def merge_rejects(target: Path, items: list) -> dict:
    """A stage's (or render's) rejects, Parquet files or frames in order, as one file of
    fixed-size row groups (RowGroupWriter): the same bytes however the stage was cut into
    parts. One part's rejected rows at a time, with their text: so the Ray executor runs it
    on a worker (`RayExecutor.write_rejects`), the local runner in its own process."""
    schemas = [dict(pl.read_parquet_schema(x)) if isinstance(x, Path) else dict(x.schema) for x in items]
    schema = dict(pl.concat([pl.DataFrame(schema=s) for s in schemas], how="vertical_relaxed").schema)
    w = RowGroupWriter(Path(target), schema)
    try:
        for x in items:
            w.write(pl.read_parquet(x) if isinstance(x, Path) else x)
    except BaseException:
        w.abort()
        raise
    return w.close()
