"""`mix`: decide how much of each task (or source) goes into training, on purpose.

How much each group gets (exactly one way):
  weights  = {qa = 2, translation = 1, "*" = 1}   relative shares ("*": every unlisted group)
  targets  = {qa = 5000, "*" = 1000}              absolute amounts in `unit`
  neither: examples-proportional mixing with temperature, as FLAN / T5 do:
           share_g ∝ min(size_g, cap) ** (1 / temperature)
           (temperature 1 = proportional; larger = flatter; `cap` keeps a huge task from
           drowning the others).
A group with no weight/target (and no "*") is left out, each row dropped as `not_in_mix`.

`unit = "examples" | "tokens"`. Tokens are counted on the conversation text (message
contents, without the chat template's markup) with the [render] tokenizer's
`tokenizer.json`, batched through the Rust `tokenizers` library; with no tokenizer
configured they are whitespace-separated words. The stats name which was used.

The total: `total` when given (weights / temperature), else the largest total for which
no group needs more than `max_repeat` copies of its data. Upsampling repeats rows (each
copy keeps its `id`; the `repeat` column numbers the copies 0, 1, ...), never beyond
`max_repeat` times a group's data (default 1: no upsampling). When a group cannot reach its
target the stats say so under `shortfall`, and `within_1pct` is false.

Which rows: a deterministic shuffle per group (a stable hash of seed and id), taken in
order, whole passes over the data before any row repeats.

`split`: a `val` split stratified per task, `val_fraction` of the rows each task keeps
(at most `val_max` per task), taken first from rows the mix left over (so the train mix
stays exact), then from selected rows. Val rows are never repeated. The renderer uses the
`split` column when present.

Ledger: upsampling adds rows, so `stats["upsampled"]` gives how many; rows in = kept -
upsampled + dropped.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl

from curate.schema import stable_keys
from curate.stages.base import DETAIL, REASON, Stage, StageResult
from curate.typed_config import ConfigError
from curate.views import VIEWS, text_view

ROW = "__mix_row"
GROUP = "__mix_group"
UNITS = "__mix_units"
ORDER = "__mix_order"


@dataclass
class Config:
    kind: Literal["mix"]
    name: str | None = None
    by: Literal["task", "source"] = "task"
    weights: dict[str, float] = field(default_factory=dict)
    targets: dict[str, int] = field(default_factory=dict)
    unit: Literal["examples", "tokens"] = "examples"
    total: int | None = None
    temperature: float = 1.0
    cap: int | None = None
    max_repeat: float = 1.0
    val_fraction: float = 0.05
    val_max: int | None = None
    token_view: str = "conversation"

    def validate(self) -> None:
        if self.weights and self.targets:
            raise ConfigError("targets", "give either `weights` or `targets`, not both")
        for k, v in self.weights.items():
            if v < 0 or not math.isfinite(v):
                raise ConfigError(f"weights.{k}", f"must be a finite number >= 0, got {v}")
        if self.weights and sum(self.weights.values()) <= 0:
            raise ConfigError("weights", "at least one weight must be positive")
        for k, v in self.targets.items():
            if v < 0:
                raise ConfigError(f"targets.{k}", "must be >= 0")
        if self.targets and self.total is not None:
            raise ConfigError("total", "not used with `targets` (they are absolute already)")
        if self.temperature <= 0:
            raise ConfigError("temperature", "must be > 0")
        if self.cap is not None and self.cap < 1:
            raise ConfigError("cap", "must be >= 1")
        if self.total is not None and self.total < 0:
            raise ConfigError("total", "must be >= 0")
        if self.max_repeat < 1.0:
            raise ConfigError("max_repeat", "must be >= 1 (1 = no upsampling)")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError("val_fraction", "must be in [0, 1)")
        if self.token_view not in VIEWS:
            raise ConfigError("token_view", f"must be one of {', '.join(VIEWS)}")


def apportion(total: int, shares: dict[str, float]) -> dict[str, int]:
    """Largest-remainder rounding: integers that sum to `total` exactly."""
    s = sum(shares.values())
    if s <= 0 or total <= 0:
        return {g: 0 for g in shares}
    raw = {g: total * p / s for g, p in shares.items()}
    out = {g: math.floor(v) for g, v in raw.items()}
    left = total - sum(out.values())
    for g in sorted(raw, key=lambda g: (-(raw[g] - out[g]), g))[:left]:
        out[g] += 1
    return out


def count_tokens(texts: pl.Series, tokenizer_path: Path | None, batch_size: int = 1000) -> tuple[pl.Series, str]:
    """Token counts per text, and what counted them."""
    if tokenizer_path is None:
        return texts.fill_null("").str.count_matches(r"\S+").cast(pl.Int64), "whitespace"
    from tokenizers import Tokenizer

    p = Path(tokenizer_path)
    file = p / "tokenizer.json" if p.is_dir() else p
    if not file.is_file():
        raise ValueError(f"mix: unit = \"tokens\" needs a fast tokenizer (tokenizer.json) at {p}")
    tok = Tokenizer.from_file(str(file))
    counts: list[int] = []
    values = texts.fill_null("").to_list()
    for i in range(0, len(values), batch_size):
        counts += [len(e.ids) for e in tok.encode_batch(values[i:i + batch_size], add_special_tokens=False)]
    return pl.Series(counts, dtype=pl.Int64), str(file)


class MixStage(Stage):
    kind = "mix"
    Config = Config

    def _units(self, table: pl.DataFrame) -> tuple[pl.Series, str]:
        if self.config.unit == "examples":
            return pl.Series([1] * len(table), dtype=pl.Int64), "examples"
        render = self.context.render
        tok = getattr(render, "tokenizer", None) if render is not None else None
        texts = table.select(text_view(self.config.token_view)).to_series()
        return count_tokens(texts, self.context.resolve(tok) if tok else None)

    def _plan(self, sizes: dict[str, int]) -> tuple[dict[str, float], dict[str, int]]:
        """Requested share and target (in units) per group."""
        c = self.config
        groups = sorted(sizes)
        if c.targets:
            targets = {g: c.targets.get(g, c.targets.get("*", 0)) for g in groups}
            tot = sum(targets.values())
            return {g: (targets[g] / tot if tot else 0.0) for g in groups}, targets
        if c.weights:
            w = {g: c.weights.get(g, c.weights.get("*", 0.0)) for g in groups}
        else:
            w = {g: float(min(sizes[g], c.cap) if c.cap else sizes[g]) ** (1.0 / c.temperature) for g in groups}
        s = sum(w.values())
        shares = {g: (w[g] / s if s else 0.0) for g in groups}
        if c.total is not None:
            total = c.total
        else:
            # the largest total no group has to exceed its repeat cap for
            # (a listed group with no data cannot bound it: it is reported as a shortfall)
            bounds = [sizes[g] * c.max_repeat / p for g, p in shares.items() if p > 0 and sizes[g] > 0]
            total = math.floor(min(bounds) + 1e-9) if bounds else 0
        return shares, apportion(total, shares)

    def process(self, table: pl.DataFrame) -> StageResult:
        c = self.config
        for col in ("repeat", "split"):
            if col in table.columns:
                raise ValueError(f"stage {self.name!r}: the table already has a {col!r} column (one mix stage per pipeline)")
        units, counted_with = self._units(table)
        t = table.with_row_index(ROW).with_columns(
            pl.col(c.by).fill_null("").alias(GROUP),
            units.alias(UNITS),
            pl.Series(ORDER, stable_keys(table["id"].to_list(), self.context.seed, "mix"), dtype=pl.UInt64),
        )
        rows_per = {g: int(n) for g, n in t.group_by(GROUP).len().iter_rows()}
        # Plan and walk once to see which rows the mix leaves over, pick the val rows
        # (preferring those), then plan and walk again without them, so the train split
        # alone has the requested proportions.
        listed = {g: 0 for g in (c.weights or c.targets) if g != "*"}  # named in the config, maybe absent
        shares, targets, achievable, sizes = self._plan_for(t, groups=listed)
        walk = self._walk(t, achievable)
        val_rows = self._val_rows(t, walk.filter(pl.col("repeat") == 0)[ROW], shares)
        pool = t.filter(~pl.col(ROW).is_in(val_rows.implode()))
        if len(val_rows):
            shares, targets, achievable, sizes = self._plan_for(pool, groups={**listed, **{g: 0 for g in sizes}})
            walk = self._walk(pool, achievable)
        train = t.join(walk, on=ROW, how="inner").with_columns(pl.lit("train").alias("split"))
        val = t.filter(pl.col(ROW).is_in(val_rows.implode())).with_columns(
            pl.lit(0, pl.Int32).alias("repeat"), pl.lit("val").alias("split"))
        kept_all = pl.concat([train, val], how="vertical_relaxed").sort(ROW, "repeat")
        used = kept_all[ROW].unique()
        dropped = t.filter(~pl.col(ROW).is_in(used.implode())).with_columns(
            pl.when(pl.col(GROUP).replace_strict(shares, default=0.0, return_dtype=pl.Float64) > 0)
            .then(pl.lit("mix_downsampled")).otherwise(pl.lit("not_in_mix")).alias(REASON),
            pl.format("{} {}: target {} of {} {}", pl.lit(c.by), pl.col(GROUP),
                      pl.col(GROUP).replace_strict(targets, default=0, return_dtype=pl.Int64),
                      pl.col(GROUP).replace_strict(sizes, default=0, return_dtype=pl.Int64), pl.lit(c.unit)).alias(DETAIL),
        )
        stats = self._stats(kept_all, shares, targets, achievable, sizes, rows_per, counted_with)
        extra = [ROW, GROUP, ORDER] + ([] if c.unit == "tokens" else [UNITS])
        kept = kept_all.drop(extra)
        if c.unit == "tokens":
            kept = kept.rename({UNITS: f"{self.name}_tokens"})
        return StageResult(kept=kept, dropped=dropped.drop(ROW, GROUP, UNITS, ORDER), stats=stats)

    def _plan_for(self, t: pl.DataFrame, groups: dict | None = None):
        sizes = {g: 0 for g in (groups or {})}
        sizes.update({g: int(n) for g, n in t.group_by(GROUP).agg(pl.col(UNITS).sum()).iter_rows()})
        shares, targets = self._plan(sizes)
        achievable = {g: min(targets[g], math.floor(sizes[g] * self.config.max_repeat + 1e-9)) for g in sizes}
        return shares, targets, achievable, sizes

    def _walk(self, t: pl.DataFrame, achievable: dict[str, int]) -> pl.DataFrame:
        """(row, repeat) pairs taken: passes over each group's shuffled rows; a (row, pass)
        is taken while the running total, counting half of the row itself, stays under
        the group's target: the prefix whose size is nearest the target."""
        passes = max(1, math.ceil(self.config.max_repeat))
        plan = pl.DataFrame({GROUP: list(achievable), "__target": list(achievable.values())},
                            schema={GROUP: pl.String, "__target": pl.Int64})
        return (
            t.select(ROW, GROUP, UNITS, ORDER)
            .join(pl.DataFrame({"repeat": list(range(passes))}, schema={"repeat": pl.Int32}), how="cross")
            .sort(GROUP, "repeat", ORDER, ROW)
            .with_columns(pl.col(UNITS).cum_sum().over(GROUP).alias("__cum"))
            .join(plan, on=GROUP, how="left")
            .filter((pl.col("__cum").cast(pl.Float64) - pl.col(UNITS) / 2) < pl.col("__target"))
            .filter(pl.col(UNITS) > 0)
            .select(ROW, "repeat")
        )

    def _val_rows(self, t: pl.DataFrame, selected: pl.Series, shares: dict[str, float]) -> pl.Series:
        c = self.config
        if c.val_fraction <= 0:
            return pl.Series(ROW, [], dtype=t[ROW].dtype)
        in_mix = t.filter(pl.col(GROUP).replace_strict(shares, default=0.0, return_dtype=pl.Float64) > 0)
        is_sel = pl.col(ROW).is_in(selected.implode())
        per_task = in_mix.group_by("task").agg(is_sel.sum().alias("n_sel"))
        want = {task: min(round(c.val_fraction * n), c.val_max if c.val_max is not None else n, max(n - 1, 0))
                for task, n in per_task.iter_rows()}
        cand = (in_mix.with_columns(is_sel.alias("__sel"),
                                    pl.Series(stable_keys(in_mix["id"].to_list(), self.context.seed, "val"))
                                    .alias("__vkey"))
                .sort("task", "__sel", "__vkey", ROW)
                .with_columns(pl.int_range(pl.len()).over("task").alias("__vrank")))
        limit = pl.col("task").replace_strict(want, default=0, return_dtype=pl.Int64)
        return cand.filter(pl.col("__vrank") < limit)[ROW]

    def _stats(self, kept, shares, targets, achievable, sizes, rows_per, counted_with) -> dict:
        c = self.config
        train = kept.filter(pl.col("split") == "train")
        agg = {g: (int(u), int(n), int(uq), int(r)) for g, u, n, uq, r in train.group_by(GROUP).agg(
            pl.col(UNITS).sum(), pl.len(), pl.col(ROW).n_unique(), (pl.col("repeat") > 0).sum()).iter_rows()}
        total_units = sum(v[0] for v in agg.values())
        requested, achieved, shortfall = {}, {}, {}
        max_err = 0.0
        for g in sorted(sizes):
            u, n, uq, r = agg.get(g, (0, 0, 0, 0))
            share = u / total_units if total_units else 0.0
            max_err = max(max_err, abs(share - shares[g]))
            requested[g] = {"share": round(shares[g], 6), "target": targets[g], "available": sizes[g]}
            achieved[g] = {"share": round(share, 6), c.unit: u, "examples": n, "unique": uq, "repeated": r}
            if achievable[g] < targets[g]:
                shortfall[g] = {"target": targets[g], "achievable": achievable[g], "available": sizes[g],
                                "why": f"only {sizes[g]} {c.unit} and max_repeat = {c.max_repeat}"}
        val = kept.filter(pl.col("split") == "val").group_by("task").len().sort("task")
        upsampled = int((kept["repeat"] > 0).sum())
        return {
            "by": c.by,
            "unit": c.unit,
            "counted_with": counted_with,
            "mode": "targets" if c.targets else "weights" if c.weights else "temperature",
            "temperature": c.temperature if not (c.targets or c.weights) else None,
            "cap": c.cap,
            "max_repeat": c.max_repeat,
            "requested": requested,
            "achieved": achieved,
            "train_total": total_units,
            "max_share_error": round(max_err, 6),
            "within_1pct": max_err <= 0.01 and not shortfall,
            "shortfall": shortfall,
            "upsampled": upsampled,
            "val": {task: int(n) for task, n in val.iter_rows()},
            "rows_in": dict(sorted(rows_per.items())),
        }


STAGE = MixStage
