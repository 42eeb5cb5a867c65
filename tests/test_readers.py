import gzip
import json

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from curate.read.sources import SourceConfig
from curate.read.readers import detect_format, read_source
from tests.conftest import shared

REAL_FILES = {
    "sharegpt_fastchat_dummy.json": ("sharegpt", 500),
    "alpaca_llamafactory_demo.json": ("alpaca", 999),
    "messages_llamafactory_kto_demo.json": ("messages", 300),
    "sharegpt_tools_llamafactory_glaive_demo.json": ("sharegpt", 300),
    "alpaca_history_oasst_zh.json": ("alpaca", 689),
}


@pytest.mark.parametrize("name", sorted(REAL_FILES))
def test_real_files_auto_detected_and_read_whole(name, tmp_path):
    path = shared("formats", name)
    fmt, count = REAL_FILES[name]
    r = read_source(SourceConfig(name="s", path=str(path)), tmp_path)
    assert r.format == fmt
    assert r.table.height == count and r.quarantine == []
    roles = r.table.select(pl.col("messages").list.eval(pl.element().struct.field("role"))).explode("messages")
    assert set(roles["messages"].unique()) <= {"system", "user", "assistant", "tool"}
    # every record has a user and an assistant turn, and a file:index origin
    assert r.table["origin"].str.starts_with(str(path)).all() or r.table["origin"].str.contains(name).all()


def test_real_alpaca_history_expands_to_turns(tmp_path):
    r = read_source(SourceConfig(name="zh", path=str(shared("formats", "alpaca_history_oasst_zh.json"))), tmp_path)
    raw = json.loads(shared("formats", "alpaca_history_oasst_zh.json").read_text())
    i = next(i for i, rec in enumerate(raw) if rec["history"])
    msgs = r.table["messages"][i].to_list()
    assert len(msgs) == 2 * len(raw[i]["history"]) + 2
    assert msgs[0] == {"role": "user", "content": raw[i]["history"][0][0], "extra": None}
    assert msgs[-1] == {"role": "assistant", "content": raw[i]["output"], "extra": None}


def test_real_sharegpt_tools_maps_roles_and_keeps_tools_in_meta(tmp_path):
    r = read_source(SourceConfig(name="g", path=str(shared("formats", "sharegpt_tools_llamafactory_glaive_demo.json"))), tmp_path)
    raw = json.loads(shared("formats", "sharegpt_tools_llamafactory_glaive_demo.json").read_text())
    i = next(i for i, rec in enumerate(raw) if any(t["from"] == "observation" for t in rec["conversations"]))
    roles = [m["role"] for m in r.table["messages"][i].to_list()]
    froms = [t["from"] for t in raw[i]["conversations"]]
    mapping = {"human": "user", "gpt": "assistant", "function_call": "assistant", "observation": "tool"}
    assert roles == [mapping[f] for f in froms]
    assert json.loads(r.table["meta"][i])["tools"] == raw[i]["tools"]


def test_real_messages_keeps_label_in_meta(tmp_path):
    r = read_source(SourceConfig(name="m", path=str(shared("formats", "messages_llamafactory_kto_demo.json"))), tmp_path)
    assert "label" in json.loads(r.table["meta"][0])


def _write_jsonl(path, lines):
    with open(path, "wb") as fh:
        for line in lines:
            fh.write(line if isinstance(line, bytes) else (line if isinstance(line, str) else json.dumps(line)).encode())
            fh.write(b"\n")


def test_malformed_lines_are_quarantined_with_file_line_and_field(tmp_path):
    f = tmp_path / "data.jsonl"
    _write_jsonl(f, [
        {"instruction": "Say hi", "input": "", "output": "Hi"},
        "{not json",
        {"instruction": "x", "output": 5},
        {"instruction": "y"},
        b'{"instruction": "caf\xe9", "output": "z"}',
        {"instruction": "Name a colour", "output": "Blue"},
        "",
        '["a list"]',
    ])
    r = read_source(SourceConfig(name="a", path=str(f), format="alpaca"), tmp_path)
    assert r.table.height == 2
    q = {e["line"]: e for e in r.quarantine}
    assert set(q) == {"2", "3", "4", "5", "8"}
    assert "bad JSON" in q["2"]["error"]
    assert q["3"]["field"] == "output" and "string" in q["3"]["error"]
    assert q["4"]["field"] == "output" and "missing" in q["4"]["error"]
    assert "UTF-8" in q["5"]["error"]
    assert q["2"]["file"] == "data.jsonl"
    assert r.read == 7  # blank line is not a record
    assert r.table["origin"].to_list() == ["data.jsonl:1", "data.jsonl:6"]


def test_unknown_role_quarantined(tmp_path):
    f = tmp_path / "m.jsonl"
    _write_jsonl(f, [{"messages": [{"role": "user", "content": "a"}, {"role": "wizard", "content": "b"}]},
                     {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": [{"type": "text", "text": "b"}]}]}])
    r = read_source(SourceConfig(name="m", path=str(f)), tmp_path)
    assert r.table.height == 1 and r.quarantine[0]["field"] == "messages[1].role"
    assert r.table["messages"][0].to_list()[1]["content"] == "b"


@pytest.mark.parametrize("compress", ["", ".gz", ".zst"])
def test_compressed_jsonl(tmp_path, compress):
    data = "".join(json.dumps({"prompt": f"p{i}", "completion": f"c{i}"}) + "\n" for i in range(5)).encode()
    f = tmp_path / f"pc.jsonl{compress}"
    if compress == ".gz":
        f.write_bytes(gzip.compress(data))
    elif compress == ".zst":
        f.write_bytes(zstandard.ZstdCompressor().compress(data))
    else:
        f.write_bytes(data)
    r = read_source(SourceConfig(name="pc", path=str(f)), tmp_path)
    assert r.format == "prompt_completion" and r.table.height == 5


def test_parquet_csv_arrow_and_dolly_category_task(tmp_path):
    rows = [{"instruction": f"q{i}", "context": "ctx" if i % 2 else "", "response": f"a{i}",
             "category": "open_qa" if i < 3 else "summarization"} for i in range(6)]
    t = pa.Table.from_pylist(rows)
    pq.write_table(t, tmp_path / "d.parquet")
    with pa.ipc.new_file(tmp_path / "d.arrow", t.schema) as w:
        w.write_table(t)
    pl.DataFrame(rows).write_csv(tmp_path / "d.csv")
    for name in ("d.parquet", "d.arrow", "d.csv"):
        r = read_source(SourceConfig(name="dolly", path=str(tmp_path / name)), tmp_path)
        assert r.format == "dolly", name
        assert r.table["task"].to_list() == ["open_qa"] * 3 + ["summarization"] * 3
        assert r.table["messages"][1].to_list()[0]["content"] == "q1\n\nctx"
        assert json.loads(r.table["meta"][0]) == {}


def test_directory_and_glob_sources(tmp_path):
    d = tmp_path / "dir"
    d.mkdir()
    for i in range(3):
        _write_jsonl(d / f"part{i}.jsonl", [{"prompt": f"p{i}", "completion": "c"}])
    assert read_source(SourceConfig(name="d", path=str(d)), tmp_path).table.height == 3
    assert read_source(SourceConfig(name="g", path=str(d / "part[01].jsonl")), tmp_path).table.height == 2


def test_json_array_with_bad_json_quarantines_file_and_run_goes_on(tmp_path):
    f = tmp_path / "broken.json"
    f.write_text('[{"instruction": "a", "output": "b"},\n {"instruction": ')
    r = read_source(SourceConfig(name="b", path=str(f), format="alpaca"), tmp_path)
    assert r.table.height == 0 and len(r.quarantine) == 1 and "bad JSON" in r.quarantine[0]["error"]


def test_detect_format_votes():
    assert detect_format([{"conversations": []}, {"instruction": 1, "output": 2}, {"conversations": []}]) == "sharegpt"
    with pytest.raises(ValueError):
        detect_format([{"foo": 1}])


def test_ids_are_stable_content_hashes(tmp_path):
    f = tmp_path / "a.jsonl"
    _write_jsonl(f, [{"instruction": "a", "output": "b"}, {"instruction": "a", "output": "b", "extra": 1}])
    r = read_source(SourceConfig(name="a", path=str(f)), tmp_path)
    assert r.table["id"][0] == r.table["id"][1]
    assert json.loads(r.table["meta"][1]) == {"extra": 1}


def test_task_format_renders_phrasings_and_quarantines_missing_field(tmp_path):
    f = tmp_path / "pairs.jsonl"
    _write_jsonl(f, [{"en": f"Good morning {i}", "fr": f"Bonjour {i}", "note": "kept"} for i in range(6)]
                 + [{"en": "Hello"}])
    cfg = SourceConfig(name="mt", path=str(f), format="task", task_template="translation",
                       fields={"source": "en", "target": "fr"})
    r = read_source(cfg, tmp_path)
    assert r.table.height == 6 and r.table["task"].unique().to_list() == ["translation"]
    users = [m[0]["content"] for m in r.table["messages"].to_list()]
    assert all(f"Good morning {i}" in u for i, u in enumerate(users))
    assert len({u.replace(str(i), "") for i, u in enumerate(users)}) > 1  # several phrasings
    assert [m[1]["content"] for m in r.table["messages"].to_list()] == [f"Bonjour {i}" for i in range(6)]
    assert json.loads(r.table["meta"][0]) == {"note": "kept"}
    assert r.quarantine[0]["field"] == "fr" and r.quarantine[0]["line"] == "7"
    again = read_source(cfg, tmp_path)
    assert again.table.equals(r.table)  # phrasing choice is deterministic
