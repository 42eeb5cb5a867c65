"""`select`: keep the best examples by a score column, per task (or source) or globally.

Order of decisions, each with its own reject reason:
  1. `missing_score`   the score is null/NaN (unless `missing = "keep"`, which ranks it last)
  2. `below_min` / `above_max`   outside the `min` / `max` thresholds
  3. walk each group best-first (`keep = "highest"` or `"lowest"`, ties by id):
     with `diversity = d`, a candidate is kept only if its nearest already-kept neighbour
     is farther than cosine distance d (`too_similar`, detail names that neighbour) -
     Deita's score-first, diversity-aware selection;
  4. `over_quota`      the group's quota (`quotas[group]`, else `top_k`, and at most
     `top_fraction` of the group's rows entering the stage) is full; the detail names
     the quota and the score of the group's last kept row (its cutoff).
Quotas are exact: a group keeps min(quota, rows that pass 1-3).
With `cut = "mixture"` (no quota) step 4 is instead `mixture_worse`: per group, a
two-Gaussian fit of the scores decides how many rows go, or refuses (keeps all) when the
data shows one population (`_mixture_cut`, curate/stages/common/mixture.py).

Without diversity the walk is decided by one cutoff per group (see SelectStage), so a
distributed executor needs only the key columns on the driver; with diversity the walk is
sequential and runs whole.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from curate.stages.base import (DETAIL, REASON, ROW_COL, Plan, PlannedStage, StageResult, decided_part, group_codes,
                                 id_key_exprs, id_strings, split_decided, unknown_group_names)
from curate.contract.typed_config import ConfigError
from curate.contract.views import VIEWS, text_view

ROW = "__select_row"
GROUP = "__select_group"
LABEL = "__select_label"  # key column `__select_label:<label column>`
# Order within a group, best first: (missing score, key, id, position in the table).
CAND, NULL, KEY, SCORE, QUOTA = "__cand", "__null", "__key", "__score", "__quota"
SCOPE = "__select_scope"  # key column: the row is ranked by this stage (scope_column within its bounds)
GATE = "__select_gate"  # key column: the gate column's value (gate_min), Float64
GATE_RATE, GATE_N = "__gate_rate", "__gate_n"  # per row: its group's gate mean and rows counted
ORDER = [GROUP, NULL, KEY, "id", ROW_COL]
# The id in the plan's keys (issue #19): a canonical id (20 lower-case hex digits, what
# `conversation_id` gives) as two integers, __id_hi (its first 16 digits, UInt64) and
# __id_lo (its last 4, UInt16), whose order is the strings' order; any other id stays a
# string in __id_str (null for canonical ids). When every id is canonical the plan orders
# by (hi, lo): 10 B a row instead of a 20-character string, and no string sort.
ID_HI, ID_LO, ID_STR = "__id_hi", "__id_lo", "__id_str"


@dataclass
class Config:
    kind: Literal["select"]
    column: str  # the score column to rank by
    name: str | None = None
    keep: Literal["highest", "lowest"] = "highest"
    by: Literal["task", "source", "global"] = "task"
    min: float | None = None
    max: float | None = None
    top_k: int | None = None
    top_fraction: float | None = None
    quotas: dict[str, int] = field(default_factory=dict)  # per-group top_k, overriding top_k
    missing: Literal["drop", "keep"] = "drop"
    # diversity (Deita): minimum cosine distance to the nearest kept example
    diversity: float | None = None
    embedding: Literal["ngram", "model", "column"] = "ngram"
    embedding_model: str | None = None  # local dir: a causal LM or a sentence-embedding encoder
    embedding_column: str | None = None
    embedding_view: str = "conversation"
    embedding_dim: int = 512  # for "ngram"
    batch_size: int = 32
    max_length: int = 512
    device: str = "cpu"
    trust_remote_code: bool = False
    # a quotas name that no task (or source) read has: an error (true) or a warning
    strict: bool = True
    # trusted labels (1 good, 0 bad, null unlabelled) the score's AUC is measured on;
    # default: a `trusted` or `verifier` column when an earlier stage made one
    signal: str | None = None
    # refuse to select when the score's AUC is within noise of 0.5 (or nothing validates it)
    require_signal: bool = False
    # rank and cut only the rows whose value in this column lies within [scope_min, scope_max]
    # (null: outside); the other rows pass untouched and count toward no quota
    scope_column: str | None = None
    scope_min: float | None = None  # lower bound of scope_column (inclusive); none: no bound
    scope_max: float | None = None  # upper bound of scope_column (inclusive); none: no bound
    # cut a group only where the mean of gate_column over its rows in scope is at least this
    # (the scorer learned that group); below it the group's rows pass untouched
    gate_min: float | None = None
    gate_column: str | None = None  # the column gate_min is the group mean of; none: `column`
    # how a group is cut: "rank" keeps the best rows up to the quota (top_k, top_fraction,
    # quotas); "mixture" fits two Gaussians to the group's scores and drops the worse
    # component's rows, or keeps them all when the data does not show two (see _mixture_cut)
    cut: Literal["rank", "mixture"] = "rank"
    mixture_scale: Literal["linear", "log"] = "linear"  # fit the mixture on the score or its log (positive scores)
    mixture_posterior: float = 0.5  # drop from the first score whose posterior of the worse component exceeds this
    mixture_min_rows: int = 50  # a group with fewer rows to cut is not fitted: all kept
    mixture_min_separation: float = 1.0  # refuse when the components' means are closer than this many pooled sds
    mixture_max_noise: float = 0.5  # refuse when the worse component holds more than this share of the rows

    def column_refs(self) -> list[tuple[str, str]]:
        refs = [("column", self.column)] + ([("signal", self.signal)] if self.signal else [])
        if self.diversity is not None and self.embedding == "column" and self.embedding_column:
            refs.append(("embedding_column", self.embedding_column))
        if self.scope_column:
            refs.append(("scope_column", self.scope_column))
        if self.gate_min is not None:
            refs.append(("gate_column", self.gate_col))
        return refs

    @property
    def gate_col(self) -> str:
        return self.gate_column or self.column

    def check_data(self, names: dict[str, list[str]]) -> list[str]:
        msg = unknown_group_names(list(self.quotas), names.get(self.by, []), self.by, "quotas") if self.quotas else None
        if msg and self.strict:
            raise ConfigError("quotas", msg + " (set strict = false to only warn)")
        return [msg] if msg else []

    def validate(self) -> None:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ConfigError("min", f"min ({self.min}) is greater than max ({self.max})")
        if self.top_k is not None and self.top_k < 0:
            raise ConfigError("top_k", "must be >= 0")
        if self.top_fraction is not None and not 0.0 < self.top_fraction <= 1.0:
            raise ConfigError("top_fraction", f"must be in (0, 1], got {self.top_fraction}")
        for k, v in self.quotas.items():
            if v < 0:
                raise ConfigError(f"quotas.{k}", "must be >= 0")
        if self.quotas and self.by == "global":
            raise ConfigError("quotas", "per-group quotas need by = \"task\" or \"source\"")
        if self.diversity is not None and not 0.0 < self.diversity <= 2.0:
            raise ConfigError("diversity", f"a cosine distance in (0, 2], got {self.diversity}")
        if self.embedding == "model" and self.diversity is not None and not self.embedding_model:
            raise ConfigError("embedding_model", "required when embedding = \"model\"")
        if self.embedding == "column" and self.diversity is not None and not self.embedding_column:
            raise ConfigError("embedding_column", "required when embedding = \"column\"")
        if self.embedding_view not in VIEWS:
            raise ConfigError("embedding_view", f"must be one of {', '.join(VIEWS)}")
        if self.embedding_dim < 8:
            raise ConfigError("embedding_dim", "must be at least 8")
        if self.scope_column is None and (self.scope_min is not None or self.scope_max is not None):
            raise ConfigError("scope_column", "scope_min / scope_max need a scope_column")
        if self.scope_column is not None and self.scope_min is None and self.scope_max is None:
            raise ConfigError("scope_column", "needs scope_min or scope_max (the rows this select ranks)")
        if self.scope_min is not None and self.scope_max is not None and self.scope_min > self.scope_max:
            raise ConfigError("scope_min", f"scope_min ({self.scope_min}) is greater than scope_max ({self.scope_max})")
        if self.gate_column is not None and self.gate_min is None:
            raise ConfigError("gate_column", "needs gate_min (the group mean a group must reach to be cut)")
        if self.gate_min is not None and not math.isfinite(self.gate_min):
            raise ConfigError("gate_min", f"must be a finite number, got {self.gate_min}")
        self._validate_mixture()

    def _validate_mixture(self) -> None:
        if self.cut != "mixture":
            return
        for k in ("top_k", "top_fraction", "diversity"):
            if getattr(self, k) is not None:
                raise ConfigError(k, f"cut = \"mixture\" decides how many rows to keep; {k} needs cut = \"rank\"")
        if self.quotas:
            raise ConfigError("quotas", "cut = \"mixture\" decides how many rows to keep; quotas need cut = \"rank\"")
        if not 0.0 < self.mixture_posterior < 1.0:
            raise ConfigError("mixture_posterior", f"must be in (0, 1), got {self.mixture_posterior}")
        if self.mixture_min_rows < 4:
            raise ConfigError("mixture_min_rows", f"must be at least 4 (a 2-component fit has 5 parameters), got "
                              f"{self.mixture_min_rows}")
        if not (math.isfinite(self.mixture_min_separation) and self.mixture_min_separation >= 0.0):
            raise ConfigError("mixture_min_separation", f"must be a number >= 0, got {self.mixture_min_separation}")
        if not 0.0 < self.mixture_max_noise <= 1.0:
            raise ConfigError("mixture_max_noise", f"must be in (0, 1], got {self.mixture_max_noise}")

    def check_paths(self, base_dir) -> None:
        if self.diversity is not None and self.embedding == "model":
            p = Path(self.embedding_model).expanduser()
            p = p if p.is_absolute() else Path(base_dir) / p
            if not (p / "config.json").is_file():
                raise ConfigError("embedding_model", f"no model directory (config.json) at {p}")


class SelectStage(PlannedStage):
    """Planned from keys (PlannedStage): per row, its group, score, id (and trusted label,
    for the signal check): ~30 bytes a row (the group a Categorical code, a canonical id as
    u64 + u16), never text; in the plan the verdicts are Categoricals (4 B a row each). `plan` judges the thresholds
    on the keys, then decides the quota walk by one cutoff per group in the order `ORDER`
    (best first, ties by id, then position): it sorts the candidates' keys, finds each
    group's last kept key, and a candidate is over quota iff its key comes after its
    group's cutoff. `apply` only joins the decisions on the row position. With
    `diversity` the walk is sequential (each decision depends on the rows kept before
    it, by their embeddings) and runs whole (`plannable()` false)."""

    kind = "select"
    Config = Config
    ROW = ROW

    def _quota(self, group: str, n_in: int) -> int | None:
        c = self.config
        q = c.quotas.get(group, c.top_k)
        if c.top_fraction is not None:
            f = math.floor(c.top_fraction * n_in + 1e-9)
            q = f if q is None else min(q, f)
        return q

    def plannable(self) -> bool:
        return self.config.diversity is None  # the Deita walk is sequential: see _diverse

    def has_quota(self) -> bool:
        c = self.config
        return bool(c.quotas) or c.top_k is not None or c.top_fraction is not None

    def process(self, table: pl.DataFrame) -> StageResult:
        if self.plannable():
            return self.process_planned(table)
        # diversity: thresholds from the keys, the walk over the whole table's candidates
        v = self._verdicts(self.keys(table).with_columns(pl.int_range(table.height, dtype=pl.UInt64).alias(ROW_COL)))
        n_in = self._n_in(v)
        cand = (table.hstack(v.select(GROUP, NULL, KEY, ROW_COL))
                .filter(v[CAND]).sort(ORDER))
        walked = self._diverse(cand, n_in).select(ROW_COL, pl.col(REASON).alias("__r"), pl.col(DETAIL).alias("__d"))
        v = (v.join(walked, on=ROW_COL, how="left", maintain_order="left")
             .with_columns(pl.coalesce(pl.col(REASON).cast(pl.String), "__r").alias(REASON),
                           pl.coalesce(pl.col(DETAIL).cast(pl.String), "__d").alias(DETAIL))
             .drop("__r", "__d"))
        plan = Plan(decisions=v.filter(pl.col(REASON).is_not_null()).select(ROW_COL, REASON, DETAIL),
                    stats=self._plan_stats(v, n_in))
        return self.apply(table, plan, 0)

    # ------------------------------------------------------------------ keys -> plan -> apply
    def label_column(self, columns: list[str]) -> str | None:
        """The trusted-label column the score's signal is measured on (None: none)."""
        from curate.stages.common import signal as sig

        c = self.config
        label = c.signal
        if label is None:
            label = next((x for x in sig.LABEL_COLUMNS if x in columns and x != c.column), None)
        if label is not None and label not in columns:
            raise ValueError(f"stage {self.name!r}: signal column {label!r} is not in the table")
        return label

    def keys(self, part: pl.DataFrame) -> pl.DataFrame:
        """Per row: group, score (Float64), id and, when there is one, the trusted label
        (column `__select_label:<name>`). No text."""
        c = self.config
        if c.column not in part.columns:
            raise ValueError(f"stage {self.name!r}: score column {c.column!r} is not in the table "
                             f"(columns: {', '.join(part.columns)}); run a quality stage that makes it first")
        # the group as a Categorical (4 B a row: issue #19); the plan's joins on it cast to String
        group_expr = (pl.lit("all", pl.String) if c.by == "global" else pl.col(c.by).fill_null("")).cast(pl.Categorical)
        cols = [group_expr.alias(GROUP), pl.col(c.column).cast(pl.Float64).alias(SCORE),
                *id_key_exprs(ID_HI, ID_LO, ID_STR)]
        label = self.label_column(part.columns)
        if label is not None:
            cols.append(pl.col(label).cast(pl.Float64).alias(f"{LABEL}:{label}"))
        if c.scope_column is not None:
            if c.scope_column not in part.columns:
                raise ValueError(f"stage {self.name!r}: scope_column {c.scope_column!r} is not in the table")
            v = pl.col(c.scope_column).cast(pl.Float64)
            inside = v.is_not_null() & v.is_not_nan()
            if c.scope_min is not None:
                inside = inside & (v >= c.scope_min)
            if c.scope_max is not None:
                inside = inside & (v <= c.scope_max)
            cols.append(inside.fill_null(False).alias(SCOPE))
        if c.gate_min is not None:
            if c.gate_col not in part.columns:
                raise ValueError(f"stage {self.name!r}: gate_column {c.gate_col!r} is not in the table")
            cols.append(pl.col(c.gate_col).cast(pl.Float64).alias(GATE))
        return part.select(cols)

    def _n_in(self, v: pl.DataFrame) -> dict:
        """Rows per group that this select ranks (with a scope: only those inside it)."""
        if SCOPE in v.columns:
            v = v.filter(pl.col(SCOPE))
        return {g: int(n) for g, n in v.group_by(GROUP).len().iter_rows()}

    def _verdicts(self, keys: pl.DataFrame) -> pl.DataFrame:
        """The keys with the threshold verdicts (`_reason`, `_detail`: missing/min/max),
        whether each row is still a candidate, and its order key (NULL, KEY)."""
        c = self.config
        score = pl.col(SCORE)
        missing = score.is_null() | score.is_nan()
        cat = lambda x: pl.lit(x, pl.Categorical)  # noqa: E731  (no String column built first)
        reason = pl.when(missing & pl.lit(c.missing == "drop")).then(cat("missing_score"))
        detail = pl.when(missing).then(pl.lit(None, pl.String))
        if c.min is not None:
            reason = reason.when(~missing & (score < c.min)).then(cat("below_min"))
            detail = detail.when(~missing & (score < c.min)).then(pl.format("{} < min {}", score.round(6), pl.lit(c.min)))
        if c.max is not None:
            reason = reason.when(~missing & (score > c.max)).then(cat("above_max"))
            detail = detail.when(~missing & (score > c.max)).then(pl.format("{} > max {}", score.round(6), pl.lit(c.max)))
        # best first; missing scores (when kept) last; + 0.0 makes -0.0 and 0.0 one key
        key = ((-score if c.keep == "highest" else score) + 0.0).fill_nan(None)
        # the verdicts as Categoricals (4 B a row, a String column is 16: issue #19); the
        # decisions and the stats read them back as strings (the dropped rows only)
        t = keys.with_columns(reason.otherwise(cat(None)).alias(REASON),
                              detail.otherwise(pl.lit(None, pl.String)).cast(pl.Categorical).alias(DETAIL),
                              key.is_null().alias(NULL), key.fill_null(0.0).alias(KEY))
        if GATE in t.columns:
            t = self._gate(t)
        if SCOPE in t.columns:  # outside the scope: no verdict, not a candidate for any quota
            inside = pl.col(SCOPE)
            t = t.with_columns(pl.when(inside).then(pl.col(REASON)).alias(REASON),
                               pl.when(inside).then(pl.col(DETAIL)).alias(DETAIL))
            return t.with_columns((pl.col(REASON).is_null() & inside).alias(CAND))
        return t.with_columns(pl.col(REASON).is_null().alias(CAND))

    def _gate(self, t: pl.DataFrame) -> pl.DataFrame:
        """`gate_min`: per group, the mean of the gate column over its rows in scope (non-null,
        non-NaN values; `__gate_rate`, null when there are none, and `__gate_n`); a group whose
        mean is below gate_min (or null) leaves the scope: its rows pass untouched. The
        typical gate is the cross-validated agreement rate (`cv_loss_agree`): where the fold
        models reproduce few of a task's held-out answers they did not learn the task, and a
        disagreement says nothing about a record."""
        g = pl.col(GATE)
        inside = pl.col(SCOPE) if SCOPE in t.columns else pl.lit(True)
        valid = inside & g.is_not_null() & g.is_not_nan()
        t = t.with_columns(g.filter(valid).mean().over(GROUP).alias(GATE_RATE),
                           valid.sum().over(GROUP).cast(pl.Int64).alias(GATE_N))
        passes = pl.col(GATE_RATE).fill_null(float("-inf")) >= self.config.gate_min
        return t.with_columns((inside & passes).fill_null(False).alias(SCOPE))

    def plan(self, keys: pl.DataFrame) -> Plan:
        """Thresholds, then per group its quota and the key of the last row it keeps; a
        candidate after its group's cutoff is `over_quota`. Trade-off: this sorts every
        row's key (~40 B a row) in one place. Parts could send only their best `quota`
        candidates per group, but `top_fraction`'s quota depends on the whole group's
        size, which would cost one more pass over the data."""
        v = self._verdicts(self._id_keys(keys.rechunk()))  # one chunk: float sums must not depend on the parts
        n_in = self._n_in(v)
        mixture = None
        if self.config.cut == "mixture":
            v, mixture = self._mixture_cut(v)
        if self.has_quota():
            v = self._over_quota(v, self._cutoffs(v, n_in))
        decisions = v.filter(pl.col(REASON).is_not_null()).select(ROW_COL, *_as_strings(REASON, DETAIL))
        stats = self._plan_stats(v, n_in)
        if mixture is not None:
            stats["mixture"] = self._mixture_stats(mixture, stats["groups"])
        return Plan(decisions=decisions, stats=stats)

    # ------------------------------------------------------------------ cut = "mixture"
    def _mixture_cut(self, v: pl.DataFrame) -> tuple[pl.DataFrame, dict]:
        """`cut = "mixture"`: per group, the candidates' scores (in scope, past the gate and
        the thresholds) are fitted with two Gaussians (curate.stages.common.mixture: EM from
        a deterministic start, the loss-distribution mixture of Arazo et al. 2019 and
        DivideMix); rows at or past the first score whose posterior of the worse component
        (high scores when keep = "lowest") exceeds `mixture_posterior` are dropped
        (`mixture_worse`). A group whose data does not support two components (too few rows,
        BIC, the worse component a majority, or overlap below `mixture_min_separation`) is
        REFUSED: every row kept, the reason logged and in the stats. The estimated noise
        fraction (the worse component's weight) is logged and in the stats either way.
        Trade-off: a per-group numpy pass over the candidates' scores (~ms per 10^4 rows);
        the number dropped follows the data, so a group with little noise loses little,
        where top_fraction always drops the same share."""
        from curate.stages.common import mixture as mx

        c = self.config
        cand = v.filter(pl.col(CAND)).select(ROW_COL, GROUP, SCORE)
        worse = "high" if c.keep == "lowest" else "low"
        drops, fits = [], {}
        parts = cand.filter(pl.col(SCORE).is_not_null() & pl.col(SCORE).is_finite()).partition_by(GROUP, as_dict=True)
        for g in sorted(cand[GROUP].unique().to_list()):
            sub = parts.get((g,), cand.clear())
            x = sub[SCORE].to_numpy()  # a missing score kept by `missing = "keep"` is not fitted, and stays
            if c.mixture_scale == "log" and (x <= 0).any():
                fits[g] = {"n": len(x), "applied": False,
                           "reason": f"mixture_scale = \"log\" needs positive scores ({int((x <= 0).sum())} <= 0)"}
                continue
            z = np.log(x) if c.mixture_scale == "log" else x
            d = mx.decide(z, worse, posterior=c.mixture_posterior, min_rows=c.mixture_min_rows,
                          min_separation=c.mixture_min_separation, max_noise=c.mixture_max_noise)
            if d["applied"]:
                drop = z >= d["cut"] if worse == "high" else z <= d["cut"]
                edge = x[drop].min() if worse == "high" else x[drop].max()  # the cut, in the score's own units
                d["cut_score"] = float(edge)
                sign = ">=" if worse == "high" else "<="
                why = (f" {sign} the mixture cut {edge:.6g} (posterior of the worse component > "
                       f"{c.mixture_posterior}; est. noise {d['noise']:.3f})")
                drops.append(sub.filter(pl.Series(drop)).select(
                    ROW_COL, pl.format("{} {}{}", pl.lit(c.column), pl.col(SCORE).round(6).cast(pl.String),
                                       pl.lit(why)).alias("__mdetail")))
            fits[g] = d
        if drops:
            v = v.join(pl.concat(drops), on=ROW_COL, how="left", maintain_order="left")
            hit = pl.col("__mdetail").is_not_null()
            v = v.with_columns(pl.when(hit).then(pl.lit("mixture_worse")).otherwise(pl.col(REASON))
                               .cast(pl.Categorical).alias(REASON),
                               pl.when(hit).then(pl.col("__mdetail")).otherwise(pl.col(DETAIL).cast(pl.String))
                               .cast(pl.Categorical).alias(DETAIL),
                               (pl.col(CAND) & ~hit).alias(CAND)).drop("__mdetail")
        return v, fits

    def _mixture_stats(self, fits: dict, groups: dict) -> dict:
        """Per group: the fit, the estimated noise fraction, applied or refused (and why); logged."""
        c = self.config
        on = f"log {c.column}" if c.mixture_scale == "log" else c.column
        for g, d in fits.items():
            if g in groups:
                groups[g]["mixture"] = d
            noise = f"est. noise {d['noise']:.1%}, separation D {d['separation']:.2f}" if "noise" in d else "not fitted"
            if d["applied"]:
                sign = ">=" if c.keep == "lowest" else "<="
                verdict = f"cut at {c.column} {sign} {d['cut_score']:.6g}: {d['dropped']:,} row(s) dropped"
            else:
                verdict = f"REFUSED ({d['reason']}): every row kept"
            self.context.log(f"{self.name}: {c.by} {g!r}: 2-component mixture on {on} over {d['n']:,} row(s): "
                             f"{noise}; {verdict}")
        return {"column": c.column, "scale": c.mixture_scale, "posterior": c.mixture_posterior,
                "min_separation": c.mixture_min_separation, "max_noise": c.mixture_max_noise, "groups": fits,
                "cut": sorted(g for g, d in fits.items() if d["applied"]),
                "refused": sorted(g for g, d in fits.items() if not d["applied"])}

    @staticmethod
    def _id_keys(keys: pl.DataFrame) -> pl.DataFrame:
        """The keys with the id as the plan orders by it: (__id_hi, __id_lo) when every id
        is canonical, else the id string rebuilt for every row in `id` (the fallback for
        ids that are not content hashes: tables built by hand, ids from a source)."""
        if not keys[ID_HI].null_count():  # a null hi: an id that is not canonical (or null)
            return keys.drop(ID_STR)
        rebuilt = id_strings(keys[ID_HI], keys[ID_LO]).alias("__rebuilt")
        return keys.with_columns(pl.coalesce(ID_STR, rebuilt).alias("id")).drop(ID_HI, ID_LO, ID_STR)

    @staticmethod
    def _order(v: pl.DataFrame) -> list[str]:
        """The candidates' order (best first, ties by id, then position), by the id's
        integer keys when the keys have them (`_id_keys`): the same order as ORDER."""
        return [GROUP, NULL, KEY, ID_HI, ID_LO, ROW_COL] if ID_HI in v.columns else ORDER

    def apply(self, part: pl.DataFrame, plan: Plan, first_row: int) -> StageResult:
        res = split_decided(decided_part(part, plan, first_row))
        return StageResult(kept=res.kept, dropped=res.dropped, stats=plan.stats)

    def _cutoffs(self, v: pl.DataFrame, n_in: dict) -> pl.DataFrame:
        """Per group: its quota and the order key of the last row it keeps (null: the
        quota covers every candidate, or is 0)."""
        quotas = pl.DataFrame({GROUP: list(n_in), QUOTA: [self._quota(g, n) for g, n in n_in.items()]},
                              schema={GROUP: pl.String, QUOTA: pl.Int64})
        quotas = quotas.with_columns(pl.col(QUOTA).fill_null(pl.col(GROUP).replace_strict(n_in, return_dtype=pl.Int64)))
        order = self._order(v)
        if ID_HI in v.columns:
            last = self._last_kept(v, quotas, order)
        else:  # ids that are not canonical: the string sort
            last = (v.filter(pl.col(CAND)).select(*order).with_columns(pl.col(GROUP).cast(pl.String)).sort(order)
                    .with_columns(pl.int_range(pl.len()).over(GROUP).alias("__rank"))
                    .join(quotas, on=GROUP).filter(pl.col("__rank") == pl.col(QUOTA) - 1)
                    .select(GROUP, *[pl.col(k).alias(f"__cut{k}") for k in order[1:]]))
            last = last.join(v.select(pl.col(ROW_COL).alias(f"__cut{ROW_COL}"), pl.col(SCORE).alias("__cut_score")),
                             on=f"__cut{ROW_COL}", how="left")
        return quotas.join(last, on=GROUP, how="left").sort(GROUP)

    @staticmethod
    def _last_kept(v: pl.DataFrame, quotas: pl.DataFrame, order: list[str]) -> pl.DataFrame:
        """Per group, the key of its quota-th candidate in `order` (all integer and float
        keys: canonical ids): one stable `np.lexsort` of every row by (group code, not a
        candidate, the order keys) on the key columns themselves (no gathered copies: the
        candidates of a group come first in its run), instead of polars' multi-column
        sort, which row-encodes every key (~190 B a row at its peak; issue #19). The
        position breaks the last ties: it is the row order when `_row` is sorted."""
        cand = v[CAND].fill_null(False).to_numpy()
        codes, names = group_codes(v[GROUP])
        by_row = not bool(v[ROW_COL].is_sorted())  # positions are not rows: sort by the row too
        keys = [v[k].to_numpy() for k in order[1:(None if by_row else -1)]]
        perm = np.lexsort([*reversed(keys), ~cand, codes])  # the last key is the primary one
        del keys
        sorted_codes = codes[perm]
        starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]]) if len(perm) else np.zeros(0, int)
        present = sorted_codes[starts]
        del sorted_codes
        n_cand = np.bincount(codes[cand], minlength=len(names))
        quota = dict(quotas.iter_rows())
        picks = [(names[g], int(a + quota[names[g]] - 1)) for g, a in zip(present.tolist(), starts.tolist())
                 if names[g] in quota and 0 < quota[names[g]] <= n_cand[g]]
        rows = perm[[i for _, i in picks]] if picks else np.zeros(0, dtype=np.int64)
        out = {GROUP: pl.Series(GROUP, [name for name, _ in picks], dtype=pl.String)}
        for k in order[1:]:
            out[f"__cut{k}"] = v[k].gather(rows).alias(f"__cut{k}")
        out["__cut_score"] = v[SCORE].gather(rows).alias("__cut_score")
        return pl.DataFrame(out)

    def _over_quota(self, v: pl.DataFrame, cut: pl.DataFrame) -> pl.DataFrame:
        """A candidate is over its group's quota iff its order key comes after the cutoff.
        The detail string is formatted once per group (on `cut`) and given to the rows over
        quota only, scattered into the (mostly null) detail column; with canonical ids the
        comparison runs on numpy arrays, each cutoff looked up by the row's group code
        (`_over_np`), else on a narrow join of the order columns (issue #19)."""
        order = self._order(v)[1:]
        c = self.config
        detail = (pl.when(pl.col(QUOTA) == 0).then(pl.lit("quota 0"))
                  .otherwise(pl.format(f"quota {{}} full; the last kept has {c.column} = {{}}", pl.col(QUOTA),
                                       pl.col("__cut_score").round(6).cast(pl.String).fill_null("null"))))
        per_group = dict(cut.select(GROUP, detail.alias(DETAIL)).iter_rows())
        over = self._over_np(v, cut, order) if ID_HI in v.columns else self._over_joined(v, cut, order)
        idx = np.flatnonzero(over)
        if not len(idx):
            return v
        codes, names = group_codes(v[GROUP])
        details = (pl.Series(DETAIL, [per_group.get(name) for name in names], dtype=pl.String).gather(codes[idx])
                   .cast(pl.Categorical))
        return v.with_columns(v[REASON].clone().scatter(idx, "over_quota"), v[DETAIL].clone().scatter(idx, details))

    @staticmethod
    def _over_joined(v: pl.DataFrame, cut: pl.DataFrame, order: list[str]) -> np.ndarray:
        scope = [SCOPE] if SCOPE in v.columns else []
        t = (v.select(pl.col(GROUP).cast(pl.String), *order, pl.col(REASON).is_null().alias("__open"), *scope)
             .join(cut, on=GROUP, how="left", maintain_order="left"))
        # lexicographic (null, key, id, row) <= cutoff, built from the last key back
        within = pl.col(ROW_COL) <= pl.col(f"__cut{ROW_COL}")
        for x in reversed(order[1:-1]):
            a, b = pl.col(x), pl.col(f"__cut{x}")
            within = (a < b) | ((a == b) & within)
        null, cn = pl.col(NULL), pl.col(f"__cut{NULL}")
        within = (~null & cn) | ((null == cn) & within)
        has_cut = pl.col(f"__cut{ROW_COL}").is_not_null()
        over = pl.col("__open") & ((pl.col(QUOTA) == 0) | (has_cut & ~within))
        if scope:
            over = over & pl.col(SCOPE)
        return t.select(over.fill_null(False)).to_series().to_numpy()

    OVER_WINDOW = 1 << 20  # rows a time in `_over_np`: its temporaries are bounded, not per input row

    @staticmethod
    def _over_np(v: pl.DataFrame, cut: pl.DataFrame, order: list[str], window: int | None = None) -> np.ndarray:
        """`_over_joined` on numpy arrays (every order key an integer or float): per row a
        4-byte group code and, one window of rows at a time (OVER_WINDOW), its group's
        cutoff values and the comparison's temporaries (~30 B a row of a window, not of
        every row: issue #19); no joined table. Row-local given `cut`: the same verdicts
        whatever the window."""
        window = window or SelectStage.OVER_WINDOW
        codes, names = group_codes(v[GROUP])
        pos = {name: i for i, name in enumerate(cut[GROUP].to_list())}
        gmap = np.asarray([pos.get(name, -1) for name in names] or [-1], dtype=np.int32)  # code -> its row in `cut`
        # per row of `cut` (plus a last entry for "none"): its cutoff values and flags
        cuts = {x: np.append(cut[f"__cut{x}"].fill_null(0).to_numpy(), 0) for x in (ROW_COL, NULL, *order[1:-1])}
        has_cut_c = np.append(cut[f"__cut{ROW_COL}"].is_not_null().to_numpy(), False)
        quota0_c = np.append((cut[QUOTA] == 0).fill_null(False).to_numpy(), False)
        n = v.height
        over = np.zeros(n, dtype=bool)
        for lo in range(0, n, window):
            w = v.slice(lo, window)  # zero-copy; each column read for these rows only
            gi = gmap[codes[lo:lo + w.height]]
            known = gi >= 0
            gi = np.where(known, gi, 0)
            within = w[ROW_COL].to_numpy() <= cuts[ROW_COL][gi]
            for x in reversed(order[1:-1]):
                a, b = w[x].to_numpy(), cuts[x][gi]
                within = (a < b) | ((a == b) & within)
            null, cn = w[NULL].to_numpy(), cuts[NULL][gi].astype(bool)
            within = (~null & cn) | ((null == cn) & within)
            has_cut = has_cut_c[gi] & known
            quota0 = quota0_c[gi] & known
            o = w[REASON].is_null().to_numpy() & (quota0 | (has_cut & ~within))
            if SCOPE in w.columns:
                o &= w[SCOPE].fill_null(False).to_numpy()
            over[lo:lo + w.height] = o
        return over

    def _plan_stats(self, v: pl.DataFrame, n_in: dict) -> dict:
        stats = self._stats(v, n_in)
        if GATE_RATE in v.columns:
            stats["gate"] = self._gate_stats(v, stats["groups"])
        if SCOPE in v.columns:  # the score is validated on the rows it ranked
            v = v.filter(pl.col(SCOPE))
        label = next((x.split(":", 1)[1] for x in v.columns if x.startswith(LABEL + ":")), None)
        scores = v[SCORE].fill_null(float("nan")).to_numpy()
        labels = v[f"{LABEL}:{label}"].fill_null(float("nan")).to_numpy() if label is not None else None
        stats["signal"] = self.validation(scores, labels, label)
        return stats

    def _gate_stats(self, v: pl.DataFrame, groups: dict) -> dict:
        """Per group: the gate's mean, rows it counted, whether the cut applied; logged."""
        c = self.config
        per = v.group_by(GROUP).agg(pl.col(GATE_RATE).first(), pl.col(GATE_N).first()).sort(GROUP)
        by = {}
        for g, rate, n in per.iter_rows():
            applied = rate is not None and rate >= c.gate_min
            by[g] = {"rate": None if rate is None else round(float(rate), 6), "n": int(n), "applied": applied}
            if g in groups:
                groups[g]["gate"] = by[g]
            verdict = (f">= gate_min {c.gate_min}: the cut applies" if applied else
                       f"< gate_min {c.gate_min}: not cut, its rows pass untouched")
            shown = "no value" if rate is None else f"{rate:.3f}"
            self.context.log(f"{self.name}: {c.by} {g!r}: mean {c.gate_col} {shown} over {int(n):,} row(s) {verdict}")
        return {"column": c.gate_col, "min": c.gate_min, "groups": by,
                "cut": sorted(g for g, d in by.items() if d["applied"]),
                "not_cut": sorted(g for g, d in by.items() if not d["applied"])}

    def validation(self, scores, labels, label: str | None) -> dict:
        """The score's power on trusted labels (curate.stages.common.signal), warned about
        loudly when it is within noise of a coin; refused with `require_signal`."""
        from curate.contract.typed_config import ConfigError
        from curate.stages.common import signal as sig

        c = self.config
        if label is None:
            m = {"labels": None, "verdict": "unvalidated",
                 "note": "no trusted labels (a `trusted` or `verifier` column): this selection is unvalidated"}
        else:
            m = sig.measure(scores, labels, higher_is_better=c.keep == "highest", seed=self.context.seed,
                            label_column=label)
        warn = sig.warning_text(c.column, m)
        if warn:
            m["warning"] = warn
            self.context.log(f"WARNING {self.name}: {warn}")
        if c.require_signal and m["verdict"] != "signal":
            raise ConfigError("require_signal", f"stage {self.name!r} refuses to select: "
                              + (warn or f"score {c.column!r} is not validated: {m.get('note')}"))
        return m

    def _diverse(self, cand: pl.DataFrame, n_in: dict) -> pl.DataFrame:
        """Greedy walk: inherently sequential (each decision depends on what was kept), so
        one Python step per candidate, each a vectorised distance to all kept rows."""
        from curate.stages.common.embeddings import embed

        c = self.config
        ctx = self.context
        texts = cand.select(text_view(c.embedding_view)).to_series()
        model = ctx.resolve(c.embedding_model) if c.embedding == "model" else None
        vecs = embed(cand, texts, c.embedding, dim=c.embedding_dim, model=model, column=c.embedding_column,
                     cache_dir=ctx.stage_dir, batch_size=c.batch_size, max_length=c.max_length,
                     device=c.device, trust_remote_code=c.trust_remote_code, log=ctx.log)
        groups = cand[GROUP].to_list()
        ids = cand["id"].to_list()
        reasons: list[str | None] = [None] * len(ids)
        details: list[str | None] = [None] * len(ids)
        start = 0
        while start < len(ids):
            g = groups[start]
            end = start
            while end < len(ids) and groups[end] == g:
                end += 1
            quota = self._quota(g, n_in[g])
            quota = end - start if quota is None else quota
            kept_idx: list[int] = []
            kept_mat = np.empty((max(min(quota, end - start), 1), vecs.shape[1]), dtype=np.float32)
            for i in range(start, end):
                if len(kept_idx) >= quota:
                    reasons[i], details[i] = "over_quota", f"quota {quota} full"
                    continue
                if kept_idx:
                    sims = kept_mat[: len(kept_idx)] @ vecs[i]
                    j = int(np.argmax(sims))
                    dist = 1.0 - float(sims[j])
                    if dist <= c.diversity:
                        reasons[i] = "too_similar"
                        details[i] = f"{ids[kept_idx[j]]} distance={dist:.4f}"
                        continue
                kept_mat[len(kept_idx)] = vecs[i]
                kept_idx.append(i)
            start = end
        return cand.with_columns(pl.Series(REASON, reasons, dtype=pl.String), pl.Series(DETAIL, details, dtype=pl.String))

    def _stats(self, final: pl.DataFrame, n_in: dict) -> dict:
        c = self.config
        scoped = SCOPE in final.columns
        outside = {}
        if scoped:
            outside = {g: int(n) for g, n in final.filter(~pl.col(SCOPE)).group_by(GROUP).len().iter_rows()}
            final = final.filter(pl.col(SCOPE))
        # the dropped rows grouped (few); a group's kept rows are its rows in scope less those
        # (no group_by of every row's group and reason strings: issue #19)
        per = (final.filter(pl.col(REASON).is_not_null()).select(*_as_strings(GROUP, REASON))
               .group_by(GROUP, REASON).len().sort(GROUP, REASON))
        dropped: dict[str, dict] = {}
        for g, r, n in per.iter_rows():
            dropped.setdefault(g, {})[r] = int(n)
        rows = {g: int(n) for g, n in final.group_by(GROUP).len().iter_rows()} if scoped else n_in
        groups: dict[str, dict] = {}
        for g in sorted(rows):
            d = dropped.get(g, {})
            groups[g] = {"in": n_in[g], "kept": rows[g] - sum(d.values()), "quota": self._quota(g, n_in[g]),
                         "dropped": d}
        kept_scores = final[SCORE].filter(final[REASON].is_null()).drop_nans().drop_nulls()
        scope = {}
        if scoped:  # rows outside the scope (or a gate) passed untouched: counted apart, never in `kept`
            for g in sorted(set(outside) - set(groups)):
                groups[g] = {"in": 0, "kept": 0, "quota": self._quota(g, 0), "dropped": {}}
            groups = dict(sorted(groups.items()))
            for g, d in groups.items():
                d["outside_scope"] = outside.get(g, 0)
            scope = {"scope": {"column": c.scope_column, "min": c.scope_min, "max": c.scope_max,
                               "outside": sum(outside.values())}} if c.scope_column else {}
        return {
            "column": c.column,
            "keep": c.keep,
            "by": c.by,
            "diversity": c.diversity,
            "embedding": c.embedding if c.diversity is not None else None,
            "groups": groups,
            "kept": sum(d["kept"] for d in groups.values()),
            "kept_score": {"min": kept_scores.min(), "mean": kept_scores.mean(), "max": kept_scores.max()}
            if len(kept_scores) else None,
            **scope,
        }


def _as_strings(*names: str) -> list[pl.Expr]:
    return [pl.col(x).cast(pl.String) for x in names]


STAGE = SelectStage
