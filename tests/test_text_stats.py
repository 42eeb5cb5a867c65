"""Length rules of curate.stages.common.text_stats count characters for scripts written
without spaces (issue #15)."""
from __future__ import annotations

import polars as pl

from curate.stages.common.text_stats import basic_stats, weighted_letters, word_count


def _eval(expr_fn, texts):
    return pl.DataFrame({"t": texts}).select(expr_fn(pl.col("t")).alias("x"))["x"].to_list()


def test_words_count_unspaced_characters():
    texts = ["今天你吃饭了吗？", "你还能做什么?", "Hello world", "Hello 世界 again", "สวัสดีครับ", ""]
    assert _eval(word_count, texts) == [8, 7, 2, 4, 10, 0]
    stats = pl.DataFrame({"t": texts}).select(basic_stats(pl.col("t"))["words"].alias("w"))["w"].to_list()
    assert stats == [8, 7, 2, 4, 10, 0]


def test_weighted_letters():
    texts = ["今天你吃饭了吗？", "Hello 世界", "OK", "1+1=2"]
    assert _eval(lambda t: weighted_letters(t, 4), texts) == [28, 13, 2, 0]
    assert _eval(lambda t: weighted_letters(t, 1), texts) == [7, 7, 2, 0]


# ---------------------------------------------------------------- basic_stats_frame = basic_stats

from hypothesis import given, settings, strategies as st  # noqa: E402
from polars.testing import assert_frame_equal  # noqa: E402

from curate.stages.common.text_stats import CODE_BLOCK_RE, basic_stats_frame  # noqa: E402

VARIED = ["", None, " ", "\t\n\r\x0b\x0c", "a\tb\nc", "Hello, world! 42 times_over (x-y).", "```py\nx = 1;\n```\nok then",
          "héllo wörld", "今天你吃饭了吗？", "Hello 世界 again", "สวัสดีครับ", "a_b c-d!! ?? #@$%^&*", "\x00\x1f\x7f",
          "  lead", "trail  ", "x" * 5000, "https://example.com/a?b=c visit www.x.org", "🙂🙂 emoji 🙂", "١٢٣ digits",
          "naïve café", "\u00a0nbsp\u00a0", "\u2028sep", "'quoted' \"double\" \u201ccurly\u201d"]


def _direct(texts, prose=None):
    df = pl.DataFrame({"t": pl.Series(texts, dtype=pl.String),
                       "p": pl.Series(prose if prose is not None else texts, dtype=pl.String)})
    return df.select(**basic_stats(pl.col("t"), prose=pl.col("p") if prose is not None else None))


def test_basic_stats_frame_equals_expressions():
    texts = pl.Series(VARIED, dtype=pl.String)
    assert_frame_equal(basic_stats_frame(texts), _direct(VARIED))
    prose = pl.DataFrame({"t": texts}).select(pl.col("t").str.replace_all(CODE_BLOCK_RE, " "))["t"]
    assert_frame_equal(basic_stats_frame(texts, prose), _direct(VARIED, prose.to_list()))
    assert_frame_equal(basic_stats_frame(texts.clear()), _direct([]))
    ascii_only = [t for t in VARIED if t is not None and t.isascii()]
    assert_frame_equal(basic_stats_frame(pl.Series(ascii_only)), _direct(ascii_only))
    sliced = pl.Series(VARIED * 3, dtype=pl.String).slice(5, 40)  # an Arrow array with an offset
    assert_frame_equal(basic_stats_frame(sliced), _direct(sliced.to_list()))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(max_size=60),
                          st.text(alphabet=st.characters(max_codepoint=127), max_size=80)), max_size=30))
def test_basic_stats_frame_equals_expressions_random(texts):
    assert_frame_equal(basic_stats_frame(pl.Series(texts, dtype=pl.String)), _direct(texts))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.one_of(st.none(), st.text(alphabet="ab `\n.#{}", max_size=40),
                          st.text(alphabet=st.characters(max_codepoint=127), max_size=40)), max_size=30))
def test_basic_stats_frame_equals_expressions_with_prose(texts):
    # prose = the text without fenced code: equal to the text on most rows, shorter on some
    series = pl.Series(texts, dtype=pl.String)
    prose = pl.DataFrame({"t": series}).select(pl.col("t").str.replace_all(CODE_BLOCK_RE, " "))["t"]
    assert_frame_equal(basic_stats_frame(series, prose), _direct(texts, prose.to_list()))
