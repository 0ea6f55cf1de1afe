"""Plot helpers for the notebooks: pure functions from run tables / records to matplotlib axes."""
from __future__ import annotations

from functools import partial
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..config import Config
from ..train import LOSS_EMA_ALPHA
from .runs import metric_by_step
from .stats import mean_ci


def _ax(ax: Any) -> Any:
    return ax if ax is not None else plt.subplots(figsize=(6.5, 4))[1]


# Axis labels for the metrics a run logs (metrics.jsonl keys).
LABELS = {"train_loss": "train loss (nats per token)", "val_bpb": "val bits per byte", "val_loss": "val loss (nats)",
          "lr": "learning-rate multiplier", "final_val_bpb": "final val bits per byte", "quant_gap": "quantized - float bpb"}


def aligned(series: Sequence[pd.Series]) -> pd.DataFrame:
    """Per-run curves (indexed by step) side by side, aligned by step: a column per run; a step where
    some run has no value is NaN for the mean (so the drawn line breaks there rather than averaging
    fewer runs), and a stretch with no logged step at all (longer than 1.5x the usual spacing) gets a
    NaN row, so that matplotlib leaves a gap instead of drawing a straight segment across it. A step
    logged twice (a resumed run) keeps its last value."""
    cols = [s[~s.index.duplicated(keep="last")].rename(i) for i, s in enumerate(series)]
    table = pd.concat(cols, axis=1).sort_index()
    steps = table.index.to_numpy()
    if len(steps) > 2:
        gaps = np.diff(steps)
        usual = np.median(gaps)
        holes = [a + g / 2 for a, g in zip(steps[:-1], gaps) if g > 1.5 * usual]
        if holes:
            table = pd.concat([table, pd.DataFrame(np.nan, index=holes, columns=table.columns)]).sort_index()
    return table


def run_curve(run_dir: str, metric: str, smooth: bool = False) -> pd.Series | None:
    """One run's `metric` by step (runs.metric_by_step); `smooth`: through the divergence monitor's EMA
    (train.LOSS_EMA_ALPHA)."""
    s = metric_by_step(run_dir, metric)
    return s.ewm(alpha=LOSS_EMA_ALPHA, adjust=False).mean() if smooth and s is not None else s


def curves(df: pd.DataFrame, metric: str = "train_loss", by: str = "arm", ax: Any = None,
           logy: bool = False, smooth: bool = False) -> Any:
    """Mean curve per arm over its seeds, aligned by step, with a min-max band; one line per arm.
    Where a seed has no value the line breaks (`aligned`). `smooth`: each run's curve through the
    divergence monitor's EMA (train.LOSS_EMA_ALPHA), the loss its instability statistics read."""
    ax = _ax(ax)
    for arm, runs in df.groupby(by, sort=False):
        series = [c for run_dir in runs["run_dir"].dropna() if (c := run_curve(run_dir, metric, smooth)) is not None]
        if not series:
            continue
        table = aligned(series)
        (line,) = ax.plot(table.index, table.mean(axis=1, skipna=False), label=f"{arm} (n={table.shape[1]})")
        if table.shape[1] > 1:
            ax.fill_between(table.index, table.min(axis=1), table.max(axis=1), alpha=0.2, color=line.get_color())
    ax.set_xlabel("training step")
    ax.set_ylabel(("smoothed " if smooth else "") + LABELS.get(metric, metric))
    if logy:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    return ax


def paired_curves(df: pd.DataFrame, ref: Any, metric: str = "train_loss", by: str = "arm", ax: Any = None,
                  smooth: bool = True, ref_label: str | None = None) -> Any:
    """Each arm's curve minus the `ref` arm's (by `by`), run by run within a seed, then the mean over
    seeds: arms of one seed read the same batches, so the hard batches every arm meets cancel and what
    is left is the arms' own difference. One line per arm other than ref; a zero line for ref.
    `ref_label`: how the y label names ref (default: ref itself)."""
    ax = _ax(ax)
    curve = partial(run_curve, metric=metric, smooth=smooth)
    refs = {r["seed"]: curve(r["run_dir"]) for _, r in df[df[by] == ref].iterrows() if isinstance(r["run_dir"], str)}
    for arm, runs in df[df[by] != ref].groupby(by, sort=False):
        diffs = [c - refs[r["seed"]] for _, r in runs.iterrows()
                 if refs.get(r["seed"]) is not None and isinstance(r["run_dir"], str)
                 and (c := curve(r["run_dir"])) is not None]
        if diffs:
            table = aligned(diffs)
            ax.plot(table.index, table.mean(axis=1, skipna=False), label=f"{arm} (n={table.shape[1]})")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("training step")
    what = LABELS.get(metric, metric).split(" (")[0]
    ax.set_ylabel(("smoothed " if smooth else "") + what + f" minus {ref_label or ref}'s")
    ax.legend(fontsize=8)
    return ax


def bars(summary: pd.DataFrame, metric: str = "mean", err: str = "std", by: str = "arm", ax: Any = None,
         ylabel: str = "val bpb") -> Any:
    """Bar per arm with error bars (summary from runs.summarize)."""
    ax = _ax(ax)
    x = np.arange(len(summary))
    ax.bar(x, summary[metric], yerr=summary[err].fillna(0) if err in summary else None, capsize=4)
    ax.set_xticks(x, summary[by], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    return ax


def lora_norms(run_dir: str, which: str = "BA", ax: Any = None, label: str | None = None) -> Any:
    """Per-loop norm of the LoRA factors over training: root-sum-square over blocks and targets.
    which: "A", "B", "BA" (for the vector form: v, u, and |u||v|) or "BA/W" (||BA||_2 / ||W||_2, the
    delta's size against the weight it modifies: mean over blocks and targets). With `label`, one line
    for the run (all loops together) under that label, so that runs can share an axis."""
    ax = _ax(ax)
    logged = metric_by_step(run_dir, "lora_norms")
    if logged is None:
        ax.set_title("no LoRA norms logged")
        return ax
    k = {"A": 0, "B": 1, "BA": 2, "BA/W": 3}[which]
    ratio = which == "BA/W"
    per_loop: dict[str, list[float]] = {}
    for norms in logged:
        agg: dict[str, list[float]] = {}
        for key, vals in norms.items():
            loop = "all" if label else key.split(".")[0].split("_")[1]  # "b1_l2.q" -> "l2"
            if len(vals) > k:
                agg.setdefault(loop, []).append(vals[k])
        for loop, v in agg.items():
            per_loop.setdefault(loop, []).append(sum(v) / len(v) if ratio else sum(x * x for x in v) ** 0.5)
    for loop, vals in sorted(per_loop.items()):
        ax.plot(logged.index.to_numpy()[: len(vals)], vals, label=label or f"loop {loop[1:]}")
    ax.set_xlabel("training step")
    ax.set_ylabel("mean ||BA||₂ / ||W||₂" if ratio else f"||{which}|| (all blocks, targets)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    return ax


def schedule(cfg: Config, ax: Any = None) -> Any:
    """The execution schedule as a strip of boxes: one per step, coloured by unique block, loops marked."""
    from ..model.schedule import build_schedule, n_unique_blocks
    steps = build_schedule(cfg.schedule)
    ax = ax if ax is not None else plt.subplots(figsize=(max(4, 0.45 * len(steps)), 1.4))[1]
    cmap = plt.get_cmap("tab20")
    for i, st in enumerate(steps):
        ax.add_patch(plt.Rectangle((i, 0), 0.9, 1, color=cmap(st.block % 20), alpha=0.85))
        ax.text(i + 0.45, 0.5, str(st.block), ha="center", va="center", fontsize=8)
        if i and (st.loop != steps[i - 1].loop or st.role != steps[i - 1].role):
            ax.axvline(i - 0.05, color="k", lw=1)
    ax.set_xlim(-0.1, len(steps))
    ax.set_ylim(0, 1)
    ax.set_yticks([])
    ax.set_xlabel(f"{cfg.schedule.kind}: {len(steps)} steps over {n_unique_blocks(cfg.schedule)} unique blocks")
    return ax


def budget(artifact: Mapping[str, Any], ax: Any = None) -> Any:
    """Artifact bytes by part: code, and each tensor group's compressed bytes, against the budget."""
    ax = _ax(ax)
    parts = {"code": artifact["code_bytes"], **{g: v["zstd_bytes"] for g, v in artifact["groups"].items()}}
    left = 0
    for name, b in parts.items():
        ax.barh(0, b, left=left, label=f"{name} {b:,}")
        left += b
    ax.axvline(artifact["budget_bytes"], color="r", ls="--", label=f"budget {artifact['budget_bytes']:,}")
    ax.set_yticks([])
    ax.set_xlabel("bytes (group bars: each group compressed alone)")
    ax.legend(fontsize=8, loc="upper right")
    return ax


# Axis labels for the table columns the notebooks plot (any other column is labelled by its name).
AXIS_LABELS = {"final_val_bpb": "val bpb", "float_bpb": "val bpb (float weights)", "quant_gap": "quantized - float bpb",
               "artifact_bytes": "artifact bytes (code + model)", "bits": "export bits", "loops": "loop count L",
               "eval_loops": "loop count at evaluation", "train_time_s": "training time (s)",
               "gflops": "training GFLOPs (LM head and attention included)"}


def xy(df: pd.DataFrame, x: str, y: str, by: str | None = None, ax: Any = None, err: bool = True,
       line: bool = True) -> Any:
    """y against x, one series per `by` group: the mean over the runs at each x with its 95% t interval
    as error bars (`stats.mean_ci`). Where a single run stands behind a point, its own interval from
    columns `<y>_lo`/`<y>_hi` when the table has them (a within-run bootstrap, e.g. the quantization
    gap's over eval windows), else none. `line=False` draws every run as a marker instead (for x values
    that do not form a series, such as each run's FLOPs)."""
    ax = _ax(ax)
    groups: Sequence[tuple[Any, pd.DataFrame]] = list(df.groupby(by, sort=False)) if by else [("", df)]
    lo, hi = f"{y}_lo", f"{y}_hi"
    for name, g in groups:
        g = g.dropna(subset=[y])
        if not line:
            ax.plot(g[x], g[y], "o", alpha=0.8, label=str(name))
            continue
        xs, mean, below, above = [], [], [], []
        for xv, v in g.groupby(x):
            e = mean_ci(v[y].tolist())
            xs.append(xv)
            mean.append(e.mean)
            if len(v) == 1 and {lo, hi} <= set(v.columns) and not v[[lo, hi]].isna().any(axis=None):
                below.append(e.mean - float(v[lo].iloc[0]))
                above.append(float(v[hi].iloc[0]) - e.mean)
            else:
                half = 0.0 if np.isnan(e.hi) else e.hi - e.mean
                below.append(half)
                above.append(half)
        ax.errorbar(xs, mean, yerr=[below, above] if err else None, marker="o", capsize=3, label=str(name))
    ax.set_xlabel(AXIS_LABELS.get(x, x))
    ax.set_ylabel(AXIS_LABELS.get(y, y))
    if by:
        ax.legend(fontsize=8)
    return ax
