"""`pii`: find e-mail addresses, phone numbers, IP addresses, credit-card numbers
(Luhn-checked), IBANs (mod-97-checked) and API-key-shaped secrets in message contents, and
redact them with typed placeholders (`<EMAIL>`, `<PHONE>`, ...), drop the rows, or only
flag them. Detection lives in curate/stages/pii/detectors.py.

Columns: `<stage>_<kind>` (matches per row) for each kind scanned. Manifest stats: matches
per kind, rows with any, and, when redacting, the number of rows rewritten.

Ids are NOT recomputed after redaction: the id is the record's join key through the run
(stage outputs, rejects, the 00-read table, the ledger), and redaction is a transformation
of a record, not a new one. A record must stay traceable to its origin; two records that
become identical only through redaction are still near-duplicates by content for `dedup`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import polars as pl

from curate.stages.pii import detectors as pii
from curate.contract.schema import POLARS_MESSAGES
from curate.stages.base import DETAIL, REASON, FilterStage, PartColumns, StageResult, sum_counts
from curate.contract.typed_config import ConfigError

ROLES = ("system", "user", "assistant", "tool")


@dataclass
class Config:
    kind: Literal["pii"]
    name: str | None = None
    action: Literal["redact", "drop", "flag"] = "redact"
    kinds: list[str] = field(default_factory=lambda: list(pii.KINDS))
    roles: list[str] = field(default_factory=lambda: list(ROLES))  # turns to scan
    placeholder: str = "<{KIND}>"  # {KIND} -> EMAIL, {kind} -> email
    # private/link-local IPv4 (10.x, 192.168.x, ...) are redacted too unless this is set
    keep_private_ips: bool = False

    def validate(self) -> None:
        for k in self.kinds:
            if k not in pii.KINDS:
                raise ConfigError("kinds", f"unknown kind {k!r} (known: {', '.join(pii.KINDS)})")
        if not self.kinds:
            raise ConfigError("kinds", "name at least one kind")
        for r in self.roles:
            if r not in ROLES:
                raise ConfigError("roles", f"unknown role {r!r} (known: {', '.join(ROLES)})")
        if "{KIND}" not in self.placeholder and "{kind}" not in self.placeholder:
            raise ConfigError("placeholder", "must contain {KIND} or {kind} so placeholders stay typed")


class PIIStage(FilterStage):
    kind = "pii"
    Config = Config

    def _scan(self, table: pl.DataFrame):
        """(row-level counts, redacted messages column) for the table."""
        cfg = self.config
        turns = (
            table.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_row"), "messages")
            .explode("messages")
            .with_columns(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_id"))
        )
        role = pl.col("messages").struct.field("role")
        content = pl.col("messages").struct.field("content")
        scanned = turns.filter(role.is_in(cfg.roles) & content.is_not_null()).select("_id", content.alias("_t"))
        found = pii.scan(scanned, cfg.kinds, cfg.placeholder, cfg.keep_private_ips)
        turns = turns.join(found, on="_id", how="left", maintain_order="left")
        counts_cols = [f"n_{k}" for k in cfg.kinds]
        per_row = turns.group_by("_row", maintain_order=True).agg(
            *[pl.col(c).fill_null(0).sum().cast(pl.Int32).alias(f"{self.name}_{k}") for c, k in zip(counts_cols, cfg.kinds)],
            pl.when(pl.col("messages").is_not_null())
            .then(pl.struct(role.alias("role"), pl.coalesce("_t", content).alias("content"),
                            pl.col("messages").struct.field("extra").alias("extra")))
            .drop_nulls().alias("_messages"),
        )
        return per_row.sort("_row")

    def annotate(self, table: pl.DataFrame) -> pl.DataFrame:
        per_row = self._scan(table)
        self._redacted = per_row["_messages"].cast(POLARS_MESSAGES)
        cols = [f"{self.name}_{k}" for k in self.config.kinds]
        frame = table.with_columns(per_row.select(cols))
        self._found = {k: int(frame[c].sum()) for k, c in zip(self.config.kinds, cols)}
        any_pii = pl.sum_horizontal(cols) > 0
        detail = pl.concat_str(
            [pl.when(pl.col(c) > 0).then(pl.format(f"{k}={{}}", pl.col(c))) for k, c in zip(self.config.kinds, cols)],
            separator=", ", ignore_nulls=True,
        )
        return frame.with_columns(
            pl.when(any_pii).then(pl.lit("pii")).alias(REASON),
            pl.when(any_pii).then(detail).alias(DETAIL),
        )

    def block_state(self) -> dict:
        return {"found": dict(self._found), "redacted": self._redacted}

    def merge_block_states(self, states: list[dict]) -> None:
        # matches per kind add up; the redacted messages are per row, so they concatenate
        # in block order (one chunk, as a whole-table scan gives)
        self._found = sum_counts([s["found"] for s in states])
        self._redacted = pl.concat([s["redacted"] for s in states], rechunk=True)

    def process(self, table: pl.DataFrame) -> StageResult:
        cfg = self.config
        if cfg.action in ("drop", "flag"):
            result = super().process(table)
            n_rows = result.stats["hits"].get("pii", 0)
        else:
            annotated = self._annotated(table)
            n_rows = int(annotated[REASON].is_not_null().sum())
            kept = annotated.with_columns(self._redacted.alias("messages")).drop(REASON, DETAIL)
            result = StageResult(kept=kept, dropped=annotated.clear(), stats={"hits": {}})
            result.stats["rows_redacted"] = n_rows
        result.stats["found"] = dict(self._found)
        result.stats["rows_with_pii"] = n_rows
        return result

    def statistics(self, parts: PartColumns) -> dict:
        """`process`'s stats from the parts' `_reason` column, counted part by part."""
        hits = parts.reason_counts()
        if self.config.action in ("drop", "flag"):
            stats, n_rows = {"hits": hits}, hits.get("pii", 0)
        else:
            n_rows = sum(hits.values())
            stats = {"hits": {}, "rows_redacted": n_rows}
        stats["found"] = dict(self._found)
        stats["rows_with_pii"] = n_rows
        return stats


STAGE = PIIStage
