"""Lossless conversations (issue 16): every per-turn key but role/content goes to the
message's `extra` (JSON), ids change only for conversations that have one, and a
tool-calling conversation comes out of every curation stage whole."""
import json
from pathlib import Path

import polars as pl
from click.testing import CliRunner

from curate.contract.schema import conversation_id
from curate.read.readers import read_source
from curate.read.sources import SourceConfig
from curate.contract.datasets import read_dataset

ROOT = Path(__file__).resolve().parents[1]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city.",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


def tool_conversation(city: str, degrees: int, sky: str) -> dict:
    call = {"id": f"call_{city.lower()}", "type": "function",
            "function": {"name": "get_weather", "arguments": json.dumps({"city": city})}}
    return {"messages": [
        {"role": "system", "content": "You are a helpful assistant with access to weather tools."},
        {"role": "user", "content": f"What is the weather like in {city} right now? I am planning a walk."},
        {"role": "assistant", "content": f"Let me check the current weather in {city} for you.", "tool_calls": [call]},
        {"role": "tool", "content": json.dumps({"temperature_c": degrees, "sky": sky}),
         "tool_call_id": call["id"], "name": "get_weather"},
        {"role": "assistant", "content": f"In {city} it is {degrees} degrees Celsius with a {sky} sky, "
                                         f"so a walk sounds {'lovely' if degrees > 12 else 'chilly but fine'}.",
         "weight": 1, "refusal": None},
    ], "tools": TOOLS}


CONVS = [tool_conversation("Madrid", 21, "clear"), tool_conversation("Oslo", 3, "grey"),
         tool_conversation("Nairobi", 26, "cloudless"), tool_conversation("Lima", 17, "misty")]


def write(path: Path, recs) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


def expected_extras(conv: dict) -> list:
    out = []
    for m in conv["messages"]:
        rest = {k: v for k, v in m.items() if k not in ("role", "content") and v is not None}
        out.append(json.dumps(rest, ensure_ascii=False, sort_keys=True) if rest else None)
    return out


def test_messages_keep_tool_calls_ids_names_and_unknown_keys(tmp_path):
    r = read_source(SourceConfig(name="m", path=str(write(tmp_path / "t.jsonl", CONVS))), tmp_path)
    assert not r.quarantine
    msgs = r.table["messages"][0].to_list()
    assert [m["extra"] for m in msgs] == expected_extras(CONVS[0])
    assert json.loads(msgs[2]["extra"])["tool_calls"][0]["function"]["name"] == "get_weather"
    assert msgs[2]["content"] == "Let me check the current weather in Madrid for you."  # text and calls both kept
    assert json.loads(msgs[3]["extra"]) == {"name": "get_weather", "tool_call_id": "call_madrid"}
    assert json.loads(msgs[4]["extra"]) == {"weight": 1}  # null-valued keys carry nothing
    assert json.loads(r.table["meta"][0])["tools"] == TOOLS  # conversation-level tools stay in meta
    assert r.table["id"][0] == conversation_id(msgs)


def test_ids_unchanged_without_extra_and_changed_with_it(tmp_path):
    plain = {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}
    named = {"messages": [{"role": "user", "content": "Hi?", "name": "ann"}, {"role": "assistant", "content": "Hello."}]}
    r = read_source(SourceConfig(name="m", path=str(write(tmp_path / "t.jsonl", [plain, named]))), tmp_path)
    old_style = json.dumps([["user", "Hi?"], ["assistant", "Hello."]], ensure_ascii=False, separators=(",", ":"))
    import hashlib

    assert r.table["id"][0] == hashlib.sha1(old_style.encode()).hexdigest()[:20]
    assert r.table["id"][1] != r.table["id"][0]


def test_tool_call_only_turn_has_empty_content_and_its_calls(tmp_path):
    conv = {"messages": [{"role": "user", "content": "Weather in Rome?"},
                         {"role": "assistant", "content": None, "tool_calls": [{"id": "c", "type": "function",
                          "function": {"name": "w", "arguments": "{}"}}]},
                         {"role": "tool", "content": "sunny", "tool_call_id": "c"},
                         {"role": "assistant", "content": "Sunny."}]}
    r = read_source(SourceConfig(name="m", path=str(write(tmp_path / "t.jsonl", [conv]))), tmp_path)
    m = r.table["messages"][0].to_list()[1]
    assert m["content"] == "" and json.loads(m["extra"])["tool_calls"][0]["function"]["name"] == "w"


def test_sharegpt_function_call_becomes_tool_calls(tmp_path):
    rec = {"conversations": [
        {"from": "human", "value": "Weather in Rome?"},
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Rome"}})},
        {"from": "observation", "value": json.dumps({"sky": "sunny"})},
        {"from": "gpt", "value": "It is sunny in Rome."},
        {"from": "function_call", "value": "not json, kept as text"},
    ], "tools": json.dumps(TOOLS)}
    (tmp_path / "s.json").write_text(json.dumps([rec]))
    r = read_source(SourceConfig(name="s", path=str(tmp_path / "s.json")), tmp_path)
    msgs = r.table["messages"][0].to_list()
    assert [m["role"] for m in msgs] == ["user", "assistant", "tool", "assistant", "assistant"]
    assert msgs[1]["content"] == ""
    assert json.loads(msgs[1]["extra"]) == {"tool_calls": [{"type": "function", "function": {
        "name": "get_weather", "arguments": {"city": "Rome"}}}]}
    assert msgs[2]["extra"] is None and msgs[4] == {"role": "assistant", "content": "not json, kept as text", "extra": None}
    assert "tools" in json.loads(r.table["meta"][0])


def test_parquet_message_structs_keep_extra(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"messages": [{"role": "user", "content": "Hi?", "name": None},
                          {"role": "assistant", "content": "Hello.", "name": "bot"}]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    r = read_source(SourceConfig(name="p", path=str(tmp_path / "m.parquet")), tmp_path)
    assert [m["extra"] for m in r.table["messages"][0].to_list()] == [None, '{"name": "bot"}']


def test_tool_conversation_kept_whole_through_every_stage(tmp_path):
    """Read -> normalize -> pii (redact) -> filter -> language -> decontaminate -> quality ->
    exact and near dedup -> select -> mix: the surviving conversations' turns, extras
    included, are exactly what was read."""
    from curate.cli import main

    write(tmp_path / "tools.jsonl", CONVS)
    evalset = ROOT / "sample_data" / "evalsets" / "sample_eval.jsonl"
    (tmp_path / "pipeline.toml").write_text(f'''
[run]
output_dir = "out"
[[sources]]
name = "tools"
path = "tools.jsonl"
format = "messages"
task = "tools"
[[stages]]
kind = "normalize"
[[stages]]
kind = "pii"
action = "redact"
[[stages]]
kind = "filter"
on = "assistant"
[[stages]]
kind = "language"
keep = ["en"]
[[stages]]
kind = "decontaminate"
evalsets = [{{ path = "{evalset}", fields = ["question"] }}]
[[stages]]
kind = "quality"
scorer = "heuristic"
[[stages]]
kind = "dedup"
name = "exact"
method = "exact"
[[stages]]
kind = "dedup"
name = "near"
method = "minhash"
threshold = 0.9
[[stages]]
kind = "select"
column = "heuristic"
[[stages]]
kind = "mix"
by = "task"
val_fraction = 0.0
''')
    res = CliRunner().invoke(main, ["run", str(tmp_path / "pipeline.toml"), "--no-train", "--quiet"])
    assert res.exit_code == 0, res.output
    read = read_dataset(tmp_path / "out" / "stages" / "00-read")
    last = tmp_path / "out" / "stages" / "10-mix"
    final = read_dataset(last)
    assert final.height == len(CONVS), json.loads((tmp_path / "out" / "manifest.json").read_text())["ledger"]
    before = {r["id"]: r["messages"] for r in read.iter_rows(named=True)}
    for row in final.iter_rows(named=True):
        assert row["messages"] == before[row["id"]]
        assert any(m["extra"] and "tool_calls" in m["extra"] for m in row["messages"])
        assert "tools" in json.loads(row["meta"])
