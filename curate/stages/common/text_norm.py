"""Text normalisation for comparing texts (not for training data): column-wise polars
expressions that fold spellings that mean the same (Unicode compatibility forms, case,
punctuation, runs of whitespace) so that "Paris." and "paris" compare equal.

Used by stages that compare answers or prompts (consensus). Dedup's MinHash module has its
own copy of the same steps with the same meaning (curate/stages/dedup/minhash.py); both
follow this definition, so a prompt that consensus groups and exact dedup clusters are
the same text."""
from __future__ import annotations

from typing import Sequence

import polars as pl

STEPS = ("unicode", "case", "punctuation", "whitespace")


def normalized(expr: pl.Expr, steps: Sequence[str] = STEPS) -> pl.Expr:
    """`unicode` (NFKC), `case` (lower), `punctuation` (Unicode punctuation and symbols
    become spaces), `whitespace` (runs become one space, ends stripped), in that order."""
    if "unicode" in steps:
        expr = pl.when(expr.str.len_bytes() != expr.str.len_chars()).then(expr.str.normalize("NFKC")).otherwise(expr)
    if "case" in steps:
        expr = expr.str.to_lowercase()
    if "punctuation" in steps:
        expr = expr.str.replace_all(r"[\p{P}\p{S}]+", " ")
    if "whitespace" in steps:
        expr = expr.str.replace_all(r"\s+", " ").str.strip_chars()
    return expr
