"""A tool-calling conversation kept whole from read to shard (#16): OpenAI-style messages
with tool_calls, tool results (tool_call_id, name), a per-turn key nobody knows and the
conversation's `tools` go through `curate run` (normalize, filter, dedup, render with a
template that renders tools, unpacked shards) and come out as exactly the ids and loss
mask of `tokenizer.apply_chat_template(messages, tools=..., return_assistant_tokens_mask=True)`."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
from transformers import AutoTokenizer

from curate.contract.shards import open_split
from curate.pipeline.config import load_config
from curate.pipeline.runner import run_pipeline
from curate.render.templates import builtin_text

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = ROOT / "sample_data" / "tokenizer"
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def conversation(i: int) -> dict:
    return {"tools": TOOLS, "messages": [
        {"role": "user", "content": f"What is the weather like in city number {i} today?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": f"call_{i}", "type": "function",
             "function": {"name": "get_weather", "arguments": {"city": f"city {i}"}}}]},
        {"role": "tool", "content": json.dumps({"temp": 20 + i}), "tool_call_id": f"call_{i}", "name": "get_weather"},
        {"role": "assistant", "content": f"It is {20 + i} degrees in city number {i} today.", "note": "kept"},
    ]}


def test_tool_calls_survive_from_read_to_shard(tmp_path):
    records = [conversation(i) for i in range(6)]
    (tmp_path / "tools.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    (tmp_path / "pipeline.toml").write_text(f"""
[run]
output_dir = "run"

[[sources]]
name = "tools"
path = "tools.jsonl"
format = "messages"
task = "tools"

[[stages]]
kind = "normalize"
[[stages]]
kind = "filter"
[[stages]]
kind = "dedup"

[render]
template = "qwen-2.5"
tokenizer = "{TOKENIZER.as_posix()}"
pack = false
val_fraction = 0.0
max_length = 4096
""", encoding="utf-8")
    manifest = run_pipeline(load_config(tmp_path / "pipeline.toml"))
    assert manifest["ledger"]["kept"] == 6, manifest["ledger"]
    table = open_split(tmp_path / "run", "train")
    assert table.num_rows == 6
    tok = AutoTokenizer.from_pretrained(str(TOKENIZER))
    tok.chat_template = builtin_text("qwen-2.5")
    by_user = {r["messages"][0]["content"]: r for r in records}
    seen = 0
    for row in table.to_pylist():
        text = tok.decode(row["input_ids"])
        rec = next(r for u, r in by_user.items() if u in text)
        # keys of JSON objects are stored sorted (meta and `extra`): the reference gets the
        # same tool schemas with their keys in that order (a documented normalisation)
        tools = json.loads(json.dumps(rec["tools"], sort_keys=True))
        ref = tok.apply_chat_template(rec["messages"], tools=tools, tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
        assert row["input_ids"] == list(ref["input_ids"])
        assert [int(x != -100) for x in row["labels"]] == list(ref["assistant_masks"])
        assert "<tool_call>" in text and '"get_weather"' in text and "<tool_response>" in text
        seen += 1
    assert seen == 6
    assert isinstance(table, pa.Table)
