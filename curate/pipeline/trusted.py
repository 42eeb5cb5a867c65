"""`[[sources]]` with `trusted = true`: the run's two hooks.

`label(table, sources)` runs right after the read: it adds the `trusted` column
(`curate.stages.common.signal.trusted_labels`: the record's label, 1.0 good / 0.0 bad,
null for other sources), which every quality and select stage measures its AUC on.
`hold_out(table, sources, rd, ledger, manifest, log)` runs after the last stage, before
render: the trusted records left by then are dropped with reason `trusted_holdout`
(`rejects/trusted.parquet`, ledger stage `trusted`), unless their source says
`trusted_train = true`, so the ledger still reconciles (read = kept + dropped + quarantined).

Trade-off: the trusted records go through every stage like the pool's, so that they are
scored by the same scorers on the same columns (the point of validating). They also take
part in what compares records: a trusted record can win a dedup cluster or a consensus vote
over a pool copy of itself (which then leaves the shards with it), and a select/mix budget
counts them before they are held out. Keep the trusted set small next to the pool, or
disjoint from it (a decontaminate stage against it, or different prompts).
"""
from __future__ import annotations

import polars as pl

from curate.contract.ledger import DETAIL, REASON, drop_counts, write_rejects
from curate.stages.common.signal import trusted_labels

STAGE = "trusted"
REASON_HELD = "trusted_holdout"


def label(table: pl.DataFrame, sources) -> pl.DataFrame:
    """`table` with the `trusted` column when any source is trusted; unchanged otherwise."""
    col = trusted_labels(table, sources)
    return table if col is None else table.with_columns(col)


def hold_out(table: pl.DataFrame, sources, rd, ledger, manifest: dict, log) -> pl.DataFrame:
    """The rows that go on to render: all but the trusted validation-only records, which
    are written to rejects/trusted.parquet and counted as dropped in the ledger."""
    names = [s.name for s in sources if getattr(s, "trusted", False) and not getattr(s, "trusted_train", False)]
    if not names:
        return table
    mask = pl.col("source").is_in(names)
    held = table.filter(mask).with_columns(pl.lit(REASON_HELD).alias(REASON),
                                           pl.lit("a trusted = true source: validation only").alias(DETAIL))
    rel = f"rejects/{STAGE}.parquet"
    write_rejects(rd.own(rel), STAGE, held)
    records, copies = drop_counts(held, REASON)
    ledger.drop(STAGE, records)
    if copies:
        ledger.copies_dropped[STAGE] = copies
    manifest["trusted_holdout"] = {"sources": names, "rows": held.height, "rejects": rel}
    if held.height:
        log(f"[trusted] {held.height:,} trusted record(s) held out of the shards "
            "(validation only; trusted_train = true trains on them)")
    return table.filter(~mask)


def held_sources(sources) -> list[str]:
    """The trusted sources whose records are validation only (held out of the shards)."""
    return [s.name for s in sources if getattr(s, "trusted", False) and not getattr(s, "trusted_train", False)]


def hold_out_parts(parts, sources, rd, ledger, manifest: dict, log) -> int:
    """`hold_out` for a table given as parts (an iterable of frames): only the held rows
    are gathered (the trusted set is small next to the pool, see the module doc) and written
    as hold_out writes them (the same bytes); returns how many rows were held out. The
    caller leaves those rows out of what it renders (source in `held_sources`)."""
    names = held_sources(sources)
    mask = pl.col("source").is_in(names)
    held = [df.filter(mask) for df in parts]
    table = pl.concat(held, how="vertical_relaxed", rechunk=True) if len(held) > 1 else held[0]
    hold_out(table, sources, rd, ledger, manifest, log)
    return table.height
