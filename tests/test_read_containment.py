"""Per-file and per-record containment (issue 15): each attack is a bad file beside a good
one in a directory source; the bad input is quarantined (or skipped, for files that are not
data), the good file is read whole, and the ledger reconciles: records + quarantine entries
= inputs read, one entry per bad line and one per broken file."""
import codecs
import gzip
import json
import os
import sys
import tracemalloc
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.read.readers import iter_source, read_source
from curate.read.sources import SourceConfig

GOOD = [{"instruction": f"Question number {i}?", "output": f"Answer number {i}."} for i in range(5)]


def lines(recs) -> str:
    return "".join(json.dumps(r) + "\n" for r in recs)


def source_dir(tmp_path: Path, name: str, data: bytes) -> Path:
    d = tmp_path / "data"
    d.mkdir(exist_ok=True)
    (d / "good.jsonl").write_text(lines(GOOD))
    (d / name).write_bytes(data)
    return d


def read_dir(d: Path, **kw):
    logs = []
    r = read_source(SourceConfig(name="s", path=str(d), **kw), d.parent, log=logs.append)
    return r, logs


def good_kept(r) -> bool:
    origins = r.table["origin"].to_list()
    return sum(o.startswith("data/good.jsonl:") for o in origins) == len(GOOD)


def test_truncated_gzip_keeps_what_was_read_and_names_the_file(tmp_path):
    many = [{"instruction": f"Question {i * 7919 % 10007}?", "output": f"Answer {i * 104729}."} for i in range(3000)]
    full = gzip.compress(lines(many).encode())
    d = source_dir(tmp_path, "broken.jsonl.gz", full[: len(full) // 2])
    r, logs = read_dir(d)
    assert good_kept(r)
    [q] = r.quarantine
    assert q["file"] == "data/broken.jsonl.gz" and "truncated or corrupt gzip" in q["error"]
    assert "\n" not in q["error"] and q["line"].isdigit()
    from_broken = sum(o.startswith("data/broken") for o in r.table["origin"].to_list())
    assert 0 < from_broken < 3000  # lines before the break are kept
    assert r.read == r.table.height + 1
    assert any("broken.jsonl.gz" in m for m in logs)


def test_not_zstd_and_not_gzip(tmp_path):
    d = source_dir(tmp_path, "fake.jsonl.zst", lines(GOOD).encode())
    (d / "fake2.jsonl.gz").write_bytes(b"this is not gzip at all\n")
    r, _ = read_dir(d)
    assert good_kept(r)
    errors = {q["file"]: q["error"] for q in r.quarantine}
    assert "zstd" in errors["data/fake.jsonl.zst"]
    assert "gzip" in errors["data/fake2.jsonl.gz"]
    assert len(r.quarantine) == 2


def test_truncated_parquet_and_corrupt_arrow(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "good.jsonl").write_text(lines(GOOD))
    pq.write_table(pa.Table.from_pylist(GOOD * 20), d / "t.parquet")
    data = (d / "t.parquet").read_bytes()
    (d / "t.parquet").write_bytes(data[: len(data) // 2])
    (d / "x.arrow").write_bytes(b"ARROW1\x00\x00garbage" * 10)
    r, _ = read_dir(d)
    assert good_kept(r)
    errors = {q["file"]: q["error"] for q in r.quarantine}
    assert set(errors) == {"data/t.parquet", "data/x.arrow"}
    assert "unreadable parquet file" in errors["data/t.parquet"]
    assert "unreadable arrow file" in errors["data/x.arrow"]


def test_csv_field_over_python_default_limit(tmp_path):
    big = "x" * 200_000  # csv's default field_size_limit is 131,072
    f = tmp_path / "big.csv"
    f.write_text(f"prompt,completion\nWrite it,{big}\nAgain,ok\n")
    r = read_source(SourceConfig(name="s", path=str(f)), tmp_path)
    assert not r.quarantine
    assert r.table.height == 2 and len(r.table["messages"][0][1]["content"]) == 200_000


def test_csv_field_over_max_record_bytes_quarantines_the_rest(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "a.csv").write_text("prompt,completion\nq,a\nq2," + "y" * 5000 + "\nq3,a3\n")
    (d / "b.csv").write_text("prompt,completion\nq4,a4\n")
    r, _ = read_dir(d, max_record_bytes=1024)
    assert r.table.height == 2  # a.csv's first row and b.csv
    [q] = r.quarantine
    assert q["file"] == "data/a.csv" and "CSV error" in q["error"] and "field larger" in q["error"]


def test_json_line_nested_100000_deep(tmp_path):
    deep = '{"instruction": "q", "output": "a", "x": ' + "[" * 100_000 + "]" * 100_000 + "}\n"
    d = source_dir(tmp_path, "deep.jsonl", (lines(GOOD[:2]) + deep + lines(GOOD[2:])).encode())
    r, _ = read_dir(d)
    assert good_kept(r)
    [q] = r.quarantine
    assert (q["file"], q["line"]) == ("data/deep.jsonl", "3") and "nested too deep" in q["error"]
    assert r.table.filter(pl.col("origin").str.starts_with("data/deep.jsonl")).height == 5


def test_deep_json_array_file(tmp_path):
    d = source_dir(tmp_path, "deep.json", ("[" * 100_000 + "]" * 100_000).encode())
    r, _ = read_dir(d)
    assert good_kept(r)
    [q] = r.quarantine
    assert q["file"] == "data/deep.json" and "nested too deep" in q["error"]


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32-le"])
def test_utf16_and_utf32_detected_by_bom(tmp_path, encoding):
    bom = {"utf-16-le": codecs.BOM_UTF16_LE, "utf-16-be": codecs.BOM_UTF16_BE, "utf-32-le": codecs.BOM_UTF32_LE}[encoding]
    recs = [{"instruction": "Grüß dich, 你好?", "output": "Hallo 😀."}] * 3
    d = source_dir(tmp_path, "wide.jsonl", bom + lines(recs).encode(encoding))
    (d / "wide.json").write_bytes(bom + json.dumps(recs).encode(encoding))
    r, _ = read_dir(d, format="auto")
    assert not r.quarantine
    assert r.table.height == len(GOOD) + 6
    wide = r.table.filter(pl.col("origin").str.starts_with("data/wide"))
    assert set(wide["messages"].list.first().struct.field("content")) == {"Grüß dich, 你好?"}


def test_utf16_each_file_type(tmp_path):
    recs = [{"instruction": "Grüß dich?", "output": "Hallo 😀."}] * 3
    f = tmp_path / "wide.jsonl"
    f.write_bytes(codecs.BOM_UTF16_LE + lines(recs).encode("utf-16-le"))
    r = read_source(SourceConfig(name="s", path=str(f)), tmp_path)
    assert not r.quarantine and r.table.height == 3
    assert r.table["messages"][0][0]["content"] == "Grüß dich?"
    assert r.table["origin"].to_list() == ["wide.jsonl:1", "wide.jsonl:2", "wide.jsonl:3"]
    c = tmp_path / "wide.csv"
    c.write_bytes(codecs.BOM_UTF16_LE + "prompt,completion\nq,ä\n".encode("utf-16-le"))
    r = read_source(SourceConfig(name="c", path=str(c)), tmp_path)
    assert not r.quarantine and r.table["messages"][0][1]["content"] == "ä"


def test_utf8_bom_first_record_kept(tmp_path):
    for name, body in [("bom.jsonl", lines(GOOD)), ("bom.json", json.dumps(GOOD)),
                       ("bom.csv", "prompt,completion\nq,a\n")]:
        f = tmp_path / name
        f.write_bytes(codecs.BOM_UTF8 + body.encode())
        r = read_source(SourceConfig(name="s", path=str(f)), tmp_path)
        assert not r.quarantine, (name, r.quarantine)
        assert r.table.height == (1 if name.endswith(".csv") else len(GOOD))


def test_stray_files_and_empty_files_are_skipped_not_quarantined(tmp_path):
    d = source_dir(tmp_path, "README.md", b"# My dataset\n\nSome words.\n")
    (d / "empty.jsonl").write_bytes(b"")
    (d / "dataset_info.json").write_text(json.dumps({"features": {}}))
    (d / "state.json").write_text(json.dumps({"_data_files": []}))
    (d / "LICENSE").write_text("MIT")
    (d / "notes.txt").write_text("hello")
    r, logs = read_dir(d, format="auto")
    assert r.format == "alpaca" and not r.quarantine
    assert r.table.height == len(GOOD) and r.files == ["data/empty.jsonl", "data/good.jsonl"]
    joined = "\n".join(logs)
    for name in ("README.md", "dataset_info.json", "state.json", "LICENSE", "notes.txt", "empty.jsonl"):
        assert name in joined


def test_empty_first_file_does_not_stop_format_detection(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "a.jsonl").write_bytes(b"\n\n")
    (d / "b.jsonl").write_text(lines(GOOD))
    r = read_source(SourceConfig(name="s", path=str(d)), tmp_path)
    assert r.format == "alpaca" and r.table.height == len(GOOD) and not r.quarantine


def test_undetectable_file_is_one_quarantine_entry(tmp_path):
    d = source_dir(tmp_path, "a_odd.jsonl", lines([{"foo": 1}, {"bar": 2}]).encode())
    (d / "zz.jsonl").write_text(lines(GOOD))
    r, _ = read_dir(d, format="auto")  # a_odd.jsonl comes first: detection goes on after it
    [q] = r.quarantine
    assert q["file"] == "data/a_odd.jsonl" and q["field"] == "format"
    assert r.table.height == 2 * len(GOOD)


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks")
def test_recursive_glob_over_symlink_loop_ends(tmp_path):
    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    (d / "good.jsonl").write_text(lines(GOOD))
    (d / "sub" / "more.jsonl").write_text(lines(GOOD[:2]))
    os.symlink(d, d / "sub" / "loop")  # data/sub/loop -> data
    r = read_source(SourceConfig(name="s", path=str(d / "**" / "*.jsonl")), tmp_path)
    assert r.table.height == len(GOOD) + 2  # each file once
    r = read_source(SourceConfig(name="s", path=str(d)), tmp_path)
    assert r.table.height == len(GOOD) + 2


def test_over_long_line_is_quarantined_with_bounded_memory(tmp_path):
    huge = json.dumps({"instruction": "q", "output": "z" * 8_000_000}) + "\n"
    d = source_dir(tmp_path, "huge.jsonl", (lines(GOOD[:1]) + huge + lines(GOOD[1:])).encode())
    tracemalloc.start()
    r, _ = read_dir(d, max_record_bytes=1 << 20)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert good_kept(r)
    [q] = r.quarantine
    assert (q["file"], q["line"]) == ("data/huge.jsonl", "2") and "over max_record_bytes" in q["error"]
    assert len(q["raw"]) == 0
    assert peak < 6_000_000  # never the whole 8 MB line at once
    assert r.table.filter(pl.col("origin").str.starts_with("data/huge")).height == len(GOOD)


def test_batches_are_bounded_and_concatenate_to_read_source(tmp_path):
    bad = b'{"instruction": "x"\n'
    d = source_dir(tmp_path, "more.jsonl", (lines(GOOD * 7) + bad.decode() + lines(GOOD)).encode())
    full = read_source(SourceConfig(name="s", path=str(d)), tmp_path)
    batches = list(iter_source(SourceConfig(name="s", path=str(d)), tmp_path, batch_rows=4))
    assert all(t.height + len(q) <= 4 for t, q in batches)
    assert pl.concat([t for t, _ in batches]).equals(full.table)
    assert [q for _, qs in batches for q in qs] == full.quarantine
    assert len(full.quarantine) == 1 and full.quarantine[0]["line"] == "36"


def test_pipeline_ledger_reconciles_over_bad_files(tmp_path):
    from click.testing import CliRunner

    from curate.cli import main

    full = gzip.compress(lines(GOOD * 40).encode())
    d = source_dir(tmp_path, "broken.jsonl.gz", full[: len(full) // 2])
    (d / "README.md").write_text("# not data\n")
    (d / "bad.jsonl").write_text(lines(GOOD[:2]) + "{oops\n" + "[" * 50_000 + "\n")
    (tmp_path / "pipeline.toml").write_text(
        '[run]\noutput_dir = "out"\n[[sources]]\nname = "s"\npath = "data"\n[[stages]]\nkind = "normalize"\n')
    res = CliRunner().invoke(main, ["run", str(tmp_path / "pipeline.toml"), "--no-train", "--quiet"])
    assert res.exit_code == 0, res.output
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    ledger = manifest["ledger"]
    assert ledger["reconciles"] and ledger["quarantined"] == 3
    dropped = sum(sum(v.values()) for v in ledger["dropped"].values())
    assert ledger["read"] == ledger["kept"] + dropped + ledger["quarantined"]
    q = [json.loads(x) for x in (tmp_path / "out" / "quarantine.jsonl").read_text().splitlines()]
    assert sorted((x["file"], x["line"]) for x in q)[:2] == [("data/bad.jsonl", "3"), ("data/bad.jsonl", "4")]


def test_a_first_block_of_only_bad_lines_is_quarantined_line_by_line(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text("{bad\n[1\n" + lines(GOOD))
    stream = iter_source(SourceConfig(name="s", path=str(f)), tmp_path, batch_rows=2)
    got = list(stream)
    assert stream.format == "alpaca"
    q = [e for _, qs in got for e in qs]
    assert [(e["line"], e["error"].split(":")[0]) for e in q] == [("1", "bad JSON"), ("2", "bad JSON")]
    assert sum(t.height for t, _ in got) == len(GOOD)
