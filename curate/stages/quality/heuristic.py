"""A documented, weighted combination of text statistics into one quality score in [0, 1].

Each feature is a polars expression over the prompt/response text views, scaled to [0, 1]
(1 = good); the score is sum(weight * feature) / sum(weight). The statistics are the
project's shared ones (curate.stages.common.text_stats, the same the `filter` stage reports), computed
here from the text so the scorer also works without a filter stage before it.

  length       log-scaled answer length, saturating at `length_target` words: a bare
               "yes" to an open question is rarely a good training example (weight 1)
  repetition   1 - the worst Gopher repetition statistic of the answer (duplicate line
               characters, top 2/3-gram share, duplicated 5-gram coverage) (weight 2)
  diversity    distinct words / words of the answer, for answers of 20+ words (weight 1)
  clean        1 - symbol and URL share of the answer outside ``` code fences (markup
               debris, emoji runs) (weight 1)
  not_echo     the answer is not a copy of the prompt (weight 1)
  no_refusal   the answer is not a canned refusal / "as an AI language model" (weight 2)
  substance    the answer (or its last line) is not a placeholder: N/A, TODO, null, "..." (weight 2)
  complete     an answer of 8+ words does not stop on a letter, i.e. mid-word; short answers
               ("Paris", "Bonjour"), code (which may end on an identifier) and answers
               ending in punctuation, digits or markup pass (weight 1)

An answer without a single word character (empty, or only symbols) scores 0 whatever
the weights.

A trade-off: these are cheap and transparent but blind to correctness; use them to rank
out junk, and a classifier, an LM score or a verifier to rank among decent examples.
"""
from __future__ import annotations

import math

import polars as pl

from curate.stages.common.text_stats import basic_stats_frame, repetition_stats
from curate.contract.views import text_view

DEFAULT_WEIGHTS = {"length": 1.0, "repetition": 2.0, "diversity": 1.0, "clean": 1.0, "not_echo": 1.0,
                   "no_refusal": 2.0, "substance": 2.0, "complete": 1.0}
REFUSAL_RE = (
    r"(?i)(\bas an ai\b|\bai language model\b|\blanguage model (?:trained|developed|created) by\b"
    r"|\bi (?:cannot|can't|can not|am unable to|am not able to|won't|will not) (?:answer|assist|help|provide|fulfil|"
    r"comply|browse|do that|share|give|respond)"
    r"|\bi apologi[sz]e,? but\b|\bi'm sorry,? but i\b|\bagainst my (?:programming|guidelines))"
)
# Looks like code (a fence, an indented line, a line opening with a keyword): code may end
# on an identifier, so the mid-word check does not apply.
CODE_RE = (r"```|(?m)^(?: {4}|\t)\S|(?m)^\s*(?:def|class|import|from|return|function|const|let|var|public|"
           r"private|fn|func|package|#include|SELECT|select)\b")
PLACEHOLDER_RE = r"(?i)^\s*(?:n/?a|none|null|nil|todo|tbd|tba|no answer|answer|placeholder|lorem ipsum.*|\.{2,}|…|-+|\?+|x{2,})\s*$"


def features(table: pl.DataFrame, length_target: int = 50) -> pl.DataFrame:
    """One column per feature, each in [0, 1].

    Computed eagerly where that is cheaper, with the values of the plain expressions
    (tests/test_quality.py checks them against those): the symbol and URL shares by
    `basic_stats_frame` (numpy over the bytes of ASCII answers), the word count by
    `count_matches` instead of a list of words per answer, and the distinct words only for
    the answers of 20+ words, the only ones `diversity` reads."""
    frame = table.select(text_view("prompt").alias("p"), text_view("response").alias("r"))
    # code inside ``` fences is not "symbol debris": judge cleanliness on the prose around it
    prose = frame.select(pl.col("r").str.replace_all(r"(?s)```.*?```", "\n"))["r"]
    st = basic_stats_frame(prose).select("symbol_ratio", "url_ratio")
    rep = repetition_stats(frame["r"], top_ngrams=(2, 3), dup_ngrams=(5,))
    lower = frame.select(pl.col("r").str.to_lowercase())["r"]
    n_words = lower.str.count_matches(r"\w+").alias("_n")
    long = (n_words >= 20).fill_null(False)
    diversity = pl.Series("_div", [1.0] * frame.height, dtype=pl.Float64)
    if long.any():
        at = long.arg_true()
        distinct = lower.gather(at).str.extract_all(r"\w+").list.n_unique()
        diversity = diversity.scatter(at, distinct.cast(pl.Float64) / n_words.gather(at).cast(pl.Float64))
    n = pl.col("_n")
    norm_p = pl.col("p").str.strip_chars().str.to_lowercase()
    norm_r = pl.col("r").str.strip_chars().str.to_lowercase()
    worst_rep = pl.max_horizontal(pl.col("dup_line_char_frac"), pl.col("top_2gram_frac"),
                                  pl.col("top_3gram_frac"), pl.col("dup_5gram_frac"))
    return pl.concat([frame, rep, st, pl.DataFrame([n_words, diversity])], how="horizontal").select(
        ((n.cast(pl.Float64) + 1).log() / math.log(length_target + 1)).clip(0.0, 1.0).alias("length"),
        (1.0 - worst_rep).clip(0.0, 1.0).alias("repetition"),
        pl.col("_div").clip(0.0, 1.0).alias("diversity"),
        (1.0 - pl.col("symbol_ratio") - pl.col("url_ratio")).clip(0.0, 1.0).alias("clean"),
        pl.when((norm_r.str.len_chars() > 0) & (norm_r == norm_p)).then(0.0).otherwise(1.0).alias("not_echo"),
        pl.when(pl.col("r").str.contains(REFUSAL_RE)).then(0.0).otherwise(1.0).alias("no_refusal"),
        pl.when(pl.col("r").str.contains(PLACEHOLDER_RE)
                | pl.col("r").str.strip_chars().str.split("\n").list.last().str.contains(PLACEHOLDER_RE))
        .then(0.0).otherwise(1.0).alias("substance"),
        pl.when((n >= 8) & ~pl.col("r").str.contains(CODE_RE)
                & pl.col("r").str.strip_chars_end().str.contains(r"\p{L}$"))
        .then(0.0).otherwise(1.0).alias("complete"),
    ).with_columns(pl.when(pl.col("length") > 0).then(pl.all()).otherwise(0.0))  # no word at all: 0


def score(table: pl.DataFrame, weights: dict[str, float] | None = None, length_target: int = 50) -> pl.DataFrame:
    """`features` plus `score`, the weighted mean."""
    w = {**DEFAULT_WEIGHTS, **(weights or {})}
    feats = features(table, length_target)
    total = sum(w.values())
    expr = sum(pl.col(k) * v for k, v in w.items() if v) / total if total else pl.lit(0.0)
    return feats.with_columns(expr.cast(pl.Float64).alias("score"))
