"""The statistics the ablation verdicts decide from: intervals, never fixed thresholds on point estimates.

    d = paired_diff(df, "quant_gap", by="arch", a="hybrid", b="shared")   # per seed: hybrid - shared
    d.ci                      # (lo, hi), t-based 95%
    decide(d)                 # "lower" | "higher" | "inconclusive"
    gap_bootstrap(nll_f, nll_q, nbytes)                                    # a bpb gap's CI within one run
    ratio_bootstrap(num, den)  # sum(num) / sum(den) over blocks, bootstrap CI (the probe's super-additivity)
    rate_ci(k, n)             # a divergence rate's Wilson interval
    rate_diff_ci(k1, n1, k2, n2)   # two rates' difference, Newcombe's interval

Differences are paired by seed: a seed sets the init and where the run reads the data, so the seed's
own luck cancels in a difference between arms that share it. With n pairs the interval uses Student's t
with n - 1 degrees of freedom; n = 1 gives no interval, and every decision from it is "inconclusive".
A bpb gap between a model and its quantized artifact is a per-token paired difference: its
uncertainty within one run comes from a bootstrap over blocks of tokens (a window, or a document), not
from the seeds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

from ..evaluate import gap_bootstrap as _gap_bootstrap


# -- Student's t, without scipy: the regularized incomplete beta by its continued fraction --------------

def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of I_x(a, b) (modified Lentz; converges fast for x < (a + 1) / (a + b + 2))."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t (bisection on t_cdf; 1e-12 absolute)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"t_quantile: p must be in (0, 1), not {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


# -- intervals -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Estimate:
    """A mean with its interval. `lo`/`hi` are NaN when n cannot give one (n < 2, or no spread to
    estimate from: a single bootstrap block)."""
    mean: float
    lo: float
    hi: float
    n: int
    level: float = 0.95
    what: str = ""

    @property
    def ci(self) -> tuple[float, float]:
        return self.lo, self.hi

    @property
    def half_width(self) -> float:
        return (self.hi - self.lo) / 2

    def __str__(self) -> str:
        if math.isnan(self.lo):
            return f"{self.mean:+.4f} (n = {self.n}: no interval)"
        return f"{self.mean:+.4f} [{self.lo:+.4f}, {self.hi:+.4f}] ({self.level:.0%} CI, n = {self.n})"


def mean_ci(values: Sequence[float], level: float = 0.95, what: str = "") -> Estimate:
    """Mean of independent values with a t-based interval."""
    x = np.asarray([v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))], dtype=float)
    n = len(x)
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, level, what)
    m = float(x.mean())
    if n < 2:
        return Estimate(m, float("nan"), float("nan"), n, level, what)
    half = t_quantile(0.5 + level / 2, n - 1) * float(x.std(ddof=1)) / math.sqrt(n)
    return Estimate(m, m - half, m + half, n, level, what)


def paired_diff(df: pd.DataFrame, value: str, by: str, a: object, b: object, pair: str | Sequence[str] = "seed",
                level: float = 0.95) -> Estimate:
    """value(a) - value(b) per pair (default: per seed; rows of one arm and pair are averaged first),
    over the pairs both arms have, with a t interval. `by` names the column holding a and b."""
    keys = [pair] if isinstance(pair, str) else list(pair)
    sub = df[df[by].isin([a, b])].dropna(subset=[value])
    wide = sub.groupby(keys + [by])[value].mean().unstack(by)
    if a not in wide or b not in wide:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, level, f"{a} - {b}")
    d = (wide[a] - wide[b]).dropna()
    return mean_ci(d.tolist(), level, f"{value}: {a} - {b}")


def rate_ci(k: int, n: int, level: float = 0.95) -> Estimate:
    """k events in n runs: the rate with its Wilson score interval (sound at k = 0 or k = n, where the
    normal interval collapses to a point)."""
    if n <= 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, level, "rate")
    z = _normal_quantile(0.5 + level / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n, level, "rate")


def rate_diff_ci(k1: int, n1: int, k2: int, n2: int, level: float = 0.95) -> Estimate:
    """The difference of two rates, k1/n1 - k2/n2, with Newcombe's interval (built from the two Wilson
    intervals; sound at 0/n and n/n, where the normal interval is not)."""
    a, b = rate_ci(k1, n1, level), rate_ci(k2, n2, level)
    if a.n == 0 or b.n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0, level, "rate difference")
    d = a.mean - b.mean
    lo = d - math.sqrt((a.mean - a.lo) ** 2 + (b.hi - b.mean) ** 2)
    hi = d + math.sqrt((a.hi - a.mean) ** 2 + (b.mean - b.lo) ** 2)
    return Estimate(d, lo, hi, min(n1, n2), level, "rate difference")


def _normal_quantile(p: float) -> float:
    """The standard normal quantile: Student's t with a very large df is the normal to 1e-6."""
    return t_quantile(p, 1e9)


def gap_bootstrap(nll_float: Sequence[float] | np.ndarray, nll_quant: Sequence[float] | np.ndarray,
                  nbytes: Sequence[float] | np.ndarray, n_boot: int = 2000, level: float = 0.95,
                  seed: int = 0) -> Estimate:
    """The bpb gap (quantized - float) of one run with a bootstrap interval (`evaluate.gap_bootstrap`,
    which `recur eval` writes to eval.json as quant_gap_ci). Each entry is one block of scored tokens (a
    window or a document): its summed nll in nats under each weight set and its target bytes."""
    gap, lo, hi = _gap_bootstrap(nll_float, nll_quant, nbytes, n_boot, level, seed)
    return Estimate(gap, lo, hi, len(nbytes), level, "bpb gap")


def ratio_bootstrap(num: Sequence[float] | np.ndarray, den: Sequence[float] | np.ndarray, n_boot: int = 2000,
                    level: float = 0.95, seed: int = 0) -> Estimate:
    """sum(num) / sum(den) over blocks (sequences) with a percentile bootstrap interval over the blocks:
    the two sums move together on a hard block, so the ratio is resampled as a pair. Where the
    denominator's own interval reaches 0, the ratio's interval runs off towards +-infinity, which is the
    honest reading: the ratio is not resolved. Fewer than two blocks: no interval."""
    a, b = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"ratio_bootstrap: num and den must be 1-d and alike, got {a.shape} and {b.shape}")
    total = float(b.sum())
    point = float(a.sum()) / total if total else float("nan")
    if len(a) < 2:
        return Estimate(point, float("nan"), float("nan"), len(a), level, "ratio")
    idx = np.random.default_rng(seed).integers(0, len(a), size=(n_boot, len(a)))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = a[idx].sum(1) / b[idx].sum(1)
    r = r[~np.isnan(r)]
    lo, hi = np.quantile(r, [0.5 - level / 2, 0.5 + level / 2]) if len(r) else (float("nan"),) * 2
    return Estimate(point, float(lo), float(hi), len(a), level, "ratio")


# -- decisions -------------------------------------------------------------------------------------------

def decide(est: Estimate, margin: float = 0.0) -> str:
    """Where the interval lies against 0 (or +-margin, a difference too small to matter, named by the
    caller): "higher" or "lower" when it excludes the band, "equivalent" when it lies inside it (only
    with a margin), else "inconclusive". No interval (n < 2): "inconclusive"."""
    if math.isnan(est.lo) or math.isnan(est.hi):
        return "inconclusive"
    if est.lo > margin:
        return "higher"
    if est.hi < -margin:
        return "lower"
    if margin > 0 and -margin <= est.lo and est.hi <= margin:
        return "equivalent"
    return "inconclusive"
