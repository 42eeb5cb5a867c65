"""The `filter` stage: every check with a positive and a negative case, the Gopher
repetition statistics against a plain-Python reference, flag/drop agreement, config errors,
and hit counts on the real instruction files in ../shared/data/formats."""
from __future__ import annotations

import collections
import re
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings, strategies as st

from curate.stages.base import StageContext
from curate.stages.filter.stage import INSTRUCTION_CHECKS, STAGE, Config
from curate.stages.common.text_stats import repetition_stats
from curate.contract.typed_config import ConfigError, load_dataclass
from helpers import pair, records

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def table(convs) -> pl.DataFrame:
    """Records from (user, assistant) pairs or full message lists."""
    return records([c if isinstance(c, list) else pair(*c) for c in convs])


def run(convs, **cfg):
    config = load_dataclass(Config, {"kind": "filter", **cfg})
    ctx = StageContext(run_dir=Path("."), config_dir=Path("."), seed=0, stage_dir=Path("."))
    return STAGE(config, ctx).process(table(convs))


def reasons(convs, **cfg):
    res = run(convs, action="flag", **cfg)
    return res.kept["filter_flag"].to_list()


PROSE = ("Photosynthesis converts light energy into chemical energy. Plants capture sunlight with chlorophyll, "
         "take in carbon dioxide through their leaves and water through their roots, and release oxygen.")


@pytest.mark.parametrize(
    "answer,expected",
    [
        ("", "empty_answer"), ("N/A", "empty_answer"), ("<noinput>", "empty_answer"), ("  none. ", "empty_answer"),
        ("No_Output", "empty_answer"), ("Paris.", None), ("None of the above options is correct.", None),
    ],
)
def test_empty_or_placeholder_answer(answer, expected):
    assert reasons([("What is the capital of France?", answer)]) == [expected]


def test_no_assistant_turn_is_empty():
    res = run([[{"role": "user", "content": "hello there"}]])
    assert res.dropped["_reason"].to_list() == ["empty_answer"] and res.dropped["_detail"][0] == "no assistant turn"


def test_answer_repeats_prompt():
    p = "Rewrite this sentence in the passive voice.\nThe committee approved the new budget for the school year."
    copied = "The committee approved the new budget for the school year."
    assert reasons([(p, copied)]) == ["answer_repeats_prompt"]
    assert reasons([("Say hello world to everyone here", "say hello world to everyone here!")]) == ["answer_repeats_prompt"]
    # extraction: a short span of a long prompt is fine
    long_prompt = "Find the name in this text. " + PROSE + " The study was led by Maria Lopez in Madrid."
    assert reasons([(long_prompt, "Maria Lopez")]) == [None]
    assert reasons([(p, "The new budget for the school year was approved by the committee.")]) == [None]


@pytest.mark.parametrize(
    "answer,expected",
    [
        ("I'm sorry, but I can't help with that request.", "refusal"),
        ("I’m sorry, but I cannot provide that information.", "refusal"),  # typographic apostrophe
        ("As an AI language model, I think the answer is 4.", "ai_disclaimer"),
        ("My knowledge cutoff prevents me from knowing that.", "ai_disclaimer"),
        ("I'm sorry to hear about your loss. Grief takes time, and talking to friends helps.", None),
        ("Language models such as GPT are trained on large text corpora.", None),
    ],
)
def test_refusal_and_disclaimer(answer, expected):
    assert reasons([("Tell me something.", answer)]) == [expected]


def test_phrase_lists_are_overridable():
    conv = [("Q?", "Certainly not, I refuse to discuss it.")]
    assert reasons(conv) == [None]
    assert reasons(conv, extra_refusal_phrases=["I refuse to"]) == ["refusal"]
    assert reasons([("Q?", "As an AI language model, yes.")], disclaimer_phrases=["nothing matches this"]) == [None]
    res = run(conv, extra_refusal_phrases=["I refuse to"])
    assert res.dropped["_detail"][0] == "matched 'i refuse to'"


def test_truncated_answer():
    assert reasons([("Describe the water cycle.", "Water evaporates from the oceans, forms clouds and then falls back as rain over the")]) == ["truncated"]
    assert reasons([("List fruits.", "Apples, pears, and")]) == ["truncated"]
    assert reasons([("Describe the water cycle.", "Water evaporates from the oceans, forms clouds and then falls back as rain over land")]) == ["truncated"]
    # complete sentences, short answers, lists, names, code are fine
    for ok in ("Water evaporates, condenses into clouds and falls back as rain.", "42", "- apples\n- pears\n- plums",
               "The quote is by the famous writer and poet Oscar Wilde", "```python\nprint('hi')\n```",
               "水从海洋蒸发，形成云，然后以雨的形式落下"):
        assert reasons([("Q?", ok)]) == [None], ok


def test_unbalanced_code_fence():
    assert reasons([("Code?", "Here:\n```python\nprint(1)\n")]) == ["unbalanced_code_fence"]
    assert reasons([("Code?", "Here:\n```python\nprint(1)\n```\nDone.")]) == [None]


def test_merged_instructions():
    assert reasons([("Q?", "The answer is 4.\n\n### Instruction:\nWrite a poem.")]) == ["merged_instructions"]
    assert reasons([("Q?", "Paris is the capital.\n2. Instruction: Name a river.")]) == ["merged_instructions"]
    assert reasons([("Q?", "Sure.\nHuman: thanks!")]) == ["merged_instructions"]
    assert reasons([("Q?", "Follow the instructions on the box: heat for two minutes.")]) == [None]


def test_unverifiable_url():
    summary = "The article argues that remote work increases productivity and reduces commuting costs."
    assert reasons([("Summarize this article: https://example.com/news/remote-work", summary)]) == ["unverifiable_url"]
    # the answer admits it cannot open the link
    assert reasons([("Summarize this article: https://example.com/a", "I cannot access external links; please paste the text.")]) == [None]
    # the task is about the URL string itself
    assert reasons([("Extract the domain from this URL: https://docs.example.com/a", "example.com")]) == [None]
    # the content is in the prompt
    assert reasons([("Summarize this article (https://example.com/a):\n" + PROSE * 3, summary)]) == [None]


def test_length_bounds_and_details():
    res = run([("Q?", "one two three"), ("Q?", PROSE)], min_words=5, max_chars=150)
    assert res.dropped["_reason"].to_list() == ["too_short", "too_long"]
    assert res.dropped["_detail"].to_list()[0] == "words=3 < min_words=5"
    assert res.kept.height == 0


def test_tokens_regex_and_bounds():
    res = run([("Q?", "Hello, world!")], action="flag", min_tokens=5)
    assert res.kept["filter_tokens"].to_list() == [4]  # Hello , world !
    assert res.kept["filter_flag"].to_list() == ["too_short"]


def test_token_bounds_with_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(tmp_path / "tokenizer.json"))
    config = load_dataclass(Config, {"kind": "filter", "tokenizer": str(tmp_path), "max_tokens": 3, "action": "flag"})
    config.check_paths(tmp_path)
    ctx = StageContext(run_dir=tmp_path, config_dir=tmp_path, seed=0, stage_dir=tmp_path)
    res = STAGE(config, ctx).process(table([("Q?", "hello hello"), ("Q?", "a b c d e.")]))
    assert res.kept["filter_tokens"].to_list() == [2, 6]
    assert res.kept["filter_flag"].to_list() == [None, "too_long"]
    with pytest.raises(ConfigError, match="tokenizer"):
        load_dataclass(Config, {"kind": "filter", "tokenizer": "missing"}).check_paths(tmp_path)


def test_character_ratios():
    digits = " ".join(str(1000 + i) for i in range(30))
    symbols = " ".join(["$$ %% ^^ && ** @@ ~~"] * 6)
    res = run([("Q?", digits), ("Q?", symbols), ("Q?", PROSE)], action="flag", max_non_ascii_ratio=0.1)
    flags = res.kept["filter_flag"].to_list()
    assert flags[0] in ("low_alpha_ratio", "high_digit_ratio") and flags[1] in ("low_alpha_ratio", "high_symbol_ratio")
    assert flags[2] is None
    assert res.kept["filter_alpha_ratio"][2] > 0.9
    # short texts are not judged on ratios (a one-line arithmetic answer is fine)
    assert reasons([("2+2?", "2 + 2 = 4")]) == [None]
    # code inside fences does not count as symbols
    code = "Use this:\n```js\n" + "x = {a: [1, 2], b: {c: 3}}; y = x => x * 2;\n" * 20 + "```\nIt maps the values and returns the doubled values nicely."
    assert reasons([("Code?", code)]) == [None]
    # non-ASCII is off by default, on when set
    zh = "这是一个关于光合作用的回答，植物利用阳光把二氧化碳和水转化为糖和氧气。" * 3
    assert reasons([("Q?", zh)]) == [None]


def test_url_density():
    links = " ".join(f"https://example.com/page/{i}/index.html" for i in range(10))
    assert reasons([("Links?", "See " + links)]) == ["high_url_ratio"]


def test_repetition_checks():
    loop = " ".join(["I like apples and I like pears."] * 20)
    assert reasons([("Q?", loop)])[0] in ("top_ngram", "duplicate_ngrams")
    lines = "\n".join(["Buy cheap watches now at our store today!"] * 15)
    res = run([("Q?", lines)], action="flag")
    assert res.kept["filter_flag"].to_list() == ["duplicate_lines"]
    assert res.kept["filter_dup_line_frac"][0] == pytest.approx(14 / 15)
    # under repetition_min_words (50) a turn is not judged
    assert reasons([("Q?", "Yes yes yes yes yes yes yes yes yes yes yes yes.")]) == [None]
    # repetition is per turn: two turns giving the same fact are fine
    turn = "The area of the shape is 15 square units, computed as length times width for the given rectangle. " * 1
    conv = [{"role": "user", "content": "Area of a 5x3 rectangle?"}, {"role": "assistant", "content": turn * 1},
            {"role": "user", "content": "And again?"}, {"role": "assistant", "content": turn * 1}]
    assert run([conv], action="flag").kept["filter_flag"].to_list() == [None]


def reference_repetition(text: str, n_top=(2, 3, 4), n_dup=(5, 6, 7, 8, 9, 10)) -> dict:
    """Plain-Python statement of the statistics, as documented in curate.stages.common.text_stats."""
    out = {}
    total = len(text)
    for name, units in (("line", text.split("\n")), ("para", re.split(r"\n[ \t]*\n\s*", text))):
        units = [u.strip() for u in units if re.search(r"\w", u.strip())]
        seen, ndup, cdup = set(), 0, 0
        for u in units:
            if u in seen:
                ndup += 1
                cdup += len(u)
            seen.add(u)
        out[f"dup_{name}_frac"] = ndup / len(units) if units else 0.0
        out[f"dup_{name}_char_frac"] = cdup / total if total else 0.0
    words = re.findall(r"\w+", text)
    for n in n_top:
        grams = collections.Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
        best = max(((c, sum(map(len, g))) for g, c in grams.items() if c >= 2), default=(0, 0))
        out[f"top_{n}gram_frac"] = best[0] * best[1] / total if total else 0.0
    for n in n_dup:
        seen, covered = set(), set()
        for i in range(len(words) - n + 1):
            g = tuple(words[i:i + n])
            if g in seen:
                covered.update(range(i, i + n))
            seen.add(g)
        out[f"dup_{n}gram_frac"] = sum(len(words[i]) for i in covered) / total if total else 0.0
    return out


VOCAB = st.sampled_from(["a", "b", "cat", "dog", "the", "sat", "mat", "x1", "é", "\n", "\n\n", " ", ".", "of"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(VOCAB, max_size=40).map(" ".join), min_size=1, max_size=6))
def test_repetition_matches_reference(texts):
    got = repetition_stats(pl.Series(texts)).to_dicts()
    for text, row in zip(texts, got):
        ref = reference_repetition(text)
        for k, v in ref.items():
            assert row[k] == pytest.approx(v, abs=1e-9), (k, text)


ANSWERS = st.sampled_from([
    "", "N/A", "Paris.", "As an AI language model, no.", "I'm sorry, but I cannot do that.", PROSE,
    "Water evaporates and then falls back as rain over the", "```py\nx=1\n", " ".join(["spam eggs ham"] * 30),
    "2 + 2 = 4", "See https://a.example.com/x " * 8, "Fine.\n### Instruction:\nNext task",
])


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["Q?", "Summarize https://x.example.com/a", PROSE]), ANSWERS), min_size=1, max_size=12))
def test_flag_and_drop_agree(convs):
    flagged = run(convs, action="flag", min_words=2)
    dropped = run(convs, action="drop", min_words=2)
    flags = flagged.kept["filter_flag"]
    assert flagged.kept.height == len(convs) and flagged.dropped.height == 0
    assert dropped.kept.height + dropped.dropped.height == len(convs)
    assert sorted(dropped.dropped["origin"].to_list()) == sorted(flagged.kept.filter(flags.is_not_null())["origin"].to_list())
    assert dropped.dropped["_reason"].to_list() == flags.drop_nulls().to_list()
    assert flagged.stats["hits"] == dropped.stats["hits"]


def test_config_errors():
    with pytest.raises(ConfigError, match="checks"):
        load_dataclass(Config, {"kind": "filter", "checks": ["nope"]})
    with pytest.raises(ConfigError, match="min_words"):
        load_dataclass(Config, {"kind": "filter", "min_words": 10, "max_words": 5})
    with pytest.raises(ConfigError, match="top_ngrams"):
        load_dataclass(Config, {"kind": "filter", "top_ngrams": {"two": 0.2}})
    with pytest.raises(ConfigError, match="min_alpha_ratio"):
        load_dataclass(Config, {"kind": "filter", "min_alpha_ratio": 2.0})
    with pytest.raises(ConfigError, match="unknown key"):
        load_dataclass(Config, {"kind": "filter", "max_wrods": 3})
    cfg = load_dataclass(Config, {"kind": "filter", "disable": ["refusal", "max_chars"]})
    assert cfg.enabled("max_chars") is None


def test_disable_switches_checks_off():
    conv = [("Q?", "As an AI language model, I'm sorry, but I cannot answer.")]
    assert reasons(conv, disable=["refusal", "ai_disclaimer"]) == [None]
    assert set(INSTRUCTION_CHECKS) >= {"refusal", "ai_disclaimer"}


def test_stats_and_columns():
    res = run([("Q?", PROSE), ("Q?", "N/A")])
    assert res.stats["hits"] == {"empty_answer": 1}
    assert res.stats["checks"]["empty_answer"] == 1
    assert "words" in res.stats["summary"] and "dup_5gram_frac" in res.stats["summary"]
    assert {"filter_chars", "filter_words", "filter_alpha_ratio", "filter_top_2gram_frac", "filter_failed"} <= set(res.kept.columns)
    assert res.dropped["filter_failed"].to_list() == [["empty_answer"]]


FORMATS = SHARED / "formats"


@pytest.mark.skipif(not FORMATS.is_dir(), reason="../shared/data is absent")
def test_real_files_hit_counts():
    from curate.read.sources import SourceConfig
    from curate.read.readers import read_source

    counts = {}
    for f in sorted(FORMATS.glob("*.json")):
        t = read_source(SourceConfig(name=f.stem, path=str(f)), FORMATS).table
        res = run_table(t)
        counts[f.name] = res.stats["checks"]
        assert res.kept.height + res.dropped.height == t.height
    print({k: {c: n for c, n in v.items() if n} for k, v in counts.items()})
    # every identity answer of FastChat's dummy set says what model it is
    assert counts["sharegpt_fastchat_dummy.json"]["ai_disclaimer"] > 100
    # the KTO demo holds copy-paste loops ("Ooh ooh ah ah! *giggle*" x N)
    assert counts["messages_llamafactory_kto_demo.json"]["dup_ngrams.5"] >= 1
    # LLaMA-Factory's alpaca demo has tasks that point at web articles
    assert counts["alpaca_llamafactory_demo.json"]["unverifiable_url"] >= 1


def run_table(t: pl.DataFrame):
    config = load_dataclass(Config, {"kind": "filter", "action": "flag"})
    ctx = StageContext(run_dir=Path("."), config_dir=Path("."), seed=0, stage_dir=Path("."))
    return STAGE(config, ctx).process(t)
