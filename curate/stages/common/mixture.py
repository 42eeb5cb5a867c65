"""A two-component 1-D Gaussian mixture on a score, and the cut it supports (or refuses).

The noisy-label technique of fitting a mixture to per-example losses: right answers and
wrong ones form two populations of loss, and the posterior of the high-loss component
is the probability that an example is mislabelled (Arazo et al., "Unsupervised label
noise modeling and loss correction", ICML 2019, a beta mixture on the loss; Li et al.,
"DivideMix", ICLR 2020, a Gaussian mixture on the loss with a 0.5 posterior cut). Here
the score is any column (select's `cut = "mixture"`); with `scale = "log"` the fit is on
its logarithm (a loss ratio is positive and right-skewed; its log is closer to two
Gaussians).

`fit(x)` runs EM from a deterministic start (the lower and upper halves of the sorted
data: their means, variances and weight 1/2), at most `MAX_ITER` iterations, stopping
when the log-likelihood gains less than `TOL` per row. Each variance has a floor of
(`VAR_FLOOR_SD` x the data's sd)^2 so a component cannot collapse onto a pile of tied
values (an infinite likelihood, not a population). Everything is numpy over the whole
group: O(n x iterations), ~ms for 10^4 rows, and deterministic (same data, same bits).

`decide(x, ...)` says whether the data supports two components and where the cut is.
It REFUSES (keeps every row) when any of these holds, and says which:
  - fewer than `min_rows` values (5 parameters need data);
  - no spread (every value the same);
  - BIC(2 components) >= BIC(1): a single Gaussian explains the data as well, with
    fewer parameters (Schwarz's criterion: 2 log L - p log n);
  - the worse component is not a minority (weight > `max_noise`, default 0.5): then the
    "clean" population is the smaller one and the score most likely does not measure
    correctness (a task the model did not learn ranks right and wrong alike);
  - the components overlap: Ashman's D = |mu1 - mu2| / sqrt((s1^2 + s2^2) / 2) below
    `min_separation`. D is the separation in pooled standard deviations (for two equal
    Gaussians, D = sqrt(2) x probit(AUC): D 1.0 ~ AUC 0.76, D 1.5 ~ AUC 0.86, D 2.0 ~
    AUC 0.92; D > 2 is the usual bar for a visibly bimodal density). Below the bar the
    posterior is a weak per-row verdict: a cut would drop right rows nearly as often as
    wrong ones.
Otherwise the cut is one threshold: scanning from the better component's mean toward the
worse side, the first value whose posterior of the worse component exceeds `posterior`
(0.5: the more probable component decides, as DivideMix); every row at or beyond it is
dropped, every row before it kept. One threshold (not the pointwise posterior) because a
Gaussian mixture with unequal variances can assign the far better tail to the wider
component; a row that scores better than a kept row is never dropped, and tied values
always share a verdict.

Trade-offs: a Gaussian per population is an assumption; a long-tailed clean population
can look like two components to BIC (the separation bar guards the worst of it). The
estimated noise fraction (the worse component's weight) is a model estimate, not a
measurement: it is reported so that a user can compare it with what they know of the
data, and the cut drops roughly that share when the components are well separated.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MAX_ITER = 500
TOL = 1e-10
VAR_FLOOR_SD = 0.1
LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class Fit:
    weights: tuple[float, float]  # component weights (sorted by mean, ascending)
    means: tuple[float, float]
    sds: tuple[float, float]
    loglik: float  # of the 2-component fit
    loglik1: float  # of a single Gaussian
    iterations: int

    def bic(self, n: int) -> tuple[float, float]:
        """(BIC of 1 component, BIC of 2), lower is better: -2 log L + p log n."""
        return -2.0 * self.loglik1 + 2 * math.log(n), -2.0 * self.loglik + 5 * math.log(n)

    @property
    def separation(self) -> float:
        """Ashman's D: the means' distance in pooled standard deviations."""
        s1, s2 = self.sds
        return abs(self.means[1] - self.means[0]) / math.sqrt((s1 * s1 + s2 * s2) / 2.0)


def _log_normal(x: np.ndarray, mu: float, var: float) -> np.ndarray:
    return -0.5 * (LOG_2PI + math.log(var) + (x - mu) ** 2 / var)


def _log_joint(x: np.ndarray, w, mu, var) -> np.ndarray:
    """(n, 2): log w_k + log N(x | mu_k, var_k)."""
    return np.stack([math.log(w[k]) + _log_normal(x, mu[k], var[k]) for k in (0, 1)], axis=1)


def _logsumexp(a: np.ndarray) -> np.ndarray:
    m = a.max(axis=1)
    return m + np.log(np.exp(a[:, 0] - m) + np.exp(a[:, 1] - m))


def fit(x: np.ndarray) -> Fit:
    """EM for two 1-D Gaussians from the sorted halves of x (finite values, n >= 4, some
    spread). Deterministic: no random start, a fixed iteration order."""
    x = np.sort(np.asarray(x, dtype=np.float64))
    n = len(x)
    var_all = float(x.var())
    floor = max((VAR_FLOOR_SD ** 2) * var_all, 1e-300)
    half = n // 2
    lo, hi = x[:half], x[half:]
    mu = [float(lo.mean()), float(hi.mean())]
    var = [max(float(lo.var()), floor), max(float(hi.var()), floor)]
    w = [half / n, (n - half) / n]
    prev = -math.inf
    ll = -math.inf
    it = 0
    for it in range(1, MAX_ITER + 1):
        lj = _log_joint(x, w, mu, var)
        lse = _logsumexp(lj)
        ll = float(lse.sum())
        r = np.exp(lj - lse[:, None])  # responsibilities
        nk = r.sum(axis=0)
        if nk.min() <= 1e-9 * n:  # a component emptied: one Gaussian is the fit
            break
        w = [float(nk[0] / n), float(nk[1] / n)]
        mu = [float((r[:, k] * x).sum() / nk[k]) for k in (0, 1)]
        var = [max(float((r[:, k] * (x - mu[k]) ** 2).sum() / nk[k]), floor) for k in (0, 1)]
        if ll - prev < TOL * n:
            break
        prev = ll
    lj = _log_joint(x, w, mu, var)
    ll = float(_logsumexp(lj).sum())
    ll1 = float(_log_normal(x, float(x.mean()), max(var_all, floor)).sum())
    order = (0, 1) if mu[0] <= mu[1] else (1, 0)
    return Fit(weights=tuple(w[k] for k in order), means=tuple(mu[k] for k in order),
               sds=tuple(math.sqrt(var[k]) for k in order), loglik=ll, loglik1=ll1, iterations=it)


def posterior_high(x: np.ndarray, f: Fit) -> np.ndarray:
    """Per value, the posterior of the component with the higher mean."""
    lj = _log_joint(np.asarray(x, dtype=np.float64), f.weights, f.means, [s * s for s in f.sds])
    return np.exp(lj[:, 1] - _logsumexp(lj))


def decide(x: np.ndarray, worse: str = "high", posterior: float = 0.5, min_rows: int = 50,
           min_separation: float = 1.0, max_noise: float = 0.5) -> dict:
    """Fit and judge one group's scores (already transformed; finite). worse = "high":
    high values are the bad ones (a loss); "low": low values are. Returns a dict:
    `applied` (bool), `reason` (why refused, None when applied), the fit (`weights`,
    `means`, `sds`, `bic1`, `bic2`, `separation`), `noise` (the worse component's weight)
    and, when applied, `cut` (drop rows with x >= cut for worse = "high", x <= cut for
    "low") and `dropped` (how many of x)."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    out: dict = {"n": n, "applied": False, "reason": None}
    if n < max(min_rows, 4):
        out["reason"] = f"{n} row(s) < mixture_min_rows {min_rows}"
        return out
    if float(x.max()) == float(x.min()):
        out["reason"] = "every score is the same"
        return out
    z = x if worse == "high" else -x  # from here on, high is worse
    f = fit(z)
    b1, b2 = f.bic(n)
    bad = 1  # the component with the higher (worse) mean
    means = f.means if worse == "high" else tuple(-m for m in f.means)
    out.update({"weights": [round(w, 6) for w in f.weights], "means": [round(m, 6) for m in means],
                "sds": [round(s, 6) for s in f.sds], "bic1": round(b1, 3), "bic2": round(b2, 3),
                "separation": round(f.separation, 4), "noise": round(f.weights[bad], 6), "iterations": f.iterations})
    if b2 >= b1:
        out["reason"] = f"one component fits as well (BIC 2 components {b2:.1f} >= 1 component {b1:.1f})"
        return out
    if f.weights[bad] > max_noise:
        out["reason"] = (f"the worse component is the majority ({f.weights[bad]:.2f} of rows > mixture_max_noise "
                         f"{max_noise}): the score does not look like a noise detector here")
        return out
    if f.separation < min_separation:
        out["reason"] = (f"the components overlap (separation D = {f.separation:.2f} < mixture_min_separation "
                         f"{min_separation})")
        return out
    zs = np.unique(z)  # sorted distinct values: ties share a verdict
    cand = zs[zs >= f.means[0]]
    p = posterior_high(cand, f)
    over = np.flatnonzero(p > posterior)
    if not len(over):
        out["reason"] = f"no score has a posterior of the worse component above {posterior}"
        return out
    cut = float(cand[over[0]])
    out.update({"applied": True, "cut": cut if worse == "high" else -cut, "dropped": int((z >= cut).sum())})
    return out
