"""The read planned as pieces that workers read on their own (the Ray executor's read,
curate/pipeline/ray_read.py), giving exactly the records and quarantine of `iter_source`.

    plan_sources(sources, base_dir, batch_rows, log) -> [SourcePlan]   on the driver
    read_piece(plan, piece, batch_rows)                -> iterator of (table, quarantine)

A piece is one file, or one line range of a file: an uncompressed UTF-8 JSONL file is cut
every `batch_rows` physical lines, at line starts found by counting b"\\n" in the bytes (no
parse; for `format = "task"` also the blank lines before each cut, with a regex over the
bytes, because task templates pick phrasings by the record's number in its file). Every
other file (JSON arrays, CSV, Parquet, Arrow, anything compressed or UTF-16/32) is one
piece: it has no line offsets to seek to without decompressing or parsing it.

What makes a piece read alone equal to its share of the sequential read:
  - line numbers: a range starts counting at the lines before it (`origin` = file:line);
  - the record number in the file: the non-blank lines before it (task format only);
  - `format = "auto"`: the sequential reader detects the format from the first block
    (`batch_rows` entries) of the first file that has any, and keeps it for the source.
    The plan does the same on the driver (`_first_items` of that block: normally the first
    20 decodable lines), so every piece is read with the resolved format. Where detection
    is not plain (that block has nothing decodable, detection fails, the file breaks inside
    it), the source is one piece read by the sequential reader itself (`whole = True`).
  - within a piece, the sequential reader's own per-block code (`SourceStream.file_batches`),
    whose results do not depend on where blocks are cut (the column-wise JSONL parser
    equals per-line parsing by construction, ids are per row).
Trade-offs: the line count reads every splittable file's bytes once on the driver (about
1-2 GB/s from the page cache, no parse, constant memory); a piece that breaks mid-file (an
I/O error: plain JSONL has no decompression errors) names where it broke counting records
from the range's start, not the file's. A source whose format is JSON array, CSV, Parquet,
Arrow or compressed is read one file per worker task: parallel across files, not inside one.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from curate.read.readers import RecordError, SourceStream, detect_format, file_type, iter_items, sniff_encoding
from curate.read.sources import COMPRESSIONS, SourceConfig

SCAN_CHUNK = 16 << 20  # bytes the line count reads at a time
N_DETECT = 20  # decodable records format detection looks at (readers._first_items)


@dataclass
class Piece:
    """One unit of work: a whole file (`span` None) or a line range of one, or (`whole`) a
    whole source read sequentially."""

    source: int  # index of the source in the pipeline's [[sources]]
    file: str = ""  # the path to read ("" with whole)
    shown: str = ""  # the file's name in origins and quarantine entries
    span: tuple[int, int, int] | None = None  # (start byte, end byte, lines before start)
    first_index: int = 0  # the range's first record's number in its file (task templates)
    whole: bool = False


@dataclass
class SourcePlan:
    cfg: SourceConfig
    format: str  # resolved; "auto" only where no file holds a record (or with whole)
    files: list[str]  # shown names, in reading order (the manifest's `files`)
    pieces: list[Piece] = field(default_factory=list)
    whole: bool = False


def _splittable(path: Path, cfg: SourceConfig) -> bool:
    try:
        ftype = file_type(path, cfg.file_type)
    except RecordError:
        return False
    if ftype != "jsonl" or path.name.lower().endswith(COMPRESSIONS):
        return False
    return sniff_encoding(path)[0] == "utf-8"


def line_spans(path: Path, batch_rows: int, count_blank: bool = False, limit: int = 0
               ) -> list[tuple[tuple[int, int, int], int]]:
    """[(span, first_index)]: cuts of an uncompressed file every `batch_rows` lines at line
    starts, from the positions of b"\\n" only (numpy over 16 MiB chunks: constant memory).
    `count_blank`: also count the blank lines (what readers._lines skips: whitespace only,
    at most `limit` bytes) before each cut, so that first_index is the number of non-blank
    lines before the span; otherwise first_index is the lines before it."""
    blank = re.compile(rb"(?m)^[ \t\r\x0b\x0c]{0,%d}\n" % max(0, limit)) if count_blank else None
    size = path.stat().st_size
    cuts = [(0, 0, 0)]  # (byte, lines before, blank lines before)
    lines = blanks = 0
    next_cut = max(1, int(batch_rows))
    base = 0  # file offset of data[0]
    carry = b""
    with open(path, "rb") as fh:
        while chunk := fh.read(SCAN_CHUNK):
            data = carry + chunk if carry else chunk
            nl = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
            if not len(nl):
                carry = data
                continue
            start = 0  # where in data the blank count has got to
            while lines + len(nl) >= next_cut:
                at = int(nl[next_cut - lines - 1]) + 1
                nl = nl[next_cut - lines:]
                if blank is not None:
                    blanks += len(blank.findall(data, start, at))
                start, lines = at, next_cut
                if base + at < size:
                    cuts.append((base + at, lines, blanks))
                next_cut += max(1, int(batch_rows))
            end = int(nl[-1]) + 1 if len(nl) else start
            lines += len(nl)
            if blank is not None:
                blanks += len(blank.findall(data, start, end))
            base, carry = base + end, data[end:]
    ends = [c[0] for c in cuts[1:]] + [size]
    return [((b, e, n), n - nb) for (b, n, nb), e in zip(cuts, ends)]


def _detect(stream: SourceStream, path: Path, batch_rows: int) -> str | None:
    """The format the sequential reader would detect from this file's first block, or None
    where it would not detect it plainly (nothing decodable in the block, a failure, a break):
    such a source is read whole. Raises StopIteration for a file with no entries at all."""
    cfg = stream.cfg
    try:
        ftype = file_type(path, cfg.file_type)
        items, entries = [], 0
        for _loc, item, error, _raw in iter_items(path, ftype, cfg.max_record_bytes, batch_rows):
            entries += 1
            if error is None:
                items.append(item)
                if len(items) >= N_DETECT:
                    break
            if entries >= batch_rows:
                break
    except Exception:  # noqa: BLE001 - a file that breaks here: the sequential reader decides
        return None
    if not entries:
        raise StopIteration
    if not items:
        return None
    try:
        fmt = detect_format(items)
    except RecordError:
        return None
    return fmt


def plan_source(index: int, cfg: SourceConfig, base_dir: Path, batch_rows: int,
                log: Callable[[str], None] = lambda s: None) -> SourcePlan:
    """One source's pieces in reading order (see the module doc)."""
    stream = SourceStream(cfg, base_dir, batch_rows, log)
    files = stream.shown_files()
    plan = SourcePlan(cfg=cfg, format=cfg.format, files=[shown for _, shown in files])
    if cfg.format == "auto":
        for path, shown in files:
            try:
                file_type(path, cfg.file_type)
            except RecordError:
                continue  # quarantined as a whole file; the next file decides
            try:
                fmt = _detect(stream, path, batch_rows)
            except StopIteration:
                continue  # an empty file
            if fmt is None:
                plan.whole = True
                plan.pieces = [Piece(source=index, whole=True)]
                return plan
            log(f"source {cfg.name!r}: detected format {fmt!r} from {shown}")
            plan.format = fmt
            break
    for path, shown in files:
        if _splittable(path, cfg):
            for span, first in line_spans(path, batch_rows, cfg.format == "task", cfg.max_record_bytes):
                plan.pieces.append(Piece(source=index, file=str(path), shown=shown, span=span, first_index=first))
        else:
            plan.pieces.append(Piece(source=index, file=str(path), shown=shown))
    return plan


def plan_sources(sources: list[SourceConfig], base_dir: Path, batch_rows: int,
                 log: Callable[[str], None] = lambda s: None) -> list[SourcePlan]:
    return [plan_source(i, s, base_dir, batch_rows, log) for i, s in enumerate(sources)]


def read_piece(plan: SourcePlan, piece: Piece, base_dir: Path, batch_rows: int,
               log: Callable[[str], None] = lambda s: None) -> Iterator[tuple[pl.DataFrame, list[dict]]]:
    """The piece's (table, quarantine) batches: exactly the sequential reader's for the same
    lines. A `whole` piece is the sequential reader itself."""
    stream = SourceStream(plan.cfg, base_dir, batch_rows, log)
    if piece.whole:
        yield from stream
        plan.format, plan.files = stream.format, stream.files
        return
    stream.format = plan.format
    yield from stream.file_batches(Path(piece.file), piece.shown, piece.span, piece.first_index)

