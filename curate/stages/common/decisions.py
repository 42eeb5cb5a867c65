"""From a filter stage's checks to its decision columns, evaluating each check once.

A check is (key, reason, fail, detail): `fail` a Boolean expression (null counts as
false), `detail` a String expression saying why. The decision of a row is its first
failing check in list order: `_reason` is that check's reason, `_detail` its detail, and
(optionally) a list column names every failing check's key.

Cost: the fail expressions are materialised once as Boolean columns and everything else
reads those. The details (pl.format of rounded statistics, one per check) are computed
only on the rows that fail something, usually a few percent: built for every row, as a
`coalesce(when(fail).then(detail))` over the whole table does, they cost more than the
checks themselves. Every expression here is row-wise, so a subset gives the same values
as the whole table.
"""
from __future__ import annotations

import polars as pl

from curate.contract.ledger import DETAIL, REASON

_ROW = "__decide_row"


def decide_checks(frame: pl.DataFrame, checks: list[tuple[str, str, pl.Expr, pl.Expr]],
                  failed_col: str | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(frame with `_reason`, `_detail` and, when `failed_col` is given, the list of
    failing check keys appended in that order; the fail columns, one Boolean per check,
    named `0`, `1`, ... in check order)."""
    names = [str(i) for i in range(len(checks))]
    if not checks:
        out = frame.with_columns(pl.lit(None, pl.String).alias(REASON), pl.lit(None, pl.String).alias(DETAIL))
        if failed_col is not None:
            out = out.with_columns(pl.lit([], pl.List(pl.String)).alias(failed_col))
        return out, pl.DataFrame()
    fails = frame.select([f.fill_null(False).alias(n) for (_, _, f, _), n in zip(checks, names)])
    reason = fails.select(
        pl.coalesce([pl.when(pl.col(n)).then(pl.lit(r)) for (_, r, _, _), n in zip(checks, names)])
        .cast(pl.String).alias(REASON))[REASON]
    failing = reason.is_not_null()
    sub = frame.with_columns(fails.rename({n: f"__fail_{n}" for n in names})).with_row_index(_ROW).filter(failing)
    cols = [pl.coalesce([pl.when(pl.col(f"__fail_{n}")).then(d) for (_, _, _, d), n in zip(checks, names)])
            .cast(pl.String).alias(DETAIL)]
    if failed_col is not None:
        cols.append(pl.concat_list([pl.when(pl.col(f"__fail_{n}")).then(pl.lit(k)) for (k, _, _, _), n in zip(checks, names)])
                    .list.drop_nulls().alias(failed_col))
    decided = sub.select(_ROW, *cols)
    out = frame.with_row_index(_ROW).with_columns(reason).join(decided, on=_ROW, how="left", maintain_order="left")
    if failed_col is not None:
        out = out.with_columns(pl.col(failed_col).fill_null(pl.lit([], pl.List(pl.String))))
    return out.drop(_ROW), fails
