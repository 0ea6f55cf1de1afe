"""Curves align seeds by step: a missing value breaks the mean line, a stretch with no logged step is a
gap, not a straight segment; a step logged twice keeps its last value."""
from __future__ import annotations

import math

import pandas as pd
import pytest

from recur_lib.lab.plots import aligned


def test_seeds_align_by_step_and_gaps_stay_gaps() -> None:
    a = pd.Series([1.0, 2.0, 3.0, 4.0, 5.0], index=[10, 20, 30, 40, 50])
    b = pd.Series([1.5, 2.5, 4.5, 5.5, 9.0, 6.5], index=[10, 20, 40, 50, 50, 130])  # no step 30; 50 twice
    t = aligned([a, b])
    mean = t.mean(axis=1, skipna=False)
    assert mean[10] == 1.25 and math.isnan(mean[30])  # one seed missing: no mean over fewer seeds
    assert t.loc[50, 1] == 9.0  # the last of a step logged twice
    assert 90.0 in t.index and t.loc[90.0].isna().all()  # 50 -> 130 is a hole: a NaN row inside it
    assert list(t.index) == [10, 20, 30, 40, 50, 90.0, 130]


def test_xy_error_bars_are_the_95_percent_t_interval_and_axes_have_names() -> None:
    import matplotlib
    matplotlib.use("Agg")
    from recur_lib.lab.plots import xy
    from recur_lib.lab.stats import mean_ci
    df = pd.DataFrame({"loops": [1, 1, 1, 2, 2, 3], "final_val_bpb": [2.0, 2.1, 2.3, 1.9, 2.0, 1.8]})
    ax = xy(df, "loops", "final_val_bpb")
    bars = ax.containers[0]
    segments = bars.lines[2][0]  # the vertical bar of each point
    half = [(seg[1][1] - seg[0][1]) / 2 for seg in segments.get_segments()]
    e1, e2 = mean_ci([2.0, 2.1, 2.3]), mean_ci([1.9, 2.0])
    assert half[:2] == [pytest.approx(e1.hi - e1.mean), pytest.approx(e2.hi - e2.mean)]
    assert half[2] == 0.0  # one run: no interval drawn
    assert ax.get_xlabel() == "loop count L" and ax.get_ylabel() == "val bpb"
    ax2 = xy(df, "loops", "final_val_bpb", line=False)
    assert len(ax2.lines[-1].get_xdata()) == 6  # every run a marker


def test_xy_draws_a_single_runs_own_interval_when_the_table_has_one() -> None:
    import matplotlib
    matplotlib.use("Agg")
    from recur_lib.lab.plots import xy
    df = pd.DataFrame({"loops": [1, 1, 2], "quant_gap": [0.010, 0.012, 0.020],
                       "quant_gap_lo": [0.0, 0.0, 0.017], "quant_gap_hi": [0.1, 0.1, 0.024]})
    segments = xy(df, "loops", "quant_gap").containers[0].lines[2][0].get_segments()
    (_, lo1), (_, hi1) = segments[0]
    assert hi1 - lo1 < 0.05  # two runs: their t interval, not the runs' own intervals
    (_, lo2), (_, hi2) = segments[1]
    assert (lo2, hi2) == (pytest.approx(0.017), pytest.approx(0.024))  # one run: its bootstrap interval


def test_smoothed_curves_are_what_the_divergence_monitor_reads(tmp_path) -> None:
    import json
    import matplotlib
    matplotlib.use("Agg")
    from recur_lib.lab.plots import curves
    from recur_lib.train import LossWatch, watch_loss
    losses = [6.9, 5.0, 4.8, 15.0, 14.0, 4.6, 4.5, 4.4]  # a data spike at steps 4-5
    rows = [{"step": i + 1, "train_loss": v} for i, v in enumerate(losses)]
    rows.insert(4, {"step": 5, "train_loss": 99.0})  # logged before an interruption; the resumed run's value wins
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ax = curves(pd.DataFrame({"arm": ["a"], "run_dir": [str(tmp_path)]}), smooth=True)
    w, ema = LossWatch(), []
    for v in losses:
        w, _ = watch_loss(w, v, rel_nats=0, patience=50)
        ema.append(w.ema)
    assert list(ax.get_lines()[0].get_ydata()) == pytest.approx(ema)
    assert ax.get_ylabel().startswith("smoothed train loss")


def test_paired_curves_cancel_what_every_arm_of_a_seed_shares(tmp_path) -> None:
    import json
    import matplotlib
    matplotlib.use("Agg")
    from recur_lib.lab.plots import paired_curves
    spike = [0.0, 0.0, 9.0, 0.0, 0.0]  # a hard batch at step 3, for every arm of seed 0
    rows = []
    for seed, shift in ((0, 0.0), (1, 5.0)):
        for arm, offset in (("x1", 0.0), ("x9.8", 0.3)):
            d = tmp_path / f"{arm}-{seed}"
            d.mkdir()
            losses = [4.0 + shift + offset + (spike[i] if seed == 0 else 0.0) for i in range(5)]
            (d / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, "train_loss": v}) + "\n"
                                                     for i, v in enumerate(losses)))
            rows.append({"arm": arm, "seed": seed, "b": float(arm[1:]), "run_dir": str(d)})
    ax = paired_curves(pd.DataFrame(rows), ref=1.0, by="b")
    (line,) = [ln for ln in ax.get_lines() if ln.get_label().startswith("9.8")]
    assert line.get_label() == "9.8 (n=2)" and list(line.get_ydata()) == pytest.approx([0.3] * 5)
    assert "minus 1.0's" in ax.get_ylabel()
    assert "minus x1's" in paired_curves(pd.DataFrame(rows), ref=1.0, by="b", ref_label="x1").get_ylabel()
