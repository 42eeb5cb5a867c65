"""Polars' allocator: give freed memory back to the OS at once (issue #19).

Polars allocates through its own jemalloc (in its runtime library, configured by the
`_RJEM_MALLOC_CONF` environment variable when that library makes its first
allocation). jemalloc's default keeps freed pages for ~10 s (`dirty_decay_ms` and
`muzzy_decay_ms` 10000) to reuse them. In a run those pages are mostly not reused: a
whole-table step frees ~100 parts' small buffers and then asks for one large buffer a
column, so the freed pages sit in RSS beside the new ones, and each step's peak sits on
the high-water mark of the steps before it. With both decays at 0 the pages go back
when freed: RSS follows what is live (a 150 MB concatenation of 50 parts that frees them
as it goes: peak +41 MB instead of +144 MB; benchmarks/scale_bench.py figures in
docs/performance.md). Trade-off: a page freed and needed again is faulted in again
(madvise + page fault: a few per cent of CPU at most on the scale benchmark).

It only applies when set before polars is first imported, which `import curate`
(and so `python -m curate`) does first; a program that imports polars before curate
keeps polars' default, and a value the user set in the environment is kept. Child
processes inherit it (Ray workers started from this process)."""
from __future__ import annotations

import os
import sys

ENV = "_RJEM_MALLOC_CONF"
SETTING = "dirty_decay_ms:0,muzzy_decay_ms:0"


def configure_polars_allocator() -> bool:
    """Set polars' jemalloc to return freed pages at once, unless the user set the
    variable; True when the setting can still take effect (polars not loaded yet)."""
    os.environ.setdefault(ENV, SETTING)
    return "polars" not in sys.modules
