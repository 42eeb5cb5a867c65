"""Rendered ids and loss masks equal transformers' apply_chat_template for every built-in
template and every tokenizer at hand, on fixed and hypothesis-generated conversations."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curate.render.templates import ChatTemplate, builtin_names, builtin_text
from curate.render.renderer import IGNORE, Renderer
from test_render_tokenizers import TOKENIZERS, get_tokenizer

BUILTINS = builtin_names()

FIXED = {
    "single": [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}],
    "multi_turn": [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help you today?"},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And Germany?"},
        {"role": "assistant", "content": "Berlin."},
    ],
    "system": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Summarize: the quick brown fox jumps over the lazy dog."},
        {"role": "assistant", "content": "A fox jumps over a dog."},
    ],
    "tool": [
        {"role": "system", "content": "You can call tools."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": '{"name": "get_weather", "arguments": {"city": "Paris"}}'},
        {"role": "tool", "content": '{"temp": 21}'},
        {"role": "assistant", "content": "It is 21 degrees in Paris."},
    ],
    "unicode": [
        {"role": "user", "content": "Übersetze: 日本語のテキスト 🙂"},
        {"role": "assistant", "content": "  Japanese text ∑ x² ≤ ∞, déjà vu 🚀  "},
        {"role": "user", "content": "한국어?\n\nבעברית"},
        {"role": "assistant", "content": "\tyes\n"},
    ],
}


def hf_reference(tok, template_text: str, messages: list[dict]):
    tok.chat_template = template_text
    try:
        out = tok.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    finally:
        tok.chat_template = None  # the tokenizers are shared between tests
    return list(out["input_ids"]), list(out["assistant_masks"])


def ours(tok, template: ChatTemplate, messages: list[dict]):
    ex = Renderer(template, tok, max_length=10**9).render_batch([messages])[0]
    assert ex.reason is None, ex.error
    return ex, ex.input_ids.tolist(), ex.mask.astype(int).tolist()


@pytest.fixture(scope="module")
def compiled():
    return {name: ChatTemplate(name, builtin_text(name)) for name in BUILTINS}


def test_builtin_set():
    for name in ("chatml", "llama-3", "mistral", "gemma", "phi-3", "qwen-2.5", "zephyr", "vicuna", "alpaca"):
        assert name in BUILTINS
        assert ChatTemplate(name, builtin_text(name)).has_generation


@pytest.mark.parametrize("tok_name", list(TOKENIZERS))
@pytest.mark.parametrize("name", BUILTINS)
def test_fixed_conversations_match_apply_chat_template(name, tok_name, compiled):
    tok = get_tokenizer(tok_name)
    tpl = compiled[name]
    for conv_name, msgs in FIXED.items():
        ids_ref, mask_ref = hf_reference(tok, tpl.text, msgs)
        ex, ids, mask = ours(tok, tpl, msgs)
        assert ids == ids_ref, (name, tok_name, conv_name)
        assert mask == mask_ref, (name, tok_name, conv_name)
        # labels: the assistant mask, minus the never-predicted first token
        labels = ex.labels
        sup = labels != IGNORE
        expected = np.array(mask_ref, dtype=bool)
        expected[0] = False
        assert (sup == expected).all()
        assert (labels[sup] == ex.input_ids[sup]).all()


@pytest.mark.parametrize("tok_name", ["bpe", "byte_bpe"])
def test_end_of_turn_supervised_in_every_assistant_turn(tok_name, compiled):
    tok = get_tokenizer(tok_name)
    for name, tpl in compiled.items():
        r = Renderer(tpl, tok, max_length=10**9)
        assert r.end_of_turn in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "</s>"), name
        msgs = FIXED["multi_turn"]
        ex = r.render_batch([msgs])[0]
        for s, e in ex.spans:
            at = ex.text.rfind(r.end_of_turn, s, e)
            assert at >= 0
            toks = [i for i, (a, b) in enumerate(ex.offsets) if a < at + len(r.end_of_turn) and b > at]
            assert toks and all(ex.labels[i] != IGNORE for i in toks), name
        # and no user text is trained
        user_chars = [ex.text.find(m["content"]) for m in msgs if m["role"] == "user"]
        for c in user_chars:
            toks = [i for i, (a, b) in enumerate(ex.offsets) if a <= c < b]
            assert all(ex.labels[i] == IGNORE for i in toks), name


# ------------------------------------------------------------------ hypothesis

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from(" \n\t"),
               min_size=1, max_size=30).filter(lambda s: s.strip())


@st.composite
def conversations(draw):
    msgs = []
    if draw(st.booleans()):
        msgs.append({"role": "system", "content": draw(TEXT)})
    for _ in range(draw(st.integers(1, 3))):
        msgs.append({"role": "user", "content": draw(TEXT)})
        msgs.append({"role": "assistant", "content": draw(TEXT)})
        if draw(st.booleans()):
            msgs.append({"role": "tool", "content": draw(TEXT)})
            msgs.append({"role": "assistant", "content": draw(TEXT)})
    return msgs


@pytest.mark.parametrize("tok_name", list(TOKENIZERS))
def test_generated_conversations_match_apply_chat_template(tok_name, compiled):
    tok = get_tokenizer(tok_name)

    @settings(max_examples=15, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
    @given(msgs=conversations(), name=st.sampled_from(BUILTINS))
    def check(msgs, name):
        tpl = compiled[name]
        ids_ref, mask_ref = hf_reference(tok, tpl.text, msgs)
        _, ids, mask = ours(tok, tpl, msgs)
        assert ids == ids_ref
        assert mask == mask_ref

    check()


def test_tools_are_rendered_like_apply_chat_template(compiled):
    tok = get_tokenizer("bpe")
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    for name in BUILTINS:
        tpl = compiled[name]
        tok.chat_template = tpl.text
        try:
            ref = tok.apply_chat_template(FIXED["tool"], tools=tools, tokenize=False)
        finally:
            tok.chat_template = None
        text, _ = tpl.render(FIXED["tool"], tools=tools, **tok.special_tokens_map)
        assert text == ref, name
        if name in ("qwen-2.5", "mistral"):
            assert "get_weather" in text
