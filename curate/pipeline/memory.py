"""`[run] memory_budget`: how many rows a part holds when `[run] part_rows` is not set.

    part_rows = clamp(min(budget, MAX_PART_BYTES) // (ROW_COPIES * bytes_per_row), MIN_PART_ROWS, MAX_PART_ROWS)

`budget` is `memory_budget` (bytes, or a string like "4GiB", "512MB"), by default
DEFAULT_FRACTION of this machine's memory (the smaller of physical RAM and a cgroup limit,
read when the run starts). `bytes_per_row` is measured, not assumed: the Arrow buffer
bytes (`pyarrow.Table.get_total_buffer_size`: the text, the list and string offsets, the
validity bitmaps) of the first batch of up to PROBE_ROWS records of every source, divided
by its rows, the largest over the sources (a part holds the rows of one source or two
consecutive ones, and the widest rows must fit). Polars' `estimated_size` was used before
and is well under the real size for nested columns (163 B a record of the sample's
qa_alpaca against 253 B of Arrow buffers), so parts were larger than the budget meant.
ROW_COPIES is how many copies of a part a row-local stage holds at its peak (input part,
annotated part with statistic columns, kept/dropped frames, the Arrow/Parquet buffers of
the write): its peak RSS over its input's Arrow bytes, measured on 50,000 generated
records of ~280 bytes (benchmarks/scale_bench.py's): heuristic quality 11.5, filter 6.7,
normalize 3.7, pii 1.2; rounded up to the largest. Reading a batch of each source
costs one batch read each before the run starts (a source that cannot be read is skipped
here and reported by the read proper).

MAX_PART_BYTES and MAX_PART_ROWS cap a part whatever the RAM: a larger part does not make a
stage faster (per-part overheads are small next to the per-row work at 100,000 rows), but
it raises the run's peak by ROW_COPIES copies of it. 512 MiB of copies (~40 MiB of Arrow
buffers a part) and 250,000 rows: about 100,000 records of the scale benchmark's ~400 B a
part. Before the cap, half of a 24 GiB machine gave 1,000,000-row parts (~5 GB at a
stage's peak), so the default run's peak was set by the part, not by the budget.

What the budget does not bound (said in the run's log and in docs/run-directory.md,
"Memory model"): a whole-table stage (manifest `memory = "whole-table"`) holds the whole
table; a planned stage holds the key columns of every row; rendering holds the per-row
keys of every row (id, source, task, split, token counts: curate/render/stream.py) and one
part with its tokens. The budget sizes the parts; it is not an enforced limit.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

DEFAULT_FRACTION = 0.5
ROW_COPIES = 12
PROBE_ROWS = 1024
MIN_PART_ROWS = 64
MAX_PART_ROWS = 250_000
MAX_PART_BYTES = 512 << 20  # the most memory the ROW_COPIES copies of one part may take, whatever the budget
_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(value) -> int:
    """Bytes from an int or a string like "4GiB", "512 MB", "1e9" is refused; ValueError
    with the reason when it cannot be read."""
    if isinstance(value, bool):
        raise ValueError(f"expected bytes or a size like \"4GiB\", got {value!r}")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str):
        m = _SIZE_RE.match(value)
        unit = m.group(2).lower() if m else None
        if not m or unit not in _UNITS:
            raise ValueError(f"expected bytes or a size like \"4GiB\" or \"512MB\", got {value!r}")
        n = int(float(m.group(1)) * _UNITS[unit])
    else:
        raise ValueError(f"expected bytes or a size like \"4GiB\", got {type(value).__name__} {value!r}")
    if n < 1:
        raise ValueError(f"must be at least 1 byte, got {value!r}")
    return n


def machine_memory() -> int:
    """Physical memory, or the cgroup (v2/v1) limit when that is smaller."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for p in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(p).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < total:
            total = int(text)
    return total


def budget_bytes(value) -> tuple[int, str]:
    """(bytes, how it was chosen) for a `memory_budget` value (None: the default)."""
    if value is None:
        total = machine_memory()
        return int(total * DEFAULT_FRACTION), f"{DEFAULT_FRACTION:g} of this machine's {total / 2**30:.1f} GiB"
    return parse_size(value), f"memory_budget = {value!r}"


def arrow_bytes_per_row(table) -> float:
    """Arrow buffer bytes per row of a polars frame (at least 1)."""
    if not table.height:
        return 1.0
    return max(table.to_arrow().get_total_buffer_size() / table.height, 1.0)


def probe_bytes_per_row(cfg) -> float | None:
    """The largest Arrow bytes per record over the first batch of each source (see the
    module doc); None when no source has a record."""
    from curate.read.readers import iter_source

    widest = None
    for s in cfg.sources:
        try:
            for table, _ in iter_source(s, cfg.base_dir, PROBE_ROWS):
                if table.height:
                    bpr = arrow_bytes_per_row(table)
                    widest = bpr if widest is None else max(widest, bpr)
                    break
        except Exception:  # noqa: BLE001 - the read proper reports a broken source
            continue
    return widest


def part_rows_for(budget: int, bytes_per_row: float | None) -> int:
    if not bytes_per_row:
        return MAX_PART_ROWS
    return int(min(MAX_PART_ROWS, max(MIN_PART_ROWS, min(budget, MAX_PART_BYTES) // (ROW_COPIES * bytes_per_row))))


def choose_part_rows(cfg, log=lambda s: None) -> int:
    """The part size of this run (see the module doc); logged with how it was chosen."""
    if getattr(cfg.run, "part_rows", None):
        return int(cfg.run.part_rows)
    budget, how = budget_bytes(getattr(cfg.run, "memory_budget", None))
    bpr = probe_bytes_per_row(cfg)
    n = part_rows_for(budget, bpr)
    capped = " (capped at " + f"{MAX_PART_BYTES / 2**20:,.0f} MiB a part's copies)" if budget > MAX_PART_BYTES else ""
    log(f"[run] part_rows = {n:,} from a memory budget of {budget / 2**20:,.0f} MiB ({how}){capped}, "
        f"~{bpr or 0:,.0f} Arrow bytes per record (widest source), {ROW_COPIES} copies of a part at a stage's peak")
    return n
