"""Word n-grams of many texts at once, as 64-bit keys in a long table, for set joins
(decontamination: data n-grams joined against an index of eval-set n-grams).

Normalisation: NFKC, lower case, words = runs of letters/digits (punctuation and spacing
differences vanish, so "Janet’s ducks lay 16 eggs" and "janet's ducks lay 16 eggs!" agree).
Keys: a rolling polynomial over per-word hashes (wrapping u64 arithmetic), so an n-gram of
any length costs one multiply-add per word. polars' `hash` is stable within a process but
not across versions: keys are built fresh each run and never stored.
"""
from __future__ import annotations

from typing import Iterable

import polars as pl

WORD_RE = r"[\p{L}\p{N}]+"
_POLY = 0x100000001B3


def normalise(text: pl.Expr) -> pl.Expr:
    return text.str.normalize("NFKC").str.to_lowercase()


def words_table(texts: pl.Series) -> pl.DataFrame:
    """One row per word: `_row` (index of the text), `_pos`, `_nw` (words in the text), `_h`."""
    return (
        pl.DataFrame({"_t": texts.fill_null("")})
        .select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_row"), normalise(pl.col("_t")).str.extract_all(WORD_RE).alias("_w"))
        .with_columns(pl.col("_w").list.len().cast(pl.UInt32).alias("_nw"))
        .explode("_w")
        .filter(pl.col("_w").is_not_null())
        .with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).over("_row").alias("_pos"), pl.col("_w").hash(seed=11).alias("_h"))
        .drop("_w")
    )


def ngram_keys(texts: pl.Series, sizes: Iterable[int], whole_text_sizes: Iterable[int] = ()) -> pl.DataFrame:
    """(`_row`, `n`, `key`) for every n-gram of each size in `sizes` of every text; for sizes
    in `whole_text_sizes`, only texts of exactly that many words, keyed as one n-gram (the
    key equals the same words' n-gram key anywhere else, so a short eval item is found
    inside a longer text)."""
    sizes, whole = sorted(set(sizes)), sorted(set(whole_text_sizes))
    words = words_table(texts)
    out = []
    words = words.with_columns(pl.col("_h").alias("_key"))
    key = pl.col("_key")
    for n in range(1, max(sizes + whole, default=0) + 1):
        if n > 1:  # size n from size n-1: one multiply-add per word per size
            words = words.with_columns((key * pl.lit(_POLY, dtype=pl.UInt64) + pl.col("_h").shift(-(n - 1))).alias("_key"))
        if n in sizes or n in whole:
            valid = (pl.col("_pos") + n) <= pl.col("_nw")
            if n not in sizes:  # whole-text only
                valid = valid & (pl.col("_nw") == n) & (pl.col("_pos") == 0)
            out.append(words.select("_row", pl.lit(n, pl.UInt16).alias("n"), key.alias("key"), valid.alias("_v"))
                       .filter("_v").drop("_v"))
    if not out:
        return pl.DataFrame(schema={"_row": pl.UInt32, "n": pl.UInt16, "key": pl.UInt64})
    return pl.concat(out)


def word_counts(texts: pl.Series) -> pl.Series:
    return pl.DataFrame({"_t": texts.fill_null("")}).select(normalise(pl.col("_t")).str.count_matches(WORD_RE))["_t"]
