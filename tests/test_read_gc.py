"""The JSONL reader pauses the cyclic GC while a block of lines fills (speed only): the
caller must never run with it paused, whether the stream is read to the end, abandoned,
or breaks, and the records are those of a reader that never pauses it."""
from __future__ import annotations

import gc
import gzip
import json
from pathlib import Path

from curate.read.readers import SourceStream, read_source
from curate.read.sources import SourceConfig


def _cfg(path: Path) -> SourceConfig:
    return SourceConfig(name="s", path=str(path), format="alpaca")


def _write(path: Path, n: int) -> None:
    lines = [json.dumps({"instruction": f"q {i}", "input": "", "output": f"a {i}"}) for i in range(n)]
    lines.insert(5, "{not json")
    path.write_text("\n".join(lines) + "\n")


def test_gc_enabled_between_and_after_blocks(tmp_path):
    p = tmp_path / "a.jsonl"
    _write(p, 50)
    assert gc.isenabled()
    rows = 0
    for table, quarantine in SourceStream(_cfg(p), tmp_path, batch_rows=7):
        assert gc.isenabled()  # while the caller holds a block
        rows += table.height
    assert gc.isenabled() and rows == 50
    stream = iter(SourceStream(_cfg(p), tmp_path, batch_rows=7))
    next(stream)
    del stream  # abandoned mid-file
    gc.collect()
    assert gc.isenabled()


def test_gc_left_disabled_when_caller_disabled_it(tmp_path):
    p = tmp_path / "a.jsonl"
    _write(p, 20)
    gc.disable()
    try:
        list(SourceStream(_cfg(p), tmp_path, batch_rows=6))
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_broken_file_reenables_gc_and_matches(tmp_path):
    p = tmp_path / "a.jsonl.gz"
    body = "\n".join(json.dumps({"instruction": f"q {i}", "input": "", "output": f"a {i}"}) for i in range(300))
    data = gzip.compress(body.encode())
    p.write_bytes(data[: len(data) // 2])  # truncated gzip: the file breaks mid-way
    got = read_source(_cfg(p), tmp_path)
    assert gc.isenabled()
    gc.disable()  # a caller that keeps it paused throughout reads the same records
    try:
        want = read_source(_cfg(p), tmp_path)
    finally:
        gc.enable()
    assert got.table.height > 0 and got.quarantine  # records before the break, then the file's entry
    assert got.table.equals(want.table) and got.quarantine == want.quarantine
