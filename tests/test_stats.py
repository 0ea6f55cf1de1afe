"""The ablations' statistics: t quantiles against published tables, interval coverage, pairing by seed,
the bootstrap of a within-run bpb gap, Wilson rates, and every branch of `decide`."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from recur_lib.lab.stats import (Estimate, decide, gap_bootstrap, mean_ci, paired_diff, ratio_bootstrap, rate_ci,
                                 rate_diff_ci, t_cdf, t_quantile)


@pytest.mark.parametrize("df, q975", [(1, 12.706205), (2, 4.302653), (4, 2.776445), (10, 2.228139),
                                      (30, 2.042272), (1e9, 1.959964)])
def test_t_quantile_matches_the_tables(df: float, q975: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(q975, abs=2e-6)
    assert t_quantile(0.025, df) == pytest.approx(-q975, abs=2e-6)
    assert t_cdf(q975, df) == pytest.approx(0.975, abs=1e-7)
    assert t_cdf(0.0, df) == pytest.approx(0.5)


def test_mean_ci_by_hand_and_without_enough_values() -> None:
    e = mean_ci([1.0, 2.0, 3.0])
    half = 4.302653 * 1.0 / math.sqrt(3)
    assert e.mean == 2.0 and e.n == 3 and e.lo == pytest.approx(2 - half, abs=1e-5) and e.hi == pytest.approx(2 + half, abs=1e-5)
    one = mean_ci([0.5])
    assert one.mean == 0.5 and math.isnan(one.lo) and "no interval" in str(one)
    assert mean_ci([]).n == 0


def test_t_interval_covers_the_mean_at_its_level() -> None:
    rng = np.random.default_rng(0)
    intervals = [mean_ci(rng.normal(1.0, 2.0, size=4).tolist()) for _ in range(2000)]
    assert 0.93 <= sum(e.lo <= 1.0 <= e.hi for e in intervals) / 2000 <= 0.97


def test_paired_diff_pairs_by_seed_and_cancels_the_seeds_luck() -> None:
    """Seed offsets of +-0.1 swamp an arm difference of 0.01 between runs, but not within a seed."""
    rows = []
    for seed, luck in enumerate([0.1, -0.1, 0.05, -0.07]):
        rows += [{"arm": "a", "seed": seed, "bpb": 2.50 + luck + 0.001 * seed},
                 {"arm": "b", "seed": seed, "bpb": 2.51 + luck}]
    rows.append({"arm": "a", "seed": 9, "bpb": 1.0})  # no partner: left out
    d = paired_diff(pd.DataFrame(rows), "bpb", by="arm", a="a", b="b")
    assert d.n == 4 and d.mean == pytest.approx(-0.01 + 0.0015)
    assert d.hi < 0 and decide(d) == "lower"
    unpaired = mean_ci([r["bpb"] for r in rows if r["arm"] == "a" and r["seed"] < 9])
    assert unpaired.hi - unpaired.lo > 10 * (d.hi - d.lo)
    assert paired_diff(pd.DataFrame(rows), "bpb", by="arm", a="a", b="zzz").n == 0


def test_rate_ci_is_wilsons() -> None:
    none = rate_ci(0, 3)
    z2 = 1.959964 ** 2
    assert none.mean == 0 and none.lo == 0 and none.hi == pytest.approx(z2 / (3 + z2), abs=1e-5)
    every = rate_ci(3, 3)
    assert every.hi == 1 and every.lo == pytest.approx(3 / (3 + z2), abs=1e-5)
    assert rate_ci(5, 10).lo < 0.5 < rate_ci(5, 10).hi


def test_gap_bootstrap_is_the_ratio_with_a_paired_interval() -> None:
    rng = np.random.default_rng(1)
    nbytes = rng.integers(200, 400, size=200).astype(float)
    f = nbytes * 1.7 * math.log(2) + rng.normal(0, 5, size=200)  # ~1.7 bpb, block noise far above the gap
    q = f + 0.004 * math.log(2) * nbytes + rng.normal(0, 0.2, size=200)
    g = gap_bootstrap(f, q, nbytes, n_boot=1000)
    assert g.mean == pytest.approx((q - f).sum() / math.log(2) / nbytes.sum())
    assert g.lo < 0.004 < g.hi and g.lo > 0 and decide(g) == "higher"
    assert math.isnan(gap_bootstrap([1.0], [1.1], [10.0]).lo)
    with pytest.raises(ValueError, match="same blocks"):
        gap_bootstrap([1.0, 2.0], [1.0], [3.0, 3.0])


@pytest.mark.parametrize("lo, hi, margin, expect", [
    (0.01, 0.03, 0.0, "higher"), (-0.03, -0.01, 0.0, "lower"), (-0.01, 0.02, 0.0, "inconclusive"),
    (-0.002, 0.003, 0.005, "equivalent"), (-0.002, 0.008, 0.005, "inconclusive"), (0.006, 0.01, 0.005, "higher"),
    (float("nan"), float("nan"), 0.0, "inconclusive")])
def test_decide_every_branch(lo: float, hi: float, margin: float, expect: str) -> None:
    assert decide(Estimate((lo + hi) / 2, lo, hi, 3), margin) == expect


def test_rate_difference_is_newcombes() -> None:
    """3/3 against 0/3 is resolved; 3/3 against 2/3, or 0/3 against 0/3, is not."""
    d = rate_diff_ci(3, 3, 0, 3)
    w = rate_ci(3, 3)
    assert d.mean == 1 and d.lo == pytest.approx(1 - math.sqrt(2 * (1 - w.lo) ** 2)) and d.hi == 1
    assert decide(d) == "higher" and decide(rate_diff_ci(0, 3, 3, 3)) == "lower"
    assert decide(rate_diff_ci(3, 3, 2, 3)) == decide(rate_diff_ci(0, 3, 0, 3)) == "inconclusive"
    assert rate_diff_ci(1, 0, 0, 3).n == 0


def test_ratio_bootstrap_resolves_a_clear_ratio_and_not_a_denominator_near_zero() -> None:
    rng = np.random.default_rng(0)
    den = 1.0 + 0.1 * rng.standard_normal(200)
    clear = ratio_bootstrap(1.5 * den + 0.01 * rng.standard_normal(200), den)
    assert clear.mean == pytest.approx(1.5, abs=0.01) and clear.lo < clear.mean < clear.hi
    assert decide(Estimate(clear.mean - 1.2, clear.lo - 1.2, clear.hi - 1.2, clear.n)) == "higher"
    noisy = ratio_bootstrap(0.01 + rng.standard_normal(200), 0.001 + rng.standard_normal(200))
    assert noisy.hi - noisy.lo > 10  # a denominator indistinguishable from 0: the ratio is not resolved
    assert math.isnan(ratio_bootstrap([1.0], [2.0]).lo) and ratio_bootstrap([1.0], [2.0]).mean == 0.5
    with pytest.raises(ValueError, match="alike"):
        ratio_bootstrap([1.0, 2.0], [1.0])
