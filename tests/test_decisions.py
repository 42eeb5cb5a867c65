"""curate.stages.common.decisions: the decision columns equal the direct whole-table
expressions (coalesce of when(fail).then(...)) on every row, with nulls, unicode, empty
strings, no failing row and every row failing."""
from __future__ import annotations

import polars as pl
from polars.testing import assert_frame_equal

from curate.contract.ledger import DETAIL, REASON
from curate.stages.common.decisions import decide_checks


def _direct(frame, checks, failed_col):
    fails = [f.fill_null(False) for _, _, f, _ in checks]
    out = frame.with_columns(
        pl.coalesce([pl.when(f).then(pl.lit(r)) for f, (_, r, _, _) in zip(fails, checks)]).cast(pl.String).alias(REASON),
        pl.coalesce([pl.when(f).then(d) for f, (_, _, _, d) in zip(fails, checks)]).cast(pl.String).alias(DETAIL),
    )
    if failed_col:
        out = out.with_columns(pl.concat_list([pl.when(f).then(pl.lit(k)) for f, (k, _, _, _) in zip(fails, checks)])
                               .list.drop_nulls().alias(failed_col))
    return out


FRAME = pl.DataFrame({
    "t": ["", "héllo wörld", None, "今天你吃饭了吗？", "a" * 50, "🙂 emoji", "plain", "x\ny"],
    "x": [0.0, 1.5, None, 3.25, 10.0, -1.0, 0.5, 2.0],
})
CHECKS = [
    ("too_short", "short", pl.col("t").str.len_chars() < 3, pl.format("chars={}", pl.col("t").str.len_chars())),
    ("high_x", "x", pl.col("x") > 1.0, pl.format("x={} > 1", pl.col("x").round(2).cast(pl.String))),
    ("has_unicode", "unicode", pl.col("t").str.contains(r"[^\x00-\x7F]"), pl.col("t").str.slice(0, 3)),
    ("high_x_again", "x", pl.col("x") > 3.0, pl.lit(None, pl.String)),  # a null detail stays null
]


def test_equals_direct_expressions():
    for failed in (None, "failed"):
        got, fails = decide_checks(FRAME, CHECKS, failed)
        assert_frame_equal(got, _direct(FRAME, CHECKS, failed))
        assert fails.width == len(CHECKS) and fails.height == FRAME.height
        assert fails.sum().row(0) == tuple(int(FRAME.select(f.fill_null(False).sum()).item()) for _, _, f, _ in CHECKS)


def test_no_row_fails_and_every_row_fails():
    never = [("k", "r", pl.lit(False) & pl.col("x").is_not_null(), pl.lit("d"))]
    got, _ = decide_checks(FRAME, never, "failed")
    assert_frame_equal(got, _direct(FRAME, never, "failed"))
    assert got[REASON].null_count() == FRAME.height and got["failed"].list.len().sum() == 0
    always = [("k", "r", pl.col("x").is_null() | pl.col("x").is_not_null(), pl.format("t={}", pl.col("t")))]
    got, _ = decide_checks(FRAME, always, "failed")
    assert_frame_equal(got, _direct(FRAME, always, "failed"))


def test_no_checks_and_empty_frame():
    got, fails = decide_checks(FRAME, [], "failed")
    assert got[REASON].null_count() == FRAME.height and got.columns[-3:] == [REASON, DETAIL, "failed"]
    empty = FRAME.clear()
    got, _ = decide_checks(empty, CHECKS, "failed")
    assert_frame_equal(got, _direct(empty, CHECKS, "failed"))
