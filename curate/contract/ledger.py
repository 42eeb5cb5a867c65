"""The ledger: every input accounted for. For every run,

    read == kept + quarantined + sum(dropped[stage][reason])

where `kept` counts distinct records that reached the output. Rows a `mix` stage repeated
to upsample (column `repeat` > 0; the original is `repeat` 0) are not records read: they
are counted apart, under `upsampled` (per stage that added them) and `copies_dropped` (per
stage or render that dropped them), so that also

    rows in the output == kept + sum(upsampled) - sum(copies_dropped)

A record whose original row is dropped counts once in `dropped`, however many of its
copies went with it (they are all dropped together: every later decision is a function
of the row's content, which its copies share)."""
from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from curate.contract.atomic import write_parquet

# The columns a stage adds to say why it drops a row (and, optionally, a detail: which
# duplicate, which eval item); the runner moves them into rejects/.
REASON = "_reason"
DETAIL = "_detail"

REJECT_META = ("stage", "reason", "detail")


@dataclass
class Ledger:
    read: int = 0
    quarantined: int = 0
    kept: int = 0
    dropped: dict[str, dict[str, int]] = field(default_factory=dict)
    upsampled: dict[str, int] = field(default_factory=dict)
    copies_dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, stage: str, reasons: dict[str, int]) -> None:
        if reasons:
            bucket = self.dropped.setdefault(stage, {})
            for r, n in reasons.items():
                bucket[r] = bucket.get(r, 0) + int(n)

    @property
    def total_dropped(self) -> int:
        return sum(n for reasons in self.dropped.values() for n in reasons.values())

    @property
    def copies_kept(self) -> int:
        """Upsampled copies still in the output."""
        return sum(self.upsampled.values()) - sum(self.copies_dropped.values())

    def reconciles(self) -> bool:
        return self.read == self.kept + self.quarantined + self.total_dropped

    def as_dict(self) -> dict:
        return {
            "read": self.read,
            "quarantined": self.quarantined,
            "kept": self.kept,
            "dropped": {s: dict(sorted(r.items())) for s, r in self.dropped.items()},
            "upsampled": dict(self.upsampled),
            "copies_dropped": dict(self.copies_dropped),
            "reconciles": self.reconciles(),
        }


def reason_counts(dropped: pl.DataFrame) -> dict[str, int]:
    if dropped.height == 0:
        return {}
    counts = dropped.group_by(REASON).len().sort(REASON)
    return {str(r): int(n) for r, n in counts.iter_rows()}


def drop_counts(dropped: pl.DataFrame, reason_col: str = REASON) -> tuple[dict[str, int], int]:
    """(records dropped by reason, upsampled copies dropped) of a frame of dropped rows: a
    row with `repeat` > 0 is a copy, not a record."""
    if dropped.height == 0:
        return {}, 0
    if "repeat" in dropped.columns:
        is_copy = pl.col("repeat").fill_null(0) > 0
        copies = int(dropped.select(is_copy.sum()).item())
        records = dropped.filter(~is_copy)
    else:
        copies, records = 0, dropped
    if records.height == 0:
        return {}, copies
    counts = records.group_by(reason_col).len().sort(reason_col)
    return {str(r): int(n) for r, n in counts.iter_rows()}, copies


def reject_frame(stage: str, dropped: pl.DataFrame) -> pl.DataFrame:
    """A stage's dropped rows in the rejects layout: stage, reason, detail first (then id,
    source, task, origin and the other columns), `_reason`/`_detail` moved into them."""
    detail = pl.col(DETAIL).cast(pl.String) if DETAIL in dropped.columns else pl.lit(None, pl.String)
    out = dropped.with_columns(
        pl.lit(stage).alias("stage"),
        pl.col(REASON).cast(pl.String).alias("reason") if REASON in dropped.columns else pl.lit(None, pl.String).alias("reason"),
        detail.alias("detail"),
    ).drop([c for c in (REASON, DETAIL) if c in dropped.columns])
    front = [c for c in ("stage", "reason", "detail", "id", "source", "task", "origin") if c in out.columns]
    return out.select(front + [c for c in out.columns if c not in front])


def write_rejects(path, stage: str, dropped: pl.DataFrame) -> int:
    """Write a stage's dropped rows with stage, reason and detail columns. Always writes
    (an empty file too), so a resumed run finds the same files as an unbroken one."""
    out = reject_frame(stage, dropped)
    write_parquet(path, out)
    return out.height
