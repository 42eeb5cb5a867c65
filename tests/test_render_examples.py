"""render_examples: splits, overflow (drop / truncate at turn boundaries), train_on modes,
drop reasons, template sources, checks and samples."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from curate.render.config import RenderConfig
from curate.render.renderer import IGNORE, RenderError, assign_split, render_examples
from curate.contract.schema import conversation_id
from helpers import records
from test_render_tokenizers import byte_bpe_tokenizer, get_tokenizer


def table(convs: list[list[dict]], tasks=None) -> pl.DataFrame:
    return records(convs, source="src", task=(lambda i: tasks[i]) if tasks else "qa", origin="f")


def exchange(i: int, turns: int = 1, words: int = 3) -> list[dict]:
    msgs = []
    for t in range(turns):
        msgs.append({"role": "user", "content": f"Question {i}.{t}: " + "what is this " * words})
        msgs.append({"role": "assistant", "content": f"Answer {i}.{t}: " + "it is that " * words})
    return msgs


def cfg(**kw) -> RenderConfig:
    c = RenderConfig(tokenizer="unused", **kw)
    c.validate()
    return c


@pytest.fixture(scope="module")
def tok():
    return get_tokenizer("bpe")


def test_output_contract(tok):
    t = table([exchange(i, turns=1 + i % 3) for i in range(40)], tasks=["a", "b"] * 20)
    out = render_examples(t, cfg(val_fraction=0.25), Path("."), seed=1, tokenizer=tok)
    ex = out.examples
    assert ex.columns == ["id", "source", "task", "split", "input_ids", "labels"]
    assert ex.schema["input_ids"] == pl.List(pl.Int32) and ex.schema["labels"] == pl.List(pl.Int32)
    assert ex["id"].to_list() == sorted(ex["id"].to_list())
    assert ex.height == 40 and out.dropped.height == 0
    # stratified: each task gets floor(20 * 0.25) = 5 val rows
    assert ex.filter(pl.col("split") == "val").group_by("task").len().sort("task")["len"].to_list() == [5, 5]
    fp = out.fingerprints
    assert fp["template"] == "chatml" and len(fp["template_sha256"]) == 64
    assert set(fp["tokenizer"]) >= {"path", "fingerprint", "vocab_size", "special_tokens"}
    assert fp["end_of_turn"]["text"] == "<|im_end|>" and fp["end_of_turn"]["ids"] == [tok.convert_tokens_to_ids("<|im_end|>")]
    checks = out.stats["checks"]
    assert checks["zero_supervised"] == 0 and checks["runs_without_end_of_turn"] == 0
    assert 0 < checks["supervised_fraction"]["a"] < 1
    s = out.stats["samples"][0]
    assert "[[" in s["marked"] and "<|im_end|>]]" in s["marked"].replace(" ", "")
    # same input, same seed: same output; other seed: another val set
    again = render_examples(t, cfg(val_fraction=0.25), Path("."), seed=1, tokenizer=tok)
    assert again.examples.equals(ex)
    other = render_examples(t, cfg(val_fraction=0.25), Path("."), seed=2, tokenizer=tok)
    assert other.examples.filter(pl.col("split") == "val")["id"].to_list() != \
        ex.filter(pl.col("split") == "val")["id"].to_list()


def test_split_column_wins_and_small_tasks_may_have_no_val():
    t = table([exchange(i) for i in range(6)], tasks=["big"] * 5 + ["tiny"])
    s = assign_split(t, 0.2, seed=0)
    assert s.to_list().count("val") == 1  # floor(5 * 0.2) from big, none from tiny
    assert s[5] == "train"
    t2 = t.with_columns(pl.Series("split", ["val", "train", "train", "val", "train", "train"]))
    assert assign_split(t2, 0.2, seed=0).to_list() == t2["split"].to_list()


def test_overflow_drop_and_truncate_at_turn_boundaries(tok):
    long_conv = exchange(0, turns=4, words=6)
    t = table([long_conv, exchange(1)])
    full = render_examples(t, cfg(max_length=10**6), Path("."), 0, tokenizer=tok).examples
    n_full = full.filter(pl.col("id") == conversation_id(long_conv))["input_ids"].list.len()[0]
    limit = int(n_full * 0.7)
    dropped = render_examples(t, cfg(max_length=limit), Path("."), 0, tokenizer=tok)
    assert dropped.examples.height == 1
    assert dropped.dropped["_reason"].to_list() == ["too_long"]
    assert "max_length" in dropped.dropped["_detail"][0]
    assert dropped.stats["dropped"] == {"too_long": 1}

    cut = render_examples(t, cfg(max_length=limit, overflow="truncate"), Path("."), 0, tokenizer=tok)
    assert cut.examples.height == 2 and cut.stats["truncated"] == 1
    row = cut.examples.filter(pl.col("id") == conversation_id(long_conv)).row(0, named=True)
    ids = row["input_ids"]
    assert len(ids) <= limit
    # cut right after an assistant turn's end-of-turn token, which is supervised
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    assert ids[-1] == eot and row["labels"][-1] == eot
    assert ids == full.filter(pl.col("id") == row["id"])["input_ids"][0].to_list()[: len(ids)]
    # a limit below the first assistant turn: dropped even when truncating
    tiny = render_examples(t, cfg(max_length=8, overflow="truncate"), Path("."), 0, tokenizer=tok)
    assert set(tiny.dropped["_reason"]) == {"too_long"}


def test_truncate_cuts_inside_a_first_turn_too_long_to_fit(tok):
    """A single-turn example whose answer runs past max_length is cut at max_length inside the
    answer (not dropped): a prefix of the full rendering, the answer's kept tokens supervised,
    no end-of-turn token at the cut."""
    conv = [{"role": "user", "content": "Tell me."}, {"role": "assistant", "content": "it is that " * 40}]
    t = table([conv])
    full = render_examples(t, cfg(max_length=10**6), Path("."), 0, tokenizer=tok).examples.row(0, named=True)
    full_lab = np.asarray(full["labels"])
    first_sup = int(np.flatnonzero(full_lab != IGNORE)[0])
    limit = first_sup + 10
    assert limit < len(full["input_ids"]) - 5
    dropped = render_examples(t, cfg(max_length=limit), Path("."), 0, tokenizer=tok)
    assert dropped.examples.height == 0
    cut = render_examples(t, cfg(max_length=limit, overflow="truncate"), Path("."), 0, tokenizer=tok)
    assert cut.examples.height == 1 and cut.stats["truncated"] == 1 and cut.dropped.height == 0
    row = cut.examples.row(0, named=True)
    assert row["input_ids"] == full["input_ids"][:limit]
    assert row["labels"] == full["labels"][:limit]
    assert (np.asarray(row["labels"]) != IGNORE).sum() == 10
    assert row["input_ids"][-1] != tok.convert_tokens_to_ids("<|im_end|>")
    for mode in ("last_assistant", "all"):
        other = render_examples(t, cfg(max_length=limit, overflow="truncate", train_on=mode), Path("."), 0, tokenizer=tok)
        assert other.examples.height == 1 and len(other.examples["input_ids"][0]) == limit


def test_train_on_modes(tok):
    conv = exchange(0, turns=3)
    t = table([conv])
    outs = {m: render_examples(t, cfg(train_on=m), Path("."), 0, tokenizer=tok).examples.row(0, named=True)
            for m in ("assistant", "last_assistant", "all")}
    sup = {m: np.asarray(r["labels"]) != IGNORE for m, r in outs.items()}
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    ids = np.asarray(outs["all"]["input_ids"])
    assert sup["last_assistant"].sum() < sup["assistant"].sum() < sup["all"].sum() == len(ids) - 1
    assert not (sup["last_assistant"] & ~sup["assistant"]).any()
    # every assistant turn's <|im_end|> is trained under "assistant"; only the last under "last_assistant"
    eot_pos = np.flatnonzero(ids == eot)
    assistant_eots = [p for p in eot_pos if sup["assistant"][p]]
    assert len(assistant_eots) == 3
    assert [p for p in eot_pos if sup["last_assistant"][p]] == assistant_eots[-1:]


def test_drop_reasons(tok):
    no_answer = [{"role": "user", "content": "Is anyone there?"}]
    bad_roles = [{"role": "user", "content": "hi"}, {"role": "system", "content": "late system"},
                 {"role": "assistant", "content": "ok"}]
    t = table([no_answer, bad_roles, exchange(3)])
    out = render_examples(t, cfg(template="mistral"), Path("."), 0, tokenizer=tok)
    reasons = dict(zip(out.dropped["id"], out.dropped["_reason"]))
    assert reasons[conversation_id(no_answer)] == "no_supervised_tokens"
    assert reasons[conversation_id(bad_roles)] == "template_error"
    assert "mistral" in out.dropped.filter(pl.col("_reason") == "template_error")["_detail"][0]
    assert out.examples.height == 1
    # dropped rows keep the input's columns, for the rejects file
    assert set(t.columns) <= set(out.dropped.columns)


def test_template_sources(tok, tmp_path):
    t = table([exchange(0)])
    (tmp_path / "mine.jinja").write_text(
        "{% for m in messages %}{{ m['role'] }}: {% if m['role'] == 'assistant' %}{% generation %}"
        "{{ m['content'] }}{{ eos_token }}{% endgeneration %}{% else %}{{ m['content'] }}\n{% endif %}{% endfor %}")
    out = render_examples(t, cfg(template="mine.jinja"), tmp_path, 0, tokenizer=tok)
    assert out.fingerprints["end_of_turn"]["text"] == "</s>" and out.examples.height == 1
    with pytest.raises(RenderError, match="no chat_template"):
        render_examples(t, cfg(template="tokenizer"), tmp_path, 0, tokenizer=byte_bpe_tokenizer())
    with pytest.raises(RenderError, match="no built-in"):
        render_examples(t, cfg(template="nope"), tmp_path, 0, tokenizer=tok)
    with pytest.raises(RenderError, match="no chat template file"):
        render_examples(t, cfg(template="missing.jinja"), tmp_path, 0, tokenizer=tok)


def test_template_without_eot_in_generation_is_refused(tok, tmp_path):
    (tmp_path / "leaky.jinja").write_text(
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' %}{% generation %}"
        "{{ m['content'] }}{% endgeneration %}<|im_end|>\n{% else %}{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}")
    with pytest.raises(RenderError, match="end-of-turn"):
        render_examples(table([exchange(0)]), cfg(template="leaky.jinja"), tmp_path, 0, tokenizer=tok)


def test_tokenizer_template_without_generation_uses_prefix_spans(tok):
    """A tokenizer's own template with no {% generation %} blocks: masks from prefix renders,
    the end-of-turn token (and the newline after it) trained, prompts not."""
    plain = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
             "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    tok2 = get_tokenizer("bpe").__class__(tokenizer_object=tok.backend_tokenizer, bos_token="<s>", eos_token="</s>",
                                          unk_token="<unk>")
    tok2.chat_template = plain
    conv = exchange(0, turns=2)
    out = render_examples(table([conv]), cfg(template="tokenizer"), Path("."), 0, tokenizer=tok2)
    assert out.stats["mask_source"] == "prefix"
    ref = render_examples(table([conv]), cfg(template="chatml"), Path("."), 0, tokenizer=tok)
    a = np.asarray(out.examples["labels"][0].to_list()) != IGNORE
    b = np.asarray(ref.examples["labels"][0].to_list()) != IGNORE
    assert out.examples["input_ids"][0].to_list() == ref.examples["input_ids"][0].to_list()
    # the same tokens, plus the newline after each <|im_end|>
    extra = np.flatnonzero(a & ~b)
    assert (b & ~a).sum() == 0 and len(extra) >= 2
    ids = out.examples["input_ids"][0].to_list()
    assert tok.decode([ids[i] for i in extra]).strip(" \n\u2581") == ""
    # a template whose earlier renders are not prefixes of the whole is refused
    tok2.chat_template = "{{ messages | length }}" + plain
    with pytest.raises(RenderError, match="prefix"):
        render_examples(table([conv]), cfg(template="tokenizer"), Path("."), 0, tokenizer=tok2)


def test_no_double_bos(tok):
    out = render_examples(table([exchange(0)]), cfg(template="llama-3"), Path("."), 0, tokenizer=tok)
    ids = out.examples["input_ids"][0].to_list()
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    assert out.stats["checks"]["double_bos"] == 0


def test_loads_tokenizer_from_config_path(tmp_path):
    tok = get_tokenizer("bpe")
    tok.save_pretrained(tmp_path / "tok")
    out = render_examples(table([exchange(0)]), RenderConfig(tokenizer="tok"), tmp_path, 0)
    assert out.examples.height == 1 and out.fingerprints["tokenizer"]["path"] == "tok"
    with pytest.raises(RenderError, match="no local tokenizer"):
        render_examples(table([exchange(0)]), RenderConfig(tokenizer="absent"), tmp_path, 0)


def test_upsampled_repeats_render_once_and_keep_their_rows(tok):
    convs = [exchange(0), exchange(1), [{"role": "user", "content": "unanswered"}]]
    t = table(convs + [convs[0], convs[0], convs[2]])
    t = t.with_columns(pl.Series("split", ["train", "val", "train", "train", "train", "train"]),
                       pl.Series("repeat", [0, 0, 0, 1, 2, 1], dtype=pl.Int32))
    out = render_examples(t, cfg(), Path("."), 0, tokenizer=tok)
    assert out.examples.height + out.dropped.height == t.height
    assert out.examples.height == 4 and out.dropped.height == 2
    rep = out.examples.filter(pl.col("id") == conversation_id(convs[0]))
    assert rep.height == 3 and rep["input_ids"].n_unique() == 1
    assert out.stats["dropped"] == {"no_supervised_tokens": 2}


def test_span_tokens_equals_offset_rule():
    """The per-span lookups give the same tokens as transformers' walk over every offset,
    on a byte-level tokenizer where characters split over several tokens."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from curate.render.renderer import span_token_mask, span_tokens

    bt = get_tokenizer("byte_bpe")
    backend = bt.backend_tokenizer

    @settings(max_examples=80, deadline=None, derandomize=True)
    @given(text=st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40),
           data=st.data())
    def check(text, data):
        enc = backend.encode(text, add_special_tokens=False)
        s = data.draw(st.integers(0, len(text) - 1))
        e = data.draw(st.integers(s + 1, len(text)))
        offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
        ref = span_token_mask(offsets, np.array([[s, e]]))
        got = np.zeros(len(enc), dtype=bool)
        found = span_tokens(enc, s, e, len(enc))
        if found is not None:
            got[found[0]: found[1] + 1] = True
        assert (got == ref).all()

    check()


def test_check_config_refuses_before_work(tmp_path):
    from curate.render.renderer import check_config
    from curate.contract.typed_config import ConfigError

    (tmp_path / "tok").mkdir()
    check_config(RenderConfig(tokenizer="tok"), tmp_path)
    check_config(RenderConfig(tokenizer="tok", template="tokenizer"), tmp_path)
    with pytest.raises(ConfigError, match="render.template.*unknown built-in"):
        check_config(RenderConfig(tokenizer="tok", template="llama-2"), tmp_path)
    with pytest.raises(ConfigError, match="render.template.*no chat template file"):
        check_config(RenderConfig(tokenizer="tok", template="x/my.jinja"), tmp_path)
    with pytest.raises(ConfigError, match="render.tokenizer.*never downloaded"):
        check_config(RenderConfig(tokenizer="meta-llama/Llama-3-8B"), tmp_path)
