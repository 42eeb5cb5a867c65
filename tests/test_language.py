"""The `language` stage: real fastText predictions with the bundled lid.176 model."""
from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings, strategies as st

from curate.stages.language import langid
from curate.stages.base import StageContext
from curate.stages.language.stage import STAGE, Config
from curate.contract.typed_config import ConfigError, load_dataclass
from helpers import pair, records

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"

EN = "The weather today is sunny and warm, perfect for a long walk in the park with friends."
FR = "Le temps aujourd'hui est ensoleillé et chaud, parfait pour une longue promenade au parc."
DE = "Das Wetter ist heute sonnig und warm, perfekt für einen langen Spaziergang im Park."
ZH = "今天天气晴朗温暖，非常适合和朋友们在公园里散步。我们可以带上午餐，在湖边野餐。"


def table(pairs) -> pl.DataFrame:
    return records([pair(u, a) for u, a in pairs])


def run(pairs=None, frame=None, **cfg):
    config = load_dataclass(Config, {"kind": "language", **cfg})
    ctx = StageContext(run_dir=Path("."), config_dir=Path("."), seed=0, stage_dir=Path("."))
    return STAGE(config, ctx).process(frame if frame is not None else table(pairs))


def test_bundled_model_predicts_offline():
    langs, scores = langid.predict([EN, FR, DE, ZH, "multi\nline\ntext in english for sure"])
    assert langs == ["en", "fr", "de", "zh", "en"]
    assert all(0.5 < s <= 1.0 for s in scores[:4])
    assert langid.load_model() is langid.load_model()  # once per process
    assert (Path(langid.__file__).parent / "resources" / "LICENSE.lid.176.txt").is_file()


def test_columns_and_keep():
    res = run([(EN, EN), (FR, FR), ("Hi", "OK")], keep=["en"], action="flag")
    k = res.kept
    assert k["language_user"].to_list() == ["en", "fr", None]  # too short to judge
    assert k["language_assistant"].to_list() == ["en", "fr", None]
    assert k["language_assistant_score"][0] > 0.8
    assert k["language_flag"].to_list() == [None, "wrong_language", None]
    res = run([(EN, EN), (FR, FR)], keep=["en", "fr"])
    assert res.dropped.height == 0


def test_min_score_makes_uncertain():
    # below min_score a prediction is no verdict unless drop_uncertain is set
    assert run([(FR, FR)], keep=["en"], min_score=0.9999).dropped.height == 0
    res = run([(EN, EN)], keep=["en"], min_score=0.9999, drop_uncertain=True)
    assert res.dropped["_reason"].to_list() == ["uncertain_language"]
    assert res.dropped["_detail"][0].startswith("user=en")


def test_translation_prompts_and_target_language():
    de = "Ich suche eine Apotheke. Diese Straße ist am Nachmittag sehr belebt und laut."
    fr = "Je cherche une pharmacie. Cette rue est très animée l'après-midi et bruyante."
    ask_fr = "Translate the following text into French.\n\nI am looking for a pharmacy. This street is very busy in the afternoon."
    res = run([(ask_fr, fr), (ask_fr, de), ("Give the German translation of this: " + EN, de)], keep=["en"], action="flag")
    assert res.kept["language_flag"].to_list() == [None, "wrong_target_language", None]
    assert res.stats["checks"]["wrong_target_language"] == 1


def test_code_lines_are_not_prose():
    code = "def fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a"
    res = run([("Write a Python function that returns the n-th Fibonacci number.", code)], keep=["en"], action="flag")
    assert res.kept["language_assistant"].to_list() == [None] and res.kept["language_flag"].to_list() == [None]


def test_mismatch_and_translation_exemption():
    res = run([(EN, FR), ("Translate into French: " + EN, FR), (EN, EN)])
    assert res.dropped["_reason"].to_list() == ["language_mismatch"]
    assert res.dropped["_detail"][0] == "user=en assistant=fr"
    assert res.kept.height == 2
    assert run([(EN, FR)], check_mismatch=False).dropped.height == 0


def test_code_and_urls_do_not_decide_the_language():
    answer = FR + "\n```python\n" + "def add(a, b):\n    return a + b\n" * 10 + "```\nhttps://example.com/some/english/words"
    res = run([(FR, answer)], action="flag")
    assert res.kept["language_assistant"].to_list() == ["fr"]


def test_stats_report_languages():
    res = run([(EN, EN), (ZH, ZH), (ZH, ZH)], keep=["zh"])
    assert res.stats["languages"]["assistant"] == {"zh": 2, "en": 1}
    assert res.stats["checks"] == {"wrong_language": 1, "wrong_target_language": 0, "language_mismatch": 0}


TEXTS = st.sampled_from([EN, FR, DE, ZH, "ok", "12345 67890 12345 67890 12345", "Translate to German: " + EN])


@settings(max_examples=20, deadline=None)
@given(st.lists(st.tuples(TEXTS, TEXTS), min_size=1, max_size=10))
def test_flag_and_drop_agree(pairs):
    flagged = run(pairs, keep=["en", "zh"], action="flag")
    dropped = run(pairs, keep=["en", "zh"], action="drop")
    flags = flagged.kept["language_flag"]
    assert sorted(dropped.dropped["origin"].to_list()) == sorted(flagged.kept.filter(flags.is_not_null())["origin"].to_list())
    assert dropped.dropped["_reason"].to_list() == flags.drop_nulls().to_list()


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="keep"):
        load_dataclass(Config, {"kind": "language", "keep": ["english"]})
    with pytest.raises(ConfigError, match="on"):
        load_dataclass(Config, {"kind": "language", "on": ["bot"]})
    with pytest.raises(ConfigError, match="min_score"):
        load_dataclass(Config, {"kind": "language", "min_score": 1.5})
    with pytest.raises(ConfigError, match="model"):
        load_dataclass(Config, {"kind": "language", "model": "nope.ftz"}).check_paths(tmp_path)


ZH_FILE = SHARED / "formats" / "alpaca_history_oasst_zh.json"


@pytest.mark.skipif(not ZH_FILE.is_file(), reason="../shared/data is absent")
def test_oasst_zh_is_chinese():
    """alpaca_history_oasst_zh.json (LLaMA-Factory's oasst zh) is identified as Chinese."""
    items = json.loads(ZH_FILE.read_text(encoding="utf-8"))
    pairs = [(it["instruction"] + ("\n" + it["input"] if it["input"] else ""), it["output"]) for it in items]
    res = run(pairs, keep=["zh"], action="flag")
    langs = res.kept["language_assistant"].drop_nulls()
    share = (langs == "zh").mean()
    print(f"oasst zh: {share:.3f} of {langs.len()} judged answers identified as zh;", res.stats["languages"]["assistant"])
    assert share >= 0.95
    assert res.stats["languages"]["user"] and next(iter(res.stats["languages"]["user"])) == "zh"


def test_short_chinese_is_judged():
    """Issue #15: short Chinese turns used to get no language (too few letters to judge),
    so an English-only stage let them through. A character of an unspaced script now
    counts as `unspaced_weight` letters."""
    pairs = [("今天你吃饭了吗？", "已经吃过了，谢谢你的关心。"), ("你还能做什么?", "我可以替你写代码，作文等"),
             ("OK", "42")]
    res = run(pairs, keep=["en"])
    assert res.dropped.height == 2 and set(res.dropped["_reason"]) == {"wrong_language"}
    assert res.dropped["language_user"].to_list() == ["zh", "zh"]
    assert res.kept["language_user"].to_list() == [None]  # "OK" is still too short to judge
    # weight 1 (letters only) is the old rule: the short Chinese prompts go unjudged
    old = run(pairs, keep=["en"], unspaced_weight=1)
    assert old.dropped.height == 0 and old.kept["language_user"].null_count() == 3


@pytest.mark.skipif(not ZH_FILE.is_file(), reason="../shared/data is absent")
def test_oasst_zh_fails_an_english_only_stage():
    """Of 689 Chinese conversations (with their history turns), only those in English, the
    translation requests (exempt) and texts with almost no letters pass keep = ["en"]
    (43 passed before: every short Chinese turn went unjudged)."""
    items = json.loads(ZH_FILE.read_text(encoding="utf-8"))
    convs = []
    for it in items:
        msgs = [m for u, a in (it.get("history") or []) for m in pair(u, a)]
        convs.append(msgs + pair(it["instruction"] + ("\n" + it["input"] if it["input"] else ""), it["output"]))
    res = run(frame=records(convs), keep=["en"])
    assert res.kept.height + res.dropped.height == len(items)
    assert res.kept.height <= 12, res.kept.height
    # what passes is English, exempt, or has almost no letters: never a judged Chinese turn
    for lang in ("language_user", "language_assistant"):
        assert (res.kept[lang] == "zh").sum() == 0 or res.kept.filter(pl.col(lang) == "zh")["messages"].list.eval(
            pl.element().struct.field("content").str.contains("翻译|translat")).list.any().all()


def test_workers_give_identical_output(monkeypatch):
    """Prediction split over processes equals one call (threshold lowered so a small list
    is split)."""
    texts = [EN, FR, DE, ZH] * 30 + [f"{EN} number {i}" for i in range(40)]
    one = langid.predict(texts, workers=1)
    monkeypatch.setattr(langid, "PARALLEL_MIN_TEXTS", 20)
    try:
        two = langid.predict(texts, workers=2)
    finally:
        langid.shutdown_pools()
    assert two == one


def test_workers_config_refused():
    with pytest.raises(ConfigError, match="workers"):
        load_dataclass(Config, {"kind": "language", "workers": 0})
    with pytest.raises(ConfigError, match="unspaced_weight"):
        load_dataclass(Config, {"kind": "language", "unspaced_weight": 0})


def test_predict_equals_fasttext_predict():
    """The column-wise line preparation and result unpacking give exactly fastText's own
    `predict(list)` over the texts with newlines made spaces: labels and float64 scores,
    on varied text (scripts, emoji, empty, whitespace-only, newlines, carriage returns)."""
    texts = [EN, FR, DE, ZH, "", " ", "\n", "a\r\nb\rc\nd", "Привет, как дела? Всё хорошо.", "🙂🙂🙂", "x" * 3000,
             "مرحبا كيف حالك", "こんにちは、元気ですか", "naïve café crème brûlée", "12345 67890", "\t tab \t"]
    model = langid.load_model()
    labs, probs = model.predict([t.replace("\n", " ").replace("\r", " ") for t in texts], k=1)
    want_langs = [lab[0].removeprefix("__label__") if lab else "" for lab in labs]
    want_scores = [float(min(p[0], 1.0)) if len(p) else 0.0 for p in probs]
    langs, scores = langid.predict(texts, batch_size=5)  # several chunks
    assert langs == want_langs
    assert scores == want_scores
    assert all(type(s) is float for s in scores)
    series_langs, series_scores = langid.predict_series(pl.Series(texts), batch_size=7)
    assert series_langs.to_list() == want_langs and series_scores.tolist() == want_scores
    assert langid.predict([]) == ([], [])


def test_collapse_whitespace_pattern_equals_every_run_replaced():
    from hypothesis import given, settings, strategies as st

    from curate.stages.language.stage import COLLAPSE_WS_RE

    @settings(max_examples=80, deadline=None)
    @given(st.lists(st.text(alphabet=" \t\n\r\x0b\x0c\u00a0\u2003\u3000ab", max_size=30), max_size=10))
    def check(texts):
        s = pl.Series(texts, dtype=pl.String)
        assert s.str.replace_all(COLLAPSE_WS_RE, " ").equals(s.str.replace_all(r"\s+", " "))

    check()
