"""Curves align seeds by step: a missing value breaks the mean line, a stretch with no logged step is a
gap, not a straight segment; a step logged twice keeps its last value."""
from __future__ import annotations

import math

import pandas as pd

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
