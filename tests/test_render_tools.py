"""Tool-calling conversations rendered whole (#16): each message's `extra` (tool_calls,
tool_call_id, name, unknown keys) merged into the message the template sees, the
conversation's `tools` (meta["tools"]) passed as `tools=`; ids and masks equal
`apply_chat_template(messages, tools=..., return_assistant_tokens_mask=True)`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curate.contract.schema import conversation_id
from curate.render.config import RenderConfig
from curate.render.renderer import IGNORE, Renderer, calls_as_text, message_dicts, render_examples, tools_column
from curate.render.templates import ChatTemplate, builtin_names, builtin_text
from test_render_tokenizers import get_tokenizer

TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def tool_conversation(i: int, content_of_call: str | None = "") -> list[dict]:
    """OpenAI-style: an assistant turn with tool_calls (string arguments), a tool result with
    tool_call_id and name, then the answer; one unknown per-turn key."""
    return [
        {"role": "system", "content": "You can call tools."},
        {"role": "user", "content": f"Weather in city {i}?"},
        {"role": "assistant", "content": content_of_call, "tool_calls": [
            {"id": f"call_{i}", "type": "function",
             "function": {"name": "get_weather", "arguments": json.dumps({"city": f"city {i}"})}}]},
        {"role": "tool", "content": json.dumps({"temp": 20 + i}), "tool_call_id": f"call_{i}", "name": "get_weather"},
        {"role": "assistant", "content": f"It is {20 + i} degrees in city {i}.", "weight": 1},
    ]


def stored(msgs: list[dict]) -> list[dict]:
    """The canonical row form (h1's contract): role, content, and the other keys as JSON."""
    out = []
    for m in msgs:
        rest = {k: v for k, v in m.items() if k not in ("role", "content")}
        out.append({"role": m["role"], "content": m.get("content"),
                    "extra": json.dumps(rest, ensure_ascii=False) if rest else None})
    return out


MESSAGES_WITH_EXTRA = pl.List(pl.Struct({"role": pl.String, "content": pl.String, "extra": pl.String}))


def table(convs: list[list[dict]], tools: list | None) -> pl.DataFrame:
    rows = [{"id": conversation_id([{"role": m["role"], "content": m.get("content") or ""} for m in c]) + f"{i:04d}",
             "source": "s", "task": "tools", "messages": stored(c),
             "meta": json.dumps({"tools": tools} if tools else {}), "origin": f"f:{i}"} for i, c in enumerate(convs)]
    return pl.DataFrame(rows, schema={"id": pl.String, "source": pl.String, "task": pl.String,
                                      "messages": MESSAGES_WITH_EXTRA, "meta": pl.String, "origin": pl.String})


def hf(tok, text: str, msgs: list[dict], tools):
    tok.chat_template = text
    try:
        out = tok.apply_chat_template(msgs, tools=tools, tokenize=True, return_dict=True,
                                      return_assistant_tokens_mask=True)
    finally:
        tok.chat_template = None
    return list(out["input_ids"]), list(out["assistant_masks"])


def test_message_dicts_merge_extras():
    m = tool_conversation(3)
    assert message_dicts(stored(m)) == [{k: v for k, v in d.items() if v is not None} for d in m]
    # rows without `extra` (the old struct) are unchanged
    assert message_dicts([{"role": "user", "content": "x"}]) == [{"role": "user", "content": "x"}]


@pytest.mark.parametrize("name", builtin_names())
def test_tool_conversations_match_apply_chat_template(name):
    tok = get_tokenizer("bpe")
    tpl = ChatTemplate(name, builtin_text(name))
    renderer = Renderer(tpl, tok, max_length=10**9)
    for i in range(3):
        msgs = tool_conversation(i)
        ex = renderer.render_batch([stored(msgs)], [json.dumps(TOOLS)])[0]
        assert ex.reason is None, ex.error
        # a template that never reads tool_calls gets them as text in the content (calls_as_text)
        given = msgs if "tool_calls" in tpl.text else calls_as_text(msgs)
        ids, mask = hf(tok, tpl.text, given, TOOLS)
        assert ex.input_ids.tolist() == ids, name
        assert ex.mask.astype(int).tolist() == mask, name


def test_a_template_without_tool_support_trains_the_call_as_text():
    """chatml never reads tool_calls: a turn that only calls a tool must not train as an
    empty answer; the call is written into the trained span as JSON."""
    tok = get_tokenizer("bpe")
    tpl = ChatTemplate("chatml", builtin_text("chatml"))
    text, spans = Renderer(tpl, tok, max_length=10**9).render_text(stored(tool_conversation(2)))
    trained = [text[s:e] for s, e in spans]
    assert trained[0].startswith('{"name": "get_weather", "arguments": "{\\"city\\": \\"city 2\\"}"}')
    assert calls_as_text([{"role": "user", "content": "x"}]) == [{"role": "user", "content": "x"}]


def test_qwen_renders_tool_calls_and_tools_in_the_trained_span():
    tok = get_tokenizer("bpe")
    tpl = ChatTemplate("qwen-2.5", builtin_text("qwen-2.5"))
    msgs = tool_conversation(1, content_of_call=None)  # OpenAI writes null content beside tool_calls
    text, spans = Renderer(tpl, tok, max_length=10**9).render_text(stored(msgs), TOOLS)
    ref = tok.apply_chat_template(msgs, tools=TOOLS, tokenize=False, chat_template=tpl.text)
    assert text == ref
    assert '"name": "get_weather"' in text and "<tools>" in text
    call = text[spans[0][0]:spans[0][1]]
    assert call == '\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "city 1"}}\n</tool_call><|im_end|>'
    assert "<tool_response>\n{\"temp\": 21}\n</tool_response>" in text


def test_render_examples_passes_extras_and_tools_from_the_table(tmp_path):
    tok = get_tokenizer("bpe")
    convs = [tool_conversation(i) for i in range(6)]
    t = table(convs, TOOLS)
    assert tools_column(t).null_count() == 0
    cfg = RenderConfig(template="qwen-2.5", tokenizer="unused", val_fraction=0.0)
    cfg.validate()
    out = render_examples(t, cfg, tmp_path, seed=0, tokenizer=tok)
    assert out.dropped.height == 0 and out.examples.height == 6 and out.stats["with_tools"] == 6
    text = builtin_text("qwen-2.5")
    by_id = dict(zip(t["id"], range(t.height)))
    for row in out.examples.iter_rows(named=True):
        ids, mask = hf(tok, text, convs[by_id[row["id"]]], TOOLS)
        assert row["input_ids"] == ids
        sup = (np.asarray(row["labels"]) != IGNORE).astype(int)
        want = np.asarray(mask)
        want[0] = 0  # the first token is never trained
        assert sup.tolist() == want.tolist()
    # without tools in meta, the template gets tools=None (no <tools> system block)
    out2 = render_examples(table(convs, None), cfg, tmp_path, seed=0, tokenizer=tok)
    assert out2.stats["with_tools"] == 0
    assert "<tools>" not in tok.decode(out2.examples["input_ids"][0].to_list())


def test_bad_extra_drops_only_that_record(tmp_path):
    tok = get_tokenizer("bpe")
    t = table([tool_conversation(i) for i in range(3)], TOOLS)
    msgs = t["messages"].to_list()
    msgs[1][2]["extra"] = "{not json"
    t = t.with_columns(pl.Series("messages", msgs, dtype=MESSAGES_WITH_EXTRA))
    cfg = RenderConfig(template="qwen-2.5", tokenizer="unused", val_fraction=0.0)
    out = render_examples(t, cfg, tmp_path, seed=0, tokenizer=tok)
    assert out.examples.height == 2 and out.dropped["_reason"].to_list() == ["template_error"]
    assert "message 2: `extra` is not valid JSON" in out.dropped["_detail"][0]


def test_tools_column_takes_only_tool_schemas():
    metas = [json.dumps({"tools": TOOLS}), json.dumps({"tools": json.dumps(TOOLS)}), json.dumps({"tools": "a knife"}),
             json.dumps({"tools": ["knife", "board"]}), "{}", json.dumps({"other": 1, "note": "tools"}), None]
    col = tools_column(pl.DataFrame({"meta": metas}, schema={"meta": pl.String})).to_list()
    assert [json.loads(c) if c else None for c in col] == [TOOLS, TOOLS, None, None, None, None, None]
