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
