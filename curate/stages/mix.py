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

The total: `total` when given (weights / temperature), else it follows `balance`:
  "downsample" (the default): the largest total for which no group needs more than
           `max_repeat` copies of its data. With one small group (a 30-key table beside
           a task of 1,000 rows) that cuts EVERY group to the small one's scale: most of
           the data is dropped (`mix_downsampled`), the shares are exact.
  "upsample": the smallest total at which every group's data is used whole (no row is
           dropped by the mix); a group below its share repeats its rows toward it, up to
           `max_repeat` copies, and beyond that falls short (reported under `shortfall`,
           `within_1pct` false). Trade-off: nothing is thrown away, but a small group's
           rows are seen many times (up to `max_repeat`), and its share is only as exact
           as `max_repeat` allows. Upsampling repeats rows (each
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

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import polars as pl

from curate.contract.schema import stable_keys
from curate.stages.base import (DETAIL, REASON, ROW_COL, Plan, PlannedStage, StageResult, decided_part,
                                 unknown_group_names)
from curate.contract.typed_config import ConfigError
from curate.contract.views import VIEWS, text_view

ROW = "__mix_row"
GROUP = "__mix_group"
UNITS = "__mix_units"
ORDER = "__mix_order"
VKEY = "__mix_vkey"
TASK = "__mix_task"
TASK_NULL = "__mix_task_null"
COPIES = "__mix_copies"  # output rows of an input row: its train copies, or 1 for a val row


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
    # without `total`: "downsample" cuts every group to the smallest one's scale, "upsample"
    # keeps every row and repeats small groups toward their share (up to max_repeat)
    balance: Literal["downsample", "upsample"] = "downsample"
    val_fraction: float = 0.05
    val_max: int | None = None
    token_view: str = "conversation"
    # a weights/targets name that no task (or source) read has: an error (true) or a warning
    strict: bool = True

    def check_data(self, names: dict[str, list[str]]) -> list[str]:
        """After reading: every group named in weights/targets exists (a typo would drop
        the whole task as `not_in_mix`)."""
        out = []
        for key, given in (("weights", self.weights), ("targets", self.targets)):
            msg = unknown_group_names(list(given), names.get(self.by, []), self.by, key)
            if msg and self.strict:
                raise ConfigError(key, msg + " (set strict = false to only warn)")
            if msg:
                out.append(msg)
        return out

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
        if self.balance != "downsample" and (self.targets or self.total is not None):
            raise ConfigError("balance", "only used without `targets` and `total` (they fix the amounts already)")
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


def count_tokens(texts: pl.Series, tokenizer_file: Path | None, batch_size: int = 1000) -> pl.Series:
    """Token counts per text: with the tokenizer in `tokenizer_file`, else whitespace words."""
    if tokenizer_file is None:
        return texts.fill_null("").str.count_matches(r"\S+").cast(pl.Int64)
    from tokenizers import Tokenizer

    if not tokenizer_file.is_file():
        raise ValueError(f"mix: unit = \"tokens\" needs a fast tokenizer (tokenizer.json) at {tokenizer_file}")
    tok = Tokenizer.from_file(str(tokenizer_file))
    counts: list[int] = []
    values = texts.fill_null("").to_list()
    for i in range(0, len(values), batch_size):
        counts += [len(e.ids) for e in tok.encode_batch(values[i:i + batch_size], add_special_tokens=False)]
    return pl.Series(counts, dtype=pl.Int64)


class MixStage(PlannedStage):
    """Planned from per-row keys (PlannedStage): each part gives its rows' group, task,
    size in units (tokens are counted here, part by part) and the two seeded order keys
    (~40 B a row plus the group and task strings, never text); `plan` works from those
    keys alone (sizes -> `_plan` -> the walk -> the val rows -> the walk again), reduces
    every decision to a per-group or per-task cutoff in a fixed order (`_cutoffs`), and
    gives every row its copies and split. `decisions` has one row per input row (every
    kept row gains `split` and `repeat`); `order` lists the output rows, (`_row`,
    `repeat`) ascending, so it holds one small row per output row, repeats included."""

    kind = "mix"
    Config = Config
    ROW = ROW

    def _tokenizer_file(self) -> Path | None:
        """The render tokenizer's tokenizer.json, which counts tokens (None: whitespace words)."""
        render = self.context.render
        tok = getattr(render, "tokenizer", None) if render is not None else None
        if not tok:
            return None
        p = self.context.resolve(tok)
        return p / "tokenizer.json" if p.is_dir() else p

    def _counted_with(self) -> str:
        """What counts the units: "examples", "whitespace" or the tokenizer file."""
        if self.config.unit == "examples":
            return "examples"
        file = self._tokenizer_file()
        return "whitespace" if file is None else str(file)

    def _units(self, table: pl.DataFrame) -> pl.Series:
        if self.config.unit == "examples":
            return pl.Series([1] * len(table), dtype=pl.Int64)
        texts = table.select(text_view(self.config.token_view)).to_series()
        return count_tokens(texts, self._tokenizer_file())

    def process(self, table: pl.DataFrame) -> StageResult:
        return self.process_planned(table)

    # ------------------------------------------------------------------ keys -> plan -> apply
    def keys(self, part: pl.DataFrame) -> pl.DataFrame:
        """Per row: group, task (and whether it was null), units and the two seeded order
        keys (the per-row work: token counts and hashes)."""
        c = self.config
        for col in ("repeat", "split"):
            if col in part.columns:
                raise ValueError(f"stage {self.name!r}: the table already has a {col!r} column (one mix stage per pipeline)")
        ids = part["id"].to_list()
        return part.select(
            pl.col(c.by).fill_null("").alias(GROUP), pl.col("task").fill_null("").alias(TASK),
            pl.col("task").is_null().alias(TASK_NULL), self._units(part).alias(UNITS),
            pl.Series(ORDER, stable_keys(ids, self.context.seed, "mix"), dtype=pl.UInt64),
            pl.Series(VKEY, stable_keys(ids, self.context.seed, "val"), dtype=pl.UInt64),
        )

    def plan(self, keys: pl.DataFrame) -> Plan:
        """Plan and walk once to see which rows the mix leaves over, pick the val rows
        (preferring those), then plan and walk again without them, so the train split
        alone has the requested proportions. Each walk and the val pick leave as
        cutoffs, from which every row's copies and split follow."""
        c = self.config
        t = keys.rename({ROW_COL: ROW}).rechunk()
        rows_per = {g: int(n) for g, n in t.group_by(GROUP).len().iter_rows()}
        listed = {g: 0 for g in (c.weights or c.targets) if g != "*"}  # named in the config, maybe absent
        shares1, targets, achievable, sizes = self._plan_for(t, groups=listed)
        walk1 = self._cutoffs(t, self._walk(t, achievable))
        val = self._val_cutoffs(t, walk1, shares1)
        shares, walk2 = shares1, walk1
        if val.height:
            pool = t.filter(~self._is_val(t, walk1, val, shares1))
            shares, targets, achievable, sizes = self._plan_for(pool, groups={**listed, **{g: 0 for g in sizes}})
            walk2 = self._cutoffs(pool, self._walk(pool, achievable))
        is_val = self._is_val(t, walk1, val, shares1)
        copies = pl.when(is_val).then(1).otherwise(self._train_copies(t, walk2))
        d = t.with_columns(is_val.alias("__val"), copies.alias(COPIES))
        kept_rows = pl.col(COPIES) > 0
        d = d.with_columns(
            pl.when(kept_rows).then(pl.lit(None, pl.String))
            .when(pl.col(GROUP).replace_strict(shares, default=0.0, return_dtype=pl.Float64) > 0)
            .then(pl.lit("mix_downsampled")).otherwise(pl.lit("not_in_mix")).alias(REASON),
            pl.when(kept_rows).then(pl.lit(None, pl.String)).otherwise(pl.format(
                "{} {}: target {} of {} {}", pl.lit(c.by), pl.col(GROUP),
                pl.col(GROUP).replace_strict(targets, default=0, return_dtype=pl.Int64),
                pl.col(GROUP).replace_strict(sizes, default=0, return_dtype=pl.Int64), pl.lit(c.unit))).alias(DETAIL),
            pl.when(pl.col("__val")).then(pl.lit("val")).when(kept_rows).then(pl.lit("train"))
            .otherwise(pl.lit(None, pl.String)).alias("split"),
        )
        out = (d.filter(kept_rows)
               .with_columns(pl.int_ranges(0, pl.col(COPIES), dtype=pl.Int32).alias("repeat")).explode("repeat"))
        stats = self._stats(out.with_columns(pl.when(pl.col(TASK_NULL)).then(None).otherwise(pl.col(TASK)).alias("task")),
                            shares, targets, achievable, sizes, rows_per, self._counted_with())
        if stats["shortfall"] and c.balance == "upsample":
            # the recipe's default for noisy multi-task data: a task this far below the others
            # is not balanced, and the run says so (the manifest has it under `shortfall`)
            short = ", ".join(f"{g} ({v['achievable']} of {v['target']})" for g, v in stats["shortfall"].items())
            self.context.log(f"WARNING {self.name}: below their share even at max_repeat = {c.max_repeat}: {short}")
        added = [pl.col(UNITS).alias(self.tokens_column())] if c.unit == "tokens" else []
        decisions = d.select(pl.col(ROW).alias(ROW_COL), REASON, DETAIL, *added, "split", COPIES)
        order = out.select(pl.col(ROW).alias(ROW_COL), "repeat")
        return Plan(decisions=decisions, stats=stats, order=order)

    def tokens_column(self) -> str:
        return f"{self.name}_tokens"

    def apply(self, part: pl.DataFrame, plan: Plan, first_row: int) -> StageResult:
        """Row-local given the plan: the part's kept rows, each as many times as its
        copies (`repeat` 0, 1, ...; val rows once), with `split` (and the token count
        when unit = "tokens"), in row order; the rows left out with their reason."""
        j = decided_part(part, plan, first_row)
        added = [self.tokens_column()] if self.config.unit == "tokens" else []
        kept = (j.filter(pl.col(REASON).is_null())
                .with_columns(pl.int_ranges(0, pl.col(COPIES), dtype=pl.Int32).alias("repeat")).explode("repeat")
                .select(*part.columns, *added, "repeat", "split"))
        dropped = j.filter(pl.col(REASON).is_not_null()).select(*part.columns, REASON, DETAIL)
        return StageResult(kept=kept, dropped=dropped, stats=plan.stats)

    # ------------------------------------------------------------------ cutoffs
    def _cutoffs(self, t: pl.DataFrame, walk: pl.DataFrame) -> pl.DataFrame:
        """Per group, the last (pass, order, row) the walk took. The walk takes a prefix
        of each group's (pass, order, row) sequence (the running midpoint it compares
        with the target never decreases), so this one key gives every row's copies."""
        return (walk.join(t.select(ROW, GROUP, ORDER), on=ROW)
                .sort(GROUP, "repeat", ORDER, ROW)
                .group_by(GROUP, maintain_order=True).last()
                .select(GROUP, pl.col("repeat").cast(pl.Int64).alias("__cp"), pl.col(ORDER).alias("__co"),
                        pl.col(ROW).alias("__cr")))

    @staticmethod
    def _train_copies(t: pl.DataFrame, cut: pl.DataFrame) -> pl.Series:
        """Copies of each row the walk with cutoffs `cut` takes: all passes before the
        cutoff's, plus the cutoff's own pass when the row is at or before it."""
        j = t.select(GROUP, ORDER, ROW, UNITS).join(cut, on=GROUP, how="left", maintain_order="left")
        o, r = pl.col(ORDER), pl.col(ROW)
        within = (o < pl.col("__co")) | ((o == pl.col("__co")) & (r <= pl.col("__cr")))
        copies = (pl.when(pl.col("__cr").is_null() | (pl.col(UNITS) <= 0)).then(0)
                  .otherwise(pl.col("__cp") + within.cast(pl.Int64)))
        return j.select(copies.cast(pl.Int64).alias("__copies")).to_series()

    def _val_cutoffs(self, t: pl.DataFrame, walk1: pl.DataFrame, shares: dict[str, float]) -> pl.DataFrame:
        """Per task, the last val row in the order (selected by the mix, val key, row):
        `val_fraction` of the task's selected rows (at most `val_max`, never all), taken
        first from rows the mix left over."""
        c = self.config
        schema = {TASK: pl.String, "__vs": pl.Boolean, "__vk": pl.UInt64, "__vr": t.schema[ROW]}
        if c.val_fraction <= 0:
            return pl.DataFrame(schema=schema)
        in_mix = t.filter(pl.col(GROUP).replace_strict(shares, default=0.0, return_dtype=pl.Float64) > 0)
        in_mix = in_mix.with_columns((self._train_copies(in_mix, walk1) > 0).alias("__sel"))
        per_task = in_mix.group_by(TASK).agg(pl.col("__sel").sum().alias("n_sel"))
        want = {task: min(round(c.val_fraction * n), c.val_max if c.val_max is not None else n, max(n - 1, 0))
                for task, n in per_task.iter_rows()}
        return (in_mix.sort(TASK, "__sel", VKEY, ROW)
                .with_columns(pl.int_range(pl.len()).over(TASK).alias("__vrank"))
                .filter(pl.col("__vrank") == pl.col(TASK).replace_strict(want, default=0, return_dtype=pl.Int64) - 1)
                .select(TASK, pl.col("__sel").alias("__vs"), pl.col(VKEY).alias("__vk"), pl.col(ROW).alias("__vr"))
                .sort(TASK).cast(schema))

    def _is_val(self, t: pl.DataFrame, walk1: pl.DataFrame, val: pl.DataFrame, shares: dict[str, float]) -> pl.Series:
        """Whether each row of `t` is a val row: in the mix, and at or before its task's
        val cutoff in the order (selected, val key, row)."""
        j = (t.select(GROUP, TASK, VKEY, ROW).with_columns((self._train_copies(t, walk1) > 0).alias("__sel"))
             .join(val, on=TASK, how="left", maintain_order="left"))
        s, k, r = pl.col("__sel"), pl.col(VKEY), pl.col(ROW)
        cs, ck, cr = pl.col("__vs"), pl.col("__vk"), pl.col("__vr")
        within = (~s & cs) | ((s == cs) & ((k < ck) | ((k == ck) & (r <= cr))))
        in_mix = pl.col(GROUP).replace_strict(shares, default=0.0, return_dtype=pl.Float64) > 0
        return j.select((in_mix & cr.is_not_null() & within).fill_null(False).alias("__val")).to_series()

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
        elif c.balance == "upsample":
            # the smallest total whose targets hold every group's data whole
            need = [(g, sizes[g] / p) for g, p in shares.items() if p > 0 and sizes[g] > 0]
            total = math.ceil(max(v for _g, v in need) - 1e-9) if need else 0
            while need and any(t < sizes[g] for g, t in apportion(total, shares).items() if shares[g] > 0):
                total += 1  # float rounding in the shares: at most a step or two
        else:
            # the largest total no group has to exceed its repeat cap for
            # (a listed group with no data cannot bound it: it is reported as a shortfall)
            bounds = [sizes[g] * c.max_repeat / p for g, p in shares.items() if p > 0 and sizes[g] > 0]
            total = math.floor(min(bounds) + 1e-9) if bounds else 0
        return shares, apportion(total, shares)

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
