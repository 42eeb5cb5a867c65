"""Does a score separate good records from bad ones? AUC against trusted labels, with a
bootstrap interval, and a verdict a stage can act on.

Labels come from something the user trusts more than the score: a verifier stage's
`verifier` column (1 = the answer checks out), a `trusted` column, or any 0/1 column an
earlier stage made. The AUC is the probability that a random good record scores better
than a random bad one (Mann-Whitney, ties count one half): 0.5 is a coin. The interval is
a percentile bootstrap over records (seeded: same data, same interval).

Verdicts: `signal` (the interval lies above 0.5), `no_signal` (it contains 0.5: the
select that follows is a random sample, as far as these labels can tell), `inverted`
(below 0.5: the score prefers the bad records), `unvalidated` (no labels, or fewer than
`MIN_PER_CLASS` of either class). Trade-off: labels from a verifier only cover the tasks it
checks; the AUC says nothing about the others, and the stats name how many rows had a label.

A `[[sources]]` entry with `trusted = true` makes the `trusted` column (`trusted_labels`):
its records' labels (its `trusted_label` field, or 1 = good for all), null elsewhere. With
good labels only (a trusted set of right answers and no known-bad ones), `measure` compares
them with the UNLABELLED rows (`positive_vs_unlabelled`): if a fraction a of the unlabelled
rows is good, that AUC is a/2 + (1 - a) * (the true AUC), so it is pulled toward 0.5 but is
above 0.5 exactly when the true AUC is, and the verdict keeps its meaning. It assumes the
trusted records look like the pool's good ones: a trusted set from another task mix or of
other lengths measures that difference too (give it bad examples, `trusted_label`, to
measure good against bad directly).
"""
from __future__ import annotations

import numpy as np
import polars as pl

MIN_PER_CLASS = 5
LABEL_COLUMNS = ("trusted", "verifier")  # looked for, in this order, when none is named


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based), ties sharing their mean rank."""
    order = np.argsort(x, kind="stable")
    v = x[order]
    n = len(x)
    start = np.r_[0, np.flatnonzero(v[1:] != v[:-1]) + 1]
    lens = np.diff(np.r_[start, n])
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(start + (lens + 1) / 2.0, lens)
    return ranks


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties one half."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    npos, nneg = int(labels.sum()), int((~labels).sum())
    if not npos or not nneg:
        return float("nan")
    r = _ranks(scores)
    return float((r[labels].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def bootstrap_auc(scores: np.ndarray, labels: np.ndarray, n_boot: int = 200, seed: int = 0,
                  level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the AUC over `n_boot` resamples of the records (stratified:
    each class resampled within itself, so every resample has both)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=bool)
    pos, neg = scores[labels], scores[~labels]
    rng = np.random.default_rng(seed)
    out = np.empty(n_boot)
    for b in range(n_boot):
        p = pos[rng.integers(0, len(pos), len(pos))]
        q = neg[rng.integers(0, len(neg), len(neg))]
        out[b] = auc(np.concatenate([p, q]), np.r_[np.ones(len(p), bool), np.zeros(len(q), bool)])
    a = (1.0 - level) / 2
    return float(np.quantile(out, a)), float(np.quantile(out, 1 - a))


def measure(scores: np.ndarray, labels: np.ndarray, *, higher_is_better: bool = True, seed: int = 0,
            label_column: str | None = None, n_boot: int = 200) -> dict:
    """The AUC report for `scores` oriented so that better = higher; `labels` are floats
    (>= 0.5 = good) with NaN where unlabelled."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.float64)
    ok = np.isfinite(scores) & np.isfinite(labels)
    y = labels[ok] >= 0.5
    mode = "labelled"
    if label_column == "trusted" and int((~y).sum()) < MIN_PER_CLASS:
        # good labels only: trusted records against the unlabelled rest (see the module doc)
        unl = np.isfinite(scores) & ~np.isfinite(labels)
        if int(y.sum()) >= MIN_PER_CLASS and int(unl.sum()) >= MIN_PER_CLASS:
            ok = (ok & (labels >= 0.5)) | unl
            y = np.isfinite(labels[ok])
            mode = "positive_vs_unlabelled"
    s = scores[ok] if higher_is_better else -scores[ok]
    out = {"labels": label_column if mode == "labelled" else f"{label_column} vs unlabelled",
           "mode": mode, "labelled": int(ok.sum()), "good": int(y.sum()), "bad": int((~y).sum()),
           "higher_is_better": higher_is_better}
    if out["good"] < MIN_PER_CLASS or out["bad"] < MIN_PER_CLASS:
        out.update(verdict="unvalidated", auc=None, ci=None,
                   note=f"fewer than {MIN_PER_CLASS} labelled good and bad records ({out['good']} good, {out['bad']} bad)")
        return out
    a = auc(s, y)
    lo, hi = bootstrap_auc(s, y, n_boot=n_boot, seed=seed)
    verdict = "signal" if lo > 0.5 else ("inverted" if hi < 0.5 else "no_signal")
    out.update(auc=round(a, 4), ci=[round(lo, 4), round(hi, 4)], verdict=verdict)
    return out


def warning_text(column: str, m: dict) -> str | None:
    """The loud line for a score that does not earn its select, or None."""
    if m.get("verdict") == "no_signal":
        return (f"score {column!r} does not separate good from bad records: AUC {m['auc']} "
                f"(95% interval {m['ci'][0]}-{m['ci'][1]} contains 0.5) on {m['labelled']} records labelled by "
                f"{m['labels']!r}; selecting on it is a random sample")
    if m.get("verdict") == "inverted":
        return (f"score {column!r} prefers the BAD records: AUC {m['auc']} (95% interval {m['ci'][0]}-{m['ci'][1]}) "
                f"on {m['labelled']} records labelled by {m['labels']!r}; check `keep` (highest/lowest)")
    return None


def trusted_labels(table: pl.DataFrame, sources) -> pl.Series | None:
    """The `trusted` column for a table read from `sources` (SourceConfig-like: name,
    trusted, trusted_label): per row of a trusted source its label (1.0 good, 0.0 bad; from
    the `trusted_label` field of the record's `meta`, read as true/false/1/0; other values
    are null = unlabelled), or 1.0 when the source names no label field; null for the rows
    of other sources. None when no source is trusted."""
    trusted = [s for s in sources if getattr(s, "trusted", False)]
    if not trusted or "source" not in table.columns:
        return None
    expr = pl.lit(None, dtype=pl.Float64)
    for s in reversed(trusted):
        if s.trusted_label:
            raw = pl.col("meta").str.json_path_match(f"$.{s.trusted_label}").str.to_lowercase()
            val = (pl.when(raw.is_in(["true", "1", "1.0"])).then(1.0)
                   .when(raw.is_in(["false", "0", "0.0"])).then(0.0).otherwise(None))
        else:
            val = pl.lit(1.0)
        expr = pl.when(pl.col("source") == s.name).then(val).otherwise(expr)
    return table.select(expr.cast(pl.Float64).alias("trusted")).to_series()
