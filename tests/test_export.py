"""[export] (#16): the curated conversations as JSONL, Parquet and a datasets folder, train/val
as rendered; they load with `datasets` and render with `apply_chat_template` to the shards' ids;
the dataset card records ledger, per-task counts, config hash and declared licences."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path

import polars as pl
import pytest

from curate.contract.shards import open_split
from curate.contract.typed_config import ConfigError
from curate.pipeline.config import load_config
from curate.pipeline.runner import run_pipeline
from curate.render.export import ExportConfig, export_table
from curate.render.templates import builtin_text

SAMPLE_TOKENIZER = Path(__file__).resolve().parent.parent / "sample_data" / "tokenizer"
needs_tokenizer = pytest.mark.skipif(not SAMPLE_TOKENIZER.is_dir(), reason="sample tokenizer missing")


def make_run(tmp_path: Path, shape: str = "messages", formats=("jsonl", "parquet", "datasets")) -> Path:
    rows = [{"instruction": f"What is {i} plus {i}?", "input": "", "output": f"{i} plus {i} is {2 * i}."}
            for i in range(30)]
    rows.append({"instruction": "Write a very long answer.", "input": "", "output": "word " * 400})  # too long
    (tmp_path / "alpaca.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    chats = [{"conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": f"Hello {i}"},
                                {"from": "gpt", "value": f"Hi {i}!"}, {"from": "human", "value": "Bye?"},
                                {"from": "gpt", "value": f"Bye {i}."}]} for i in range(12)]
    (tmp_path / "chat.json").write_text(json.dumps(chats))
    fmts = ", ".join(f'"{f}"' for f in formats)
    p = tmp_path / "pipeline.toml"
    p.write_text(textwrap.dedent(f"""
        [run]
        output_dir = "run"
        seed = 3
        [[sources]]
        name = "alpaca"
        path = "alpaca.jsonl"
        task = "qa"
        license = "cc-by-4.0"
        [[sources]]
        name = "chat"
        path = "chat.json"
        format = "sharegpt"
        task = "dialogue"
        [[stages]]
        kind = "normalize"
        [render]
        template = "chatml"
        tokenizer = "{SAMPLE_TOKENIZER}"
        max_length = 128
        pack = false
        val_fraction = 0.2
        [export]
        shape = "{shape}"
        formats = [{fmts}]
        """))
    return p


@needs_tokenizer
def test_export_loads_with_datasets_and_renders_to_the_shards(tmp_path):
    import datasets
    from transformers import AutoTokenizer

    m = run_pipeline(load_config(make_run(tmp_path)))
    run = tmp_path / "run"
    ex = run / "export"
    assert m["render"]["dropped"] == {"too_long": 1}
    shard = {s: open_split(run, s).to_pylist() for s in ("train", "val")}
    assert m["export"]["rows"] == {s: len(shard[s]) for s in shard}
    j = datasets.load_dataset("json", data_files={s: str(ex / f"{s}.jsonl") for s in shard})
    p = datasets.load_dataset("parquet", data_files={s: str(ex / f"{s}.parquet") for s in shard})
    d = datasets.load_from_disk(str(ex / "datasets"))
    for loaded in (j, p, d):
        assert {s: loaded[s].num_rows for s in shard} == m["export"]["rows"]
    assert d["train"].features["messages"].feature["role"].dtype == "string"
    assert {"id", "source", "task", "origin", "meta", "messages"} <= set(d["train"].column_names)
    tok = AutoTokenizer.from_pretrained(str(SAMPLE_TOKENIZER), local_files_only=True)
    chatml = builtin_text("chatml")
    for split in shard:
        ids_by_id = {r["id"]: r["input_ids"] for r in shard[split]}
        for loaded in (j, d):
            for row in loaded[split]:
                want = ids_by_id[row["id"]]
                got = tok.apply_chat_template(row["messages"], chat_template=chatml, tokenize=True, return_dict=True)
                assert list(got["input_ids"]) == want
    card = (ex / "README.md").read_text()
    assert "license: cc-by-4.0" in card and m["config_hash"] in card
    assert "| qa | " in card and "| dialogue | " in card and "too_long 1" in card and "| chat |" in card
    assert "not declared" in card  # the chat source declared no licence
    # the card's YAML header makes the folder itself loadable
    folder = datasets.load_dataset(str(ex))
    assert folder["train"].num_rows == m["export"]["rows"]["train"]
    # same config: same bytes
    files = {f: h for f, h in m["export"]["files"].items()}
    m2 = run_pipeline(load_config(tmp_path / "pipeline.toml"), out_dir=tmp_path / "again")
    assert m2["export"]["files"] == files


@needs_tokenizer
@pytest.mark.parametrize("shape", ["sharegpt", "alpaca"])
def test_sharegpt_and_alpaca_shapes(tmp_path, shape):
    import datasets

    m = run_pipeline(load_config(make_run(tmp_path, shape=shape, formats=("jsonl",))))
    ex = tmp_path / "run" / "export"
    rows = datasets.load_dataset("json", data_files=str(ex / "train.jsonl"))["train"]
    assert rows.num_rows == m["export"]["rows"]["train"]
    dialog = next(r for r in rows if r["task"] == "dialogue")
    if shape == "sharegpt":
        assert [t["from"] for t in dialog["conversations"]] == ["system", "human", "gpt", "human", "gpt"]
    else:
        assert dialog["system"] == "Be kind." and dialog["instruction"] == "Bye?"
        assert dialog["output"].startswith("Bye ") and dialog["history"][0][0].startswith("Hello ")
        qa = next(r for r in rows if r["task"] == "qa")
        assert qa["history"] == [] and qa["input"] == "" and "plus" in qa["instruction"]


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def tool_frame() -> pl.DataFrame:
    call = {"tool_calls": [{"id": "c1", "type": "function",
                            "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}
    msgs = [{"role": "user", "content": "Weather?", "extra": None},
            {"role": "assistant", "content": None, "extra": json.dumps(call)},
            {"role": "tool", "content": '{"t": 21}', "extra": json.dumps({"tool_call_id": "c1", "name": "get_weather"})},
            {"role": "assistant", "content": "21 C.", "extra": json.dumps({"weight": 0})}]
    plain = [{"role": "user", "content": "Hi", "extra": None}, {"role": "assistant", "content": "Hello", "extra": None}]
    return pl.DataFrame([
        {"id": "a", "source": "s", "task": "tools", "messages": msgs, "meta": json.dumps({"tools": TOOLS}),
         "origin": "f:1", "quality": 0.5},
        {"id": "b", "source": "s", "task": "chat", "messages": plain, "meta": "{}", "origin": "f:2", "quality": 0.9}])


def test_tool_calls_exported_typed_and_renderable(tmp_path):
    import datasets

    t, info = export_table(tool_frame(), "messages")
    assert info == {"tool_fields": ["tool_calls", "tool_call_id", "name"], "extra_keys": ["weight"]}
    assert t.column_names == ["id", "source", "task", "messages", "tools", "origin", "meta", "quality"]
    ds = datasets.Dataset(t)
    row = ds[0]
    assert row["messages"][1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert row["messages"][2]["tool_call_id"] == "c1" and json.loads(row["tools"]) == TOOLS
    assert json.loads(row["messages"][3]["extra"]) == {"weight": 0} and row["quality"] == 0.5
    # the built-in qwen-2.5 renders the exported turns as it renders the originals
    from curate.render.renderer import message_dicts
    from curate.render.templates import ChatTemplate

    qwen = ChatTemplate("qwen-2.5", builtin_text("qwen-2.5"))
    original = qwen.render(message_dicts(tool_frame()["messages"][0].to_list()), tools=TOOLS)[0]
    exported = [{k: v for k, v in m.items() if v is not None} for m in row["messages"]]
    assert qwen.render(exported, tools=json.loads(row["tools"]))[0] == original
    # sharegpt: the call becomes a function_call turn, the result an observation
    s, _ = export_table(tool_frame(), "sharegpt")
    conv = s.column("conversations")[0].as_py()
    assert [c["from"] for c in conv] == ["human", "function_call", "observation", "gpt"]
    assert json.loads(conv[1]["value"]) == {"name": "get_weather", "arguments": {"city": "Paris"}}
    # alpaca cannot hold tool turns: left out and counted
    a, ainfo = export_table(tool_frame(), "alpaca")
    assert a.num_rows == 1 and ainfo["not_alpaca"] == 1


def test_export_config_refused_before_work():
    for kw, key in [({"formats": ["csv"]}, "formats"), ({"formats": []}, "formats"), ({"dir": "../x"}, "dir"),
                    ({"dir": "/tmp/x"}, "dir"), ({"dir": "shards"}, "dir")]:
        with pytest.raises(ConfigError) as err:
            ExportConfig(**kw).validate()
        assert err.value.key == key


def test_export_key_errors_name_the_key(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n")
    (tmp_path / "p.toml").write_text('[[sources]]\nname = "a"\npath = "a.jsonl"\n[export]\nshape = "chatml"\n')
    with pytest.raises(ConfigError, match="export.shape"):
        load_config(tmp_path / "p.toml")
