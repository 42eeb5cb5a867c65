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

import numpy as np
import polars as pl

from curate.contract.schema import stable_keys_array
from curate.stages.base import (DETAIL, REASON, ROW_COL, Plan, PlannedStage, StageResult, decided_part, group_codes,
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


class MixPlan(Plan):
    """mix's Plan: `decisions` (sparse, see MixStage) plus, per group, its drop detail
    (`details`: group name -> "<by> <group>: target T of S <unit>"), looked up when a part
    is applied instead of a formatted string held for every row."""

    def __init__(self, decisions: pl.DataFrame, stats: dict, details: dict[str, str]):
        super().__init__(decisions=decisions, stats=stats, order=None)
        self.details = details


# decision codes (`__mix_code`, UInt8): a row absent from `decisions` is TRAIN with 1 copy
TRAIN, VAL, DOWNSAMPLED, NOT_IN_MIX = 0, 1, 2, 3
CODE = "__mix_code"
DROP_REASONS = {DOWNSAMPLED: "mix_downsampled", NOT_IN_MIX: "not_in_mix"}


def group_sums(codes: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    """Per code, the sum of `values` (int64, exact: no float weights)."""
    out = np.zeros(k, dtype=np.int64)
    np.add.at(out, codes, values.astype(np.int64, copy=False))
    return out


class MixStage(PlannedStage):
    """Planned from per-row keys (PlannedStage): each part gives its rows' group and task
    (Categorical: 4 B a row each; by = "task" the group only), whether the task was null, the size in units (tokens
    are counted here, part by part) and the two seeded order keys (u64), never text.
    `plan` works on numpy arrays of those keys: the groups and tasks as dense int32 codes
    with a small code -> name table, each walk a sort of the rows by (group, order key)
    (`np.lexsort`, stable: ties by row) and a vectorised count of the passes each row is
    taken in, the val pick a sort by (task, selected, val key). No per-row string, join or
    cross join; where every row takes part (the first walk, the val pick when every group
    is in the mix) the key columns are sorted as they are, with no gathered copies: ~30-55 B
    a row above the keys at its peak (benchmarks/keys_plan_memory.py and docs/performance.md;
    before issue #19, ~350 B a row of string keys, sorts, joins and a per-row detail string).

    `decisions` is sparse: the rows that are not "train, one copy" (val rows, repeated
    rows, dropped rows with a UInt8 code for the reason) - or every row when unit =
    "tokens", whose count is an added column; a dropped row's `_detail` comes from the
    plan's per-group table (MixPlan.details) when its part is applied. `order` is None:
    `apply` emits each kept row's copies together (`repeat` 0, 1, ...) in row order,
    which is the output order."""

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
        """Per row: group and task (Categorical; the task only when the mix is not by task),
        whether the task was null, units
        (UInt32) and the two seeded order keys (the per-row work: token counts, hashes)."""
        c = self.config
        for col in ("repeat", "split"):
            if col in part.columns:
                raise ValueError(f"stage {self.name!r}: the table already has a {col!r} column (one mix stage per pipeline)")
        ids = part["id"].to_list()
        # by = "task": the group is the task (no second code column: 4 B a row less)
        task = [] if c.by == "task" else [pl.col("task").fill_null("").cast(pl.Categorical).alias(TASK)]
        return part.select(
            pl.col(c.by).fill_null("").cast(pl.Categorical).alias(GROUP), *task,
            pl.col("task").is_null().alias(TASK_NULL), self._units(part).cast(pl.UInt32, strict=True).alias(UNITS),
            pl.Series(ORDER, stable_keys_array(ids, self.context.seed, "mix"), dtype=pl.UInt64),
            pl.Series(VKEY, stable_keys_array(ids, self.context.seed, "val"), dtype=pl.UInt64),
        )

    def plan(self, keys: pl.DataFrame) -> Plan:
        """Plan and walk once to see which rows the mix leaves over, pick the val rows
        (preferring those), then plan and walk again without them, so the train split
        alone has the requested proportions. Each walk gives every row its number of
        copies directly (`_copies`), the val pick its val rows (`_val_rows`)."""
        c = self.config
        rows = keys[ROW_COL]
        if keys.height and not bool(rows.is_sorted()):
            raise RuntimeError(f"stage {self.name!r}: keys must come in row order")
        g, gnames = group_codes(keys[GROUP])
        units = keys[UNITS].to_numpy()
        order = keys[ORDER].to_numpy()
        k = len(gnames)
        rows_per = dict(zip(gnames, np.bincount(g, minlength=k).tolist()))
        listed = {name: 0 for name in (c.weights or c.targets) if name != "*"}  # named in the config, maybe absent
        totals = group_sums(g, units, k)
        shares1, targets, achievable, sizes = self._plan_for(gnames, totals, listed)
        copies1 = self._copies(g, order, units, None, self._by_code(achievable, gnames, 0))
        share_pos1 = self._by_code(shares1, gnames, 0.0) > 0
        is_val = self._val_rows(keys, g, share_pos1, copies1 > 0)
        shares = shares1
        copies = copies1
        if is_val is not None:
            del copies1
            pool = ~is_val
            shares, targets, achievable, sizes = self._plan_for(
                gnames, group_sums(g[pool], units[pool], k), {**listed, **{name: 0 for name in sizes}})
            copies = self._copies(g, order, units, pool, self._by_code(achievable, gnames, 0))
            copies[is_val] = 1
        else:
            is_val = np.zeros(len(g), dtype=bool)
        share_pos = self._by_code(shares, gnames, 0.0) > 0
        code = np.where(copies > 0, np.where(is_val, VAL, TRAIN),
                        np.where(share_pos[g], DOWNSAMPLED, NOT_IN_MIX)).astype(np.uint8)
        stats = self._stats(keys, g, gnames, units, copies, is_val, shares, targets, achievable, sizes, rows_per)
        if stats["shortfall"] and c.balance == "upsample":
            # the recipe's default for noisy multi-task data: a task this far below the others
            # is not balanced, and the run says so (the manifest has it under `shortfall`)
            short = ", ".join(f"{name} ({v['achievable']} of {v['target']})" for name, v in stats["shortfall"].items())
            self.context.log(f"WARNING {self.name}: below their share even at max_repeat = {c.max_repeat}: {short}")
        cols = {ROW_COL: rows, CODE: pl.Series(CODE, code, dtype=pl.UInt8),
                COPIES: pl.Series(COPIES, copies, dtype=pl.Int32)}
        if c.unit == "tokens":  # the count is an added column: every row has a decision
            cols[UNITS] = keys[UNITS]
            decisions = pl.DataFrame(cols)
        else:
            decisions = pl.DataFrame(cols).filter((pl.col(CODE) != TRAIN) | (pl.col(COPIES) != 1))
        details = {name: f"{c.by} {name}: target {targets.get(name, 0)} of {sizes.get(name, 0)} {c.unit}"
                   for name in gnames}
        return MixPlan(decisions=decisions, stats=stats, details=details)

    @staticmethod
    def _by_code(values: dict, names: list[str], default) -> np.ndarray:
        return np.asarray([values.get(name, default) for name in names] or [default])

    def tokens_column(self) -> str:
        return f"{self.name}_tokens"

    def apply(self, part: pl.DataFrame, plan: Plan, first_row: int) -> StageResult:
        """Row-local given the plan: the part's kept rows, each as many times as its
        copies (`repeat` 0, 1, ...; val rows once), with `split` (and the token count
        when unit = "tokens"), in row order; the rows left out with their reason and
        their group's detail."""
        j = decided_part(part, plan, first_row)
        code = pl.col(CODE).fill_null(TRAIN)
        added = [pl.col(UNITS).cast(pl.Int64).alias(self.tokens_column())] if self.config.unit == "tokens" else []
        kept = (j.filter(code <= VAL)
                .with_columns(pl.int_ranges(0, pl.col(COPIES).fill_null(1), dtype=pl.Int32).alias("repeat"),
                              pl.when(code == VAL).then(pl.lit("val")).otherwise(pl.lit("train")).alias("split"))
                .explode("repeat")
                .select(*part.columns, *added, "repeat", "split"))
        details = getattr(plan, "details", {})
        dropped = (j.filter(code > VAL)
                   .with_columns(pl.col(CODE).replace_strict(DROP_REASONS, return_dtype=pl.String).alias(REASON),
                                 pl.col(self.config.by).fill_null("")
                                 .replace_strict(details, default=None, return_dtype=pl.String).alias(DETAIL))
                   .select(*part.columns, REASON, DETAIL))
        return StageResult(kept=kept, dropped=dropped, stats=plan.stats)

    # ------------------------------------------------------------------ the walk, the val rows
    def _copies(self, g: np.ndarray, order: np.ndarray, units: np.ndarray, mask: np.ndarray | None,
                target: np.ndarray) -> np.ndarray:
        """Copies of each row the walk takes (int32; 0 outside `mask`): passes over each
        group's rows in (order key, row) order; in pass p a row is taken while the running
        total of its group, counting half of the row itself, stays under the group's
        target: `float(p * T_g + cum) - units / 2 < target` (T_g: the group's units in the
        walked rows; cum: the running total within the pass, the row included), rows of 0
        units never. The same float comparison as the sequential walk, row by row and
        pass by pass (the running midpoint never decreases, so each group takes a prefix
        of its (pass, order, row) sequence)."""
        passes = max(1, math.ceil(self.config.max_repeat))
        n = len(g)
        out = np.zeros(n, dtype=np.int32)
        # memory (issue #19): without a mask the key columns are sorted as they are (no
        # gathered copies, the permutation is the sequence); units stay u32 beside an
        # int64 running total; the group codes of the sequence go once its runs are known
        if mask is None:
            if not n:
                return out
            seq = np.lexsort((order, g))  # stable: ties of the order key by row
        else:
            idx = np.flatnonzero(mask)
            if not len(idx):
                return out
            perm = np.lexsort((order[idx], g[idx]))
            seq = idx[perm]
            del idx, perm
        gs = g[seq]
        starts = np.flatnonzero(np.r_[True, gs[1:] != gs[:-1]])
        run_codes = gs[starts]
        del gs
        u = units[seq]
        cum = np.cumsum(u, dtype=np.int64)
        ends = np.r_[starts[1:], len(seq)]
        for a, b, code in zip(starts.tolist(), ends.tolist(), run_codes.tolist()):
            cg = cum[a:b] - (cum[a - 1] if a else 0)
            ug = u[a:b].astype(np.int64)
            total = int(cg[-1])
            tgt = target[code]
            half = ug / 2
            alive = ug > 0
            got = np.zeros(b - a, dtype=np.int32)
            for p in range(passes):
                take = alive & ((cg + p * total).astype(np.float64) - half < tgt)
                if not take.any():
                    break
                got += take
            out[seq[a:b]] = got
        return out

    def _val_rows(self, keys: pl.DataFrame, g: np.ndarray, share_pos: np.ndarray, selected: np.ndarray):
        """The val rows (bool per row; None when val_fraction = 0): per task, the first
        `val_fraction` of its selected rows (at most `val_max`, never all) of the rows in
        the mix, in the order (selected, val key, row): rows the mix left over first."""
        c = self.config
        if c.val_fraction <= 0:
            return None
        if TASK in keys.columns:
            t, n_tasks = group_codes(keys[TASK])[0], None
        else:  # by task: the task codes are the group codes
            t, n_tasks = g, int(g.max()) + 1 if len(g) else 0
        n_tasks = n_tasks if n_tasks is not None else (int(t.max()) + 1 if len(t) else 0)
        mixed = share_pos[g]
        is_val = np.zeros(len(g), dtype=bool)
        if not len(g):
            return is_val
        if mixed.all():  # every group in the mix (the usual case): the columns as they are, no gathers
            in_mix, ti, si, vk = None, t, selected, keys[VKEY].to_numpy()
        else:
            in_mix = np.flatnonzero(mixed)
            if not len(in_mix):
                return is_val
            ti, si, vk = t[in_mix], selected[in_mix], keys[VKEY].to_numpy()[in_mix]
        del mixed, t
        n_sel = np.bincount(ti[si], minlength=n_tasks)
        want = np.asarray([min(round(c.val_fraction * n), c.val_max if c.val_max is not None else n, max(n - 1, 0))
                           for n in n_sel.tolist()], dtype=np.int64)
        perm = np.lexsort((vk, si, ti))
        del vk
        del si
        ts = ti[perm]
        del ti
        starts = np.flatnonzero(np.r_[True, ts[1:] != ts[:-1]])
        firsts = ts[starts]
        del ts
        # each task's first `want` rows of its run (no per-row rank arrays)
        take = [perm[a:a + int(want[t])] for a, t in zip(starts.tolist(), firsts.tolist()) if want[t] > 0]
        if take:
            pick = np.concatenate(take)
            is_val[pick if in_mix is None else in_mix[pick]] = True
        return is_val

    def _plan_for(self, names: list[str], totals: np.ndarray, groups: dict):
        sizes = {name: 0 for name in groups}
        sizes.update({name: int(v) for name, v in zip(names, totals.tolist())})
        shares, targets = self._plan(sizes)
        achievable = {name: min(targets[name], math.floor(sizes[name] * self.config.max_repeat + 1e-9)) for name in sizes}
        return shares, targets, achievable, sizes

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

    def _stats(self, keys, g, gnames, units, copies, is_val, shares, targets, achievable, sizes, rows_per) -> dict:
        c = self.config
        k = len(gnames)
        train = (copies > 0) & ~is_val
        gt, ct = g[train], copies[train].astype(np.int64)
        u_sum = group_sums(gt, units[train].astype(np.int64) * ct, k)
        n_out = group_sums(gt, ct, k)
        n_rows = np.bincount(gt, minlength=k)
        n_rep = group_sums(gt, ct - 1, k)
        agg = {name: (int(u_sum[i]), int(n_out[i]), int(n_rows[i]), int(n_rep[i]))
               for i, name in enumerate(gnames) if n_rows[i]}
        del gt, ct
        total_units = sum(v[0] for v in agg.values())
        requested, achieved, shortfall = {}, {}, {}
        max_err = 0.0
        for name in sorted(sizes):
            u, n, uq, r = agg.get(name, (0, 0, 0, 0))
            share = u / total_units if total_units else 0.0
            max_err = max(max_err, abs(share - shares[name]))
            requested[name] = {"share": round(shares[name], 6), "target": targets[name], "available": sizes[name]}
            achieved[name] = {"share": round(share, 6), c.unit: u, "examples": n, "unique": uq, "repeated": r}
            if achievable[name] < targets[name]:
                shortfall[name] = {"target": targets[name], "achievable": achievable[name], "available": sizes[name],
                                   "why": f"only {sizes[name]} {c.unit} and max_repeat = {c.max_repeat}"}
        val = {}
        if is_val.any():
            t, tnames = group_codes(keys[_task_col(keys)])
            nulls = keys[TASK_NULL].to_numpy()
            vt, vn = t[is_val], nulls[is_val]
            counts = np.bincount(vt * 2 + vn, minlength=2 * len(tnames))
            val_rows = pl.DataFrame({"task": [None if i % 2 else tnames[i // 2] for i in np.flatnonzero(counts)],
                                     "n": counts[counts > 0].tolist()}, schema={"task": pl.String, "n": pl.Int64})
            val = {task: int(n) for task, n in val_rows.sort("task").iter_rows()}
        upsampled = int((copies[copies > 0].astype(np.int64) - 1).sum())
        return {
            "by": c.by,
            "unit": c.unit,
            "counted_with": self._counted_with(),
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
            "val": val,
            "rows_in": dict(sorted(rows_per.items())),
        }


def _task_col(keys: pl.DataFrame) -> str:
    """The keys' task column: TASK, or GROUP when the mix is by task (the same values)."""
    return TASK if TASK in keys.columns else GROUP


STAGE = MixStage
