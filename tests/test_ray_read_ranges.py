"""The read planned as pieces (curate/read/ranges.py, what the Ray executor's workers read)
gives exactly the sequential reader's records and quarantine: the pieces of a source, read
one by one and concatenated, equal `read_source` (no Ray here: fast)."""
from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import polars as pl
import pytest

from curate.read import ranges as R
from curate.read.readers import read_source
from curate.read.sources import SourceConfig


def _pieces_read(cfg: SourceConfig, base: Path, batch_rows: int):
    plan = R.plan_source(0, cfg, base, batch_rows)
    tables, quarantine = [], []
    for piece in plan.pieces:
        for t, q in R.read_piece(plan, piece, base, batch_rows):
            if t.height:
                tables.append(t)
            quarantine += q
    table = pl.concat(tables, how="vertical") if tables else None
    return plan, table, quarantine


def _same(cfg: SourceConfig, base: Path, batch_rows: int):
    want = read_source(cfg, base, batch_rows=batch_rows)
    plan, table, quarantine = _pieces_read(cfg, base, batch_rows)
    assert quarantine == want.quarantine
    if want.table.height:
        assert table.equals(want.table) and table.schema == want.table.schema
    else:
        assert table is None
    assert plan.format == want.format and plan.files == want.files
    return plan, want


def test_line_spans_cut_at_line_starts_with_line_and_record_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(R, "SCAN_CHUNK", 37)  # cuts and lines across many read chunks
    rnd = random.Random(0)
    for _ in range(200):
        lines = [rnd.choice([b"", b"  ", b"\t\r", b'{"a":1}', b"x" * rnd.randint(1, 90)])
                 for _ in range(rnd.randint(0, 60))]
        data = b"\n".join(lines) + rnd.choice([b"", b"\n"])
        p = tmp_path / "f.jsonl"
        p.write_bytes(data)
        br = rnd.randint(1, 10)
        starts = [0] + [i + 1 for i, c in enumerate(data) if c == 10 and i + 1 < len(data)]
        phys = data.split(b"\n")
        want = [((starts[k], starts[k + br] if k + br < len(starts) else len(data), k),
                 k - sum(1 for x in phys[:k] if not x.strip())) for k in range(0, len(starts), br)]
        assert R.line_spans(p, br, True, 1000) == want


def _messy_jsonl(path: Path, n: int) -> None:
    lines = []
    for i in range(n):
        if i % 11 == 3:
            lines.append(b'{"instruction": "broken ' + str(i).encode())  # bad JSON
        elif i % 13 == 5:
            lines.append(b"")  # blank
        elif i % 17 == 7:
            lines.append(b'{"instruction": "bad \xff utf8", "output": "x"}')
        elif i % 19 == 2:
            lines.append(json.dumps({"instruction": "long " * 80, "output": "y"}).encode())  # over max_record_bytes
        else:
            lines.append(json.dumps({"instruction": f"Question {i}?", "input": "" if i % 2 else f"ctx {i}",
                                     "output": f"Answer {i}.", "extra": i}).encode())
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join(lines) + b"\n")


@pytest.mark.parametrize("batch_rows", [1, 7, 64, 10_000])
def test_jsonl_pieces_equal_the_sequential_read(tmp_path, batch_rows):
    _messy_jsonl(tmp_path / "a.jsonl", 150)
    _messy_jsonl(tmp_path / "b.jsonl", 40)
    cfg = SourceConfig(name="qa", path=str(tmp_path / "*.jsonl"), format="alpaca", task="qa", max_record_bytes=300)
    plan, want = _same(cfg, tmp_path, batch_rows)
    assert want.quarantine and want.table.height > 100
    if batch_rows < 100:
        assert len(plan.pieces) > 2 and all(p.span is not None for p in plan.pieces)


def test_auto_format_and_other_file_types(tmp_path):
    """format = "auto" resolved on the driver as the sequential reader does; gz and CSV files
    are one piece each; a file-type error is quarantined the same way."""
    d = tmp_path / "src"
    d.mkdir()
    rows = [{"prompt": f"p{i}", "completion": f"c{i}"} for i in range(30)]
    (d / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:12]) + "\nnot json\n")
    with gzip.open(d / "b.jsonl.gz", "wt") as fh:
        fh.write("\n".join(json.dumps(r) for r in rows[12:20]))
    pl.DataFrame(rows[20:]).write_csv(d / "c.csv")
    cfg = SourceConfig(name="pc", path=str(d), format="auto", task="code")
    plan, want = _same(cfg, tmp_path, 5)
    assert plan.format == "prompt_completion" and not plan.whole
    assert [p.span is None for p in plan.pieces] == [False, False, False, True, True]


def test_auto_format_undecided_in_the_first_block_reads_the_source_whole(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text("bad\n" * 4 + "\n".join(json.dumps({"instruction": f"i{i}", "output": "o"}) for i in range(6)))
    cfg = SourceConfig(name="x", path=str(f), format="auto", task="t")
    plan, want = _same(cfg, tmp_path, 3)  # the first block of 3 lines has nothing decodable
    assert plan.whole and len(plan.pieces) == 1


def test_task_format_record_numbers_across_ranges(tmp_path):
    f = tmp_path / "pairs.jsonl"
    lines = []
    for i in range(40):
        lines.append(json.dumps({"en": f"Good morning {i}", "fr": f"Bonjour {i}"}))
        if i % 3 == 0:
            lines.append("   ")  # blank lines shift line numbers but not record numbers
    f.write_text("\n".join(lines) + "\n")
    cfg = SourceConfig(name="mt", path=str(f), format="task", task_template="translation",
                       fields={"source": "en", "target": "fr"})
    plan, want = _same(cfg, tmp_path, 4)
    assert len(plan.pieces) > 5
    users = [m[0]["content"] for m in want.table["messages"].to_list()]
    assert len({u.replace(str(i), "") for i, u in enumerate(users)}) > 1  # the phrasings vary by record number
