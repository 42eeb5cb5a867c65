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

from curate.stages.base import DETAIL, REASON, PlannedStage, StageResult, unknown_group_names
from curate.contract.typed_config import ConfigError
from curate.contract.views import VIEWS, text_view

ROW = "__select_row"
GROUP = "__select_group"
# Order within a group, best first: (missing score, key, id, position in the table).
CAND, NULL, KEY, SCORE, QUOTA = "__cand", "__null", "__key", "__score", "__quota"
ORDER = [GROUP, NULL, KEY, "id", ROW]


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

    def column_refs(self) -> list[tuple[str, str]]:
        refs = [("column", self.column)] + ([("signal", self.signal)] if self.signal else [])
        if self.diversity is not None and self.embedding == "column" and self.embedding_column:
            refs.append(("embedding_column", self.embedding_column))
        return refs

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

    def check_paths(self, base_dir) -> None:
        if self.diversity is not None and self.embedding == "model":
            p = Path(self.embedding_model).expanduser()
            p = p if p.is_absolute() else Path(base_dir) / p
            if not (p / "config.json").is_file():
                raise ConfigError("embedding_model", f"no model directory (config.json) at {p}")


class SelectStage(PlannedStage):
    """Thresholds are row-local; the quota walk is decided from per-group cutoffs in the
    order `ORDER` (best first, ties by id, then position): `plan` sorts the candidates'
    keys and finds each group's last kept key, `apply_plan` keeps a candidate iff its key
    is at or before its group's cutoff. A distributed executor runs the thresholds, the
    keys and the cutoff filter block by block; only the keys meet on the driver."""

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

    def needs_keys(self) -> bool:
        c = self.config
        return bool(c.quotas) or c.top_k is not None or c.top_fraction is not None

    def process(self, table: pl.DataFrame) -> StageResult:
        if self.plannable():
            return self.process_planned(table)
        t = self.thresholds(self.number_rows(table))
        n_in = dict(t.group_by(GROUP).len().iter_rows())
        cand = (t.with_columns(self.block_keys(t).select(NULL, KEY)).filter(pl.col(REASON).is_null())
                .sort(ORDER))
        walked = self._diverse(cand, n_in).drop(NULL, KEY)
        final = pl.concat([t.filter(pl.col(REASON).is_not_null()), walked], how="vertical_relaxed").sort(ROW)
        return self.finish(final, None)

    # ------------------------------------------------------------------ the four planned steps
    def thresholds(self, t: pl.DataFrame) -> pl.DataFrame:
        """Row-local: the group and the missing/min/max verdicts (`_reason`, `_detail`)."""
        c = self.config
        if c.column not in t.columns:
            raise ValueError(f"stage {self.name!r}: score column {c.column!r} is not in the table "
                             f"(columns: {', '.join(c for c in t.columns if c != ROW)}); run a quality stage that makes it first")
        group_expr = pl.lit("all") if c.by == "global" else pl.col(c.by).fill_null("")
        t = t.with_columns(group_expr.alias(GROUP))
        score = pl.col(c.column).cast(pl.Float64)
        missing = score.is_null() | score.is_nan()
        reason = pl.when(missing & pl.lit(c.missing == "drop")).then(pl.lit("missing_score"))
        detail = pl.when(missing).then(pl.lit(None, pl.String))
        if c.min is not None:
            reason = reason.when(~missing & (score < c.min)).then(pl.lit("below_min"))
            detail = detail.when(~missing & (score < c.min)).then(pl.format("{} < min {}", score.round(6), pl.lit(c.min)))
        if c.max is not None:
            reason = reason.when(~missing & (score > c.max)).then(pl.lit("above_max"))
            detail = detail.when(~missing & (score > c.max)).then(pl.format("{} > max {}", score.round(6), pl.lit(c.max)))
        return t.with_columns(reason.otherwise(pl.lit(None, pl.String)).alias(REASON),
                              detail.otherwise(pl.lit(None, pl.String)).alias(DETAIL))

    def block_keys(self, block: pl.DataFrame) -> pl.DataFrame:
        """One row per row of the block: its group, whether it is still a candidate
        after the thresholds, and the order key `ORDER` (no text)."""
        c = self.config
        t = block if REASON in block.columns else self.thresholds(block)
        score = pl.col(c.column).cast(pl.Float64)
        # best first; missing scores (when kept) last; + 0.0 makes -0.0 and 0.0 one key
        key = ((-score if c.keep == "highest" else score) + 0.0).fill_nan(None)
        return t.select(pl.col(GROUP), pl.col(REASON).is_null().alias(CAND), key.is_null().alias(NULL),
                        key.fill_null(0.0).alias(KEY), pl.col("id"), pl.col(ROW), score.alias(SCORE))

    def plan(self, keys: pl.DataFrame | None) -> pl.DataFrame | None:
        """Per group: its quota and the key of the last row it keeps (null: the quota
        covers every candidate, or is 0). None: no quota at all (thresholds only).
        Trade-off: this sorts every row's key on the driver (~40 B a row). Blocks could
        send only their best `quota` candidates per group, but `top_fraction`'s quota
        depends on the whole group's size, which would cost one more pass over the data."""
        if keys is None:
            return None
        n_in = {g: int(n) for g, n in keys.group_by(GROUP).len().iter_rows()}
        quotas = pl.DataFrame({GROUP: list(n_in), QUOTA: [self._quota(g, n) for g, n in n_in.items()]},
                              schema={GROUP: pl.String, QUOTA: pl.Int64})
        quotas = quotas.with_columns(pl.col(QUOTA).fill_null(pl.col(GROUP).replace_strict(n_in, return_dtype=pl.Int64)))
        last = (keys.filter(pl.col(CAND)).sort(ORDER)
                .with_columns(pl.int_range(pl.len()).over(GROUP).alias("__rank"))
                .join(quotas, on=GROUP).filter(pl.col("__rank") == pl.col(QUOTA) - 1)
                .select(GROUP, *[pl.col(k).alias(f"__cut{k}") for k in ORDER[1:]], pl.col(SCORE).alias("__cut_score")))
        return quotas.join(last, on=GROUP, how="left").sort(GROUP)

    def apply_plan(self, block: pl.DataFrame, plan: pl.DataFrame | None) -> pl.DataFrame:
        """Row-local given the plan: a candidate is over its group's quota iff its order
        key comes after the group's cutoff."""
        t = self.thresholds(block)
        if plan is None:
            return t
        k = self.block_keys(t).select(NULL, KEY)
        t = t.hstack(k).join(plan, on=GROUP, how="left", maintain_order="left")
        null, key, ident, row = (pl.col(x) for x in ORDER[1:])
        cn, ck, ci, cr = (pl.col(f"__cut{x}") for x in ORDER[1:])
        # lexicographic (null, key, id, row) <= cutoff
        within = (~null & cn) | ((null == cn) & ((key < ck) | ((key == ck) & ((ident < ci) | ((ident == ci) & (row <= cr))))))
        has_cut = cr.is_not_null()
        over = pl.col(REASON).is_null() & ((pl.col(QUOTA) == 0) | (has_cut & ~within))
        c = self.config
        detail = (pl.when(pl.col(QUOTA) == 0).then(pl.lit("quota 0"))
                  .otherwise(pl.format(f"quota {{}} full; the last kept has {c.column} = {{}}", pl.col(QUOTA),
                                       pl.col("__cut_score").round(6).cast(pl.String).fill_null("null"))))
        t = t.with_columns(pl.when(over).then(pl.lit("over_quota")).otherwise(pl.col(REASON)).alias(REASON),
                           pl.when(over).then(detail).otherwise(pl.col(DETAIL)).alias(DETAIL))
        return t.drop(NULL, KEY, QUOTA, *[f"__cut{x}" for x in ORDER[1:]], "__cut_score")

    def validation(self, table: pl.DataFrame) -> dict:
        """The score's power on trusted labels (curate.stages.common.signal), warned about
        loudly when it is within noise of a coin; refused with `require_signal`."""
        from curate.contract.typed_config import ConfigError
        from curate.stages.common import signal as sig

        c = self.config
        label = c.signal
        if label is None:
            label = next((x for x in sig.LABEL_COLUMNS if x in table.columns and x != c.column), None)
        if label is not None and label not in table.columns:
            raise ValueError(f"stage {self.name!r}: signal column {label!r} is not in the table")
        if label is None:
            m = {"labels": None, "verdict": "unvalidated",
                 "note": "no trusted labels (a `trusted` or `verifier` column): this selection is unvalidated"}
        else:
            scores = table[c.column].cast(pl.Float64).fill_null(float("nan")).to_numpy()
            labels = table[label].cast(pl.Float64).fill_null(float("nan")).to_numpy()
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

    def finish(self, decided: pl.DataFrame, plan: pl.DataFrame | None) -> StageResult:
        n_in = dict(decided.group_by(GROUP).len().iter_rows())
        kept = decided.filter(pl.col(REASON).is_null()).drop(ROW, GROUP, REASON, DETAIL)
        dropped = decided.filter(pl.col(REASON).is_not_null()).drop(ROW, GROUP)
        stats = self._stats(decided, n_in)
        stats["signal"] = self.validation(decided)
        return StageResult(kept=kept, dropped=dropped, stats=stats)

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
        per = (final.group_by(GROUP, REASON).len().sort(GROUP, REASON, nulls_last=True))
        groups: dict[str, dict] = {}
        for g, r, n in per.iter_rows():
            d = groups.setdefault(g, {"in": n_in[g], "kept": 0, "quota": self._quota(g, n_in[g]), "dropped": {}})
            if r is None:
                d["kept"] = int(n)
            else:
                d["dropped"][r] = int(n)
        kept_scores = final.filter(pl.col(REASON).is_null())[c.column].cast(pl.Float64).drop_nans().drop_nulls()
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
        }


STAGE = SelectStage
