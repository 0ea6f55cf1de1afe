"""The three ablations: their arms, their tables, and the sentences printed under the tables.

The verdicts are computed from the results, so a notebook never states a finding its own data do not
show. Each decides from an interval (`stats.py`: paired by seed, t-based; Wilson and Newcombe for
divergence rates), never from a fixed threshold on a point estimate, and says "inconclusive" when the
interval straddles the decision: with one seed, every verdict is inconclusive.
"""
from __future__ import annotations

import math
from typing import Callable

import pandas as pd

from ..config import Config
from .runs import Arm, metric_by_step
from .stats import Estimate, decide, mean_ci, paired_diff, rate_ci, rate_diff_ci

LORA_ARMS = ("rank1-vectors-adamw", "rank8-muon-keller", "rank8-muon-none", "rank8-muon-moonlight", "rank8-adamw")


# -- arms ---------------------------------------------------------------------------------------------


def lora_arms(lr_adamw: float, lr_muon: float, rank: int = 8) -> dict[str, Arm]:
    """#1096: rank-1 vectors on AdamW vs rank-r matrices routed to Muon (three scale rules) or AdamW."""
    mats = {"model.loop_lora_rank": rank, "model.loop_lora_form": "matrices"}
    arms = [Arm("rank1-vectors-adamw", {"model.loop_lora_rank": 1, "model.loop_lora_form": "vectors",
                                        "optim.lora_optimizer": "adamw", "optim.lora_lr": lr_adamw},
                {"rank": 1, "optimizer": "adamw", "scale_rule": None})]
    arms += [Arm(f"rank{rank}-muon-{rule}", {**mats, "optim.lora_optimizer": "muon", "optim.lora_scale_rule": rule,
                                             "optim.lora_lr": lr_muon}, {"rank": rank, "optimizer": "muon", "scale_rule": rule})
             for rule in ("keller", "none", "moonlight")]
    arms.append(Arm(f"rank{rank}-adamw", {**mats, "optim.lora_optimizer": "adamw", "optim.lora_lr": lr_adamw},
                    {"rank": rank, "optimizer": "adamw", "scale_rule": None}))
    return {a.name: a for a in arms}


_PEAK_NAMES = {"loss_peak_excess": "peak loss rise", "clean_peak_excess": "peak loss rise without the common data spikes"}


def lora_regime_arms(dim: int, rank: int = 8, b_mults: tuple[float, ...] | None = None,
                     betas: tuple[float, ...] = (0.95, 0.99), lrs: tuple[float, ...] = (0.01, 0.04),
                     warmup_frac: float = 2 / 3) -> dict[str, Arm]:
    """#1096 at its regime (stage 1 of the LoRA question): rank-r matrices on Muon with scale rule
    'none' and an explicit B-step multiplier, so that B's step relative to a base weight's is the
    multiplier itself: 1, sqrt(dim / rank) (what the keller rule gives; 2.8 at 64 x 8) and 9.8 (#1096's
    576 x 8 B as measured through 5-step Newton-Schulz in bf16); x the final Muon momentum (the seed's
    0.99 and the baseline's 0.95, warmed from 0.92 over `warmup_frac` of the run, then held, as the seed's
    1,500-step warmup was followed by its divergences) x the LoRA lr. Controls: rank r on AdamW at 0.025
    (#1096 v3) and 0.01 (v7 without its warmup), rank-1 vectors on AdamW at 0.025 (the seed's final
    model), rank-1 matrices on Muon keller.
    Labels: optimizer, rank, b_mult, beta, lr."""
    b_mults = b_mults or (1.0, round((dim / rank) ** 0.5, 3), 9.8)
    mats = {"model.loop_lora_rank": rank, "model.loop_lora_form": "matrices"}
    momentum = {"optim.muon_momentum_warmup_start": 0.92, "optim.muon_momentum_warmup_frac": warmup_frac}
    arms = []
    for beta in betas:
        for mult in b_mults:
            for lr in lrs:
                arms.append(Arm(f"muon-r{rank}-b{mult:g}-beta{beta:g}-lr{lr:g}",
                                {**mats, **momentum, "optim.muon_momentum": beta, "optim.lora_optimizer": "muon",
                                 "optim.lora_scale_rule": "none", "optim.lora_b_step_mult": mult, "optim.lora_lr": lr},
                                {"optimizer": "muon", "rank": rank, "b_mult": mult, "beta": beta, "lr": lr}))
    controls = [("adamw", rank, "matrices", 0.025, None), ("adamw", rank, "matrices", 0.01, None),
                ("adamw", 1, "vectors", 0.025, None), ("muon", 1, "matrices", min(lrs), "keller")]
    for opt, r, form, lr, rule in controls:
        over = {"model.loop_lora_rank": r, "model.loop_lora_form": form, "optim.lora_optimizer": opt,
                "optim.lora_lr": lr, **momentum, "optim.muon_momentum": max(betas)}
        if rule:
            over["optim.lora_scale_rule"] = rule
        arms.append(Arm(f"control-{opt}-r{r}-{form}-lr{lr:g}", over,
                        {"optimizer": opt, "rank": r, "b_mult": None, "beta": max(betas), "lr": lr}))
    return {a.name: a for a in arms}


def boundary_arms(df: pd.DataFrame, k: int = 3, threshold: float = 1.0, peak: str = "loss_peak_excess") -> list[str]:
    """Stage 2 of the LoRA question: the k Muon grid arms nearest the instability boundary, the ones
    more seeds can move from one side to the other. Nearness is the distance of an arm's mean peak loss
    rise over its running minimum (column `peak`; `clean_peak_excess` leaves out the data spikes every
    arm meets, which otherwise set every arm's peak alike) from `threshold` (the divergence criterion's
    1 nat), on a log scale so that 0.5 and 2 nats are equally near; diverged runs count at least the
    threshold."""
    grid = df[(df["optimizer"] == "muon") & df["b_mult"].notna() & df["status"].isin(["finished", "diverged"])]
    if grid.empty:
        return []
    peak = grid[peak].astype(float).fillna(0.0).clip(lower=1e-3)
    peak = peak.where(grid["status"] != "diverged", peak.clip(lower=threshold))
    dist = (peak / threshold).map(math.log).abs().groupby(grid["arm"], sort=False).mean()
    return dist.sort_values(kind="stable").index[:k].tolist()


def relative_instability(df: pd.DataFrame, alpha: float = 0.1, spike: float = 0.5) -> pd.DataFrame:
    """Instability with the batches every arm finds hard taken out. Arms of one seed read the same
    tokens in the same order, so a batch that is hard for every model (a data spike) raises every run's
    loss at the same step and swamps `loss_peak_excess`. Steps where the median loss over the seed's
    runs jumps more than `spike` nats above its own EMA are left out, and on the rest each run gets the
    divergence monitor's statistic: the peak of its smoothed loss (EMA, alpha 0.1) over its running
    minimum (`clean_peak_excess`). `rel_spikes` counts the steps where a run's loss exceeds that median
    by more than `spike`: its own spikes. Needs at least three runs per seed (a median of two is their
    mean); rows with fewer get NaN. Returns df with the two columns added."""
    out = df.copy()
    out["clean_peak_excess"], out["rel_spikes"] = float("nan"), float("nan")
    for _, g in df.groupby("seed"):
        curves = {}
        for i, r in g.iterrows():
            c = metric_by_step(r["run_dir"], "train_loss") if isinstance(r.get("run_dir"), str) else None
            if c is not None:
                curves[i] = c
        if len(curves) < 3:
            continue
        table = pd.DataFrame(curves)
        med = table.median(axis=1)
        common = med - med.ewm(alpha=alpha, adjust=False).mean().shift(1) > spike
        for i in curves:
            own = table[i][~common].dropna()
            ema = own.ewm(alpha=alpha, adjust=False).mean()
            out.loc[i, "clean_peak_excess"] = float((ema - ema.cummin()).max())
            out.loc[i, "rel_spikes"] = int((table[i] - med > spike).sum())
    return out


def looped(core: int, loops: int) -> dict[str, object]:
    """The schedule overrides of a fully shared model: `core` blocks run `loops` times."""
    return {"schedule.kind": "looped", "schedule.n_prelude": 0, "schedule.n_core": core, "schedule.n_loops": loops,
            "schedule.n_coda": 0}


def hybrid(core: int, loops: int) -> dict[str, object]:
    """The schedule overrides of a hybrid: one unique block, `core` shared blocks run `loops` times, one
    unique block."""
    return {"schedule.kind": "hybrid", "schedule.n_prelude": 1, "schedule.n_core": core, "schedule.n_loops": loops,
            "schedule.n_coda": 1}


def quant_arms(loops: list[int], qat_bits: int) -> dict[str, Arm]:
    """#341: fully shared (4 blocks x L loops) vs hybrid (1 + 2 x (2L-1) + 1): both 4 unique blocks and 4L
    effective layers, so parameters and depth match; each with QAT off and on.
    Labels: arch (shared | hybrid), loops (L), qat (off | on), reuse (runs of each shared block: L, 2L - 1)."""
    arms = []
    for L in loops:
        shapes = {"shared": looped(4, L), "hybrid": hybrid(2, 2 * L - 1)}
        for arch, shape in shapes.items():
            for qat in ("off", "on"):
                arms.append(Arm(f"{arch}-L{L}-qat-{qat}", {**shape, "quant.qat_bits": qat_bits if qat == "on" else 0},
                                {"arch": arch, "loops": L, "qat": qat, "reuse": shape["schedule.n_loops"]}))
    return {a.name: a for a in arms}


def quant_loop_arms(loops: list[int] = (1, 2, 3, 4, 6), param_matched: bool = True, embed_bits: int = 16,
                    qat_bits: int = 0) -> dict[str, Arm]:
    """#341 through loops: the quantization gap against the number of times the shared blocks run.
    Fully shared 4 x L; the hybrid with matched reuse 1 + 4 x L + 1 (its 4 shared blocks also run L
    times; 2 more unique blocks, so more parameters); and, secondary, the parameter-matched hybrid
    1 + 2 x (2L - 1) + 1 (4 unique blocks, its 2 shared ones run 2L - 1 times). The embedding is exported
    at `embed_bits` (16: fp16, as #341 did), so the gap measured is the blocks'.
    Labels: arch (shared | hybrid | hybrid-pm), loops (L), qat, reuse (runs of each shared block)."""
    arms = []
    common = {"quant.embed_bits": embed_bits, "quant.qat_bits": qat_bits}
    qat = "on" if qat_bits else "off"
    for L in loops:
        shapes = {"shared": looped(4, L), "hybrid": hybrid(4, L)}
        if param_matched:
            shapes["hybrid-pm"] = hybrid(2, 2 * L - 1)
        for arch, shape in shapes.items():
            arms.append(Arm(f"{arch}-L{L}-qat-{qat}", {**shape, **common},
                            {"arch": arch, "loops": L, "qat": qat, "reuse": shape["schedule.n_loops"]}))
    return {a.name: a for a in arms}


def quant_length_arms(loops: int, lengths: list[int], embed_bits: int = 16) -> dict[str, Arm]:
    """The gap against training length: the fully shared 4 x L model and the matched-reuse hybrid
    1 + 4 x L + 1, each trained for every step count in `lengths`. Separate runs rather than snapshots of
    the longest: warmdown, warmup and averaging are fractions of a run, so each length is a finished model
    (snapshots mid-run would carry the high-lr weights' gap). Labels: arch, loops, qat, reuse, length."""
    arms = []
    for n in lengths:
        for arch, shape in (("shared", looped(4, loops)), ("hybrid", hybrid(4, loops))):
            arms.append(Arm(f"{arch}-L{loops}-{n}steps", {**shape, "train.iterations": n, "quant.embed_bits": embed_bits,
                                                          "quant.qat_bits": 0},
                            {"arch": arch, "loops": loops, "qat": "off", "reuse": loops, "length": n}))
    return {a.name: a for a in arms}


def quant_length_verdict(df: pd.DataFrame, bits: int) -> str:
    """Does the gap grow with training length (`quant_length_arms`)? Per arch, the gap at the longest
    minus the shortest length: paired by seed with a t interval when there are two or more seeds, else
    from the two runs' window-bootstrap intervals (normal approximation, independent runs): that
    interval sees the eval text's sampling, not the seed's."""
    sub = df[df["bits"] == bits]
    if sub.empty or sub["length"].nunique() < 2:
        return "Need two or more training lengths."
    short, long = sub["length"].min(), sub["length"].max()
    lines, decisions = [], {}
    for arch, g in sub.groupby("arch"):
        per = g.groupby("length")["quant_gap"].mean()
        lines.append(f"- {arch}: int{bits} gap " + ", ".join(f"{int(n):,} steps {v:+.4f}" for n, v in per.items()))
        d, how = _run_diff(g, "quant_gap", "length", long, short)
        decisions[arch] = decide(d)
        lines.append(f"  {int(long):,} - {int(short):,} steps: {d} bpb ({how})")
    grows = [a for a, v in decisions.items() if v == "higher"]
    if len(grows) == len(decisions):
        v = f"The int{bits} gap grows with training length in every arm: longer-trained weights quantize worse"
    elif grows:
        v = f"The int{bits} gap grows with training length in {', '.join(grows)} only"
    elif all(v == "lower" for v in decisions.values()):
        v = f"The int{bits} gap shrinks with training length in every arm"
    else:
        v = f"Inconclusive: the change of the int{bits} gap with training length is not resolved in every arm"
    return "\n".join(lines + ["", v + f" ({int(short):,} to {int(long):,} steps)."])


def loop_arms(loops: list[int], base: Config, fixed_compute: bool, flat_control: bool = False) -> dict[str, Arm]:
    """Hybrid 1 + 2 x L + 1 (4 unique blocks) for each L at fixed parameters; optionally at fixed compute
    (iterations scaled so that iterations x training FLOPs per token, head and attention included,
    matches the smallest L: `model.flops.measured_flops`), and a flat control of the same effective
    depth 2 + 2L with unique blocks (depth without sharing).
    Labels: mode (params | compute | flat), loops (L)."""
    from ..model.flops import measured_flops
    arms = []
    ref = measured_flops(base.override(hybrid(2, min(loops))))
    for L in loops:
        arms.append(Arm(f"params-L{L}", hybrid(2, L), {"mode": "params", "loops": L}))
        if fixed_compute and L != min(loops):
            iters = max(1, round(base.train.iterations * ref / measured_flops(base.override(hybrid(2, L)))))
            warmdown = min(base.train.warmdown_iters, iters)
            arms.append(Arm(f"compute-L{L}", {**hybrid(2, L), "train.iterations": iters, "train.warmdown_iters": warmdown,
                                              "train.lr_warmup_steps": min(base.train.lr_warmup_steps, iters)},
                            {"mode": "compute", "loops": L}))
        if flat_control and L > 1:
            arms.append(Arm(f"flat-{2 + 2 * L}", {"schedule.kind": "flat", "schedule.n_layers": 2 + 2 * L},
                            {"mode": "flat", "loops": L}))
    return {a.name: a for a in arms}


def loop_budget_arms(loops: list[int], base: Config, budgets: list[int], flat_control: bool = True,
                     sampled_loops: int = 3) -> dict[str, Arm]:
    """The loop question at two or more compute budgets, each in L1-token-equivalents (the tokens a
    1 + 2 x 1 + 1 hybrid trains on for that many FLOPs, LM head and attention counted by
    `model.flops.measured_flops`). Per L and budget, the hybrid 1 + 2 x L + 1 (4 unique blocks) gets the
    steps that spend the budget ("compute"); at the smallest budget each L also trains on the L1 token
    count ("params": more FLOPs for more loops, what a loop's gain per FLOP is measured on); flat models
    of depth 2 + 2L with unique blocks at that token count separate depth from sharing; and at
    `sampled_loops`, a model trained with Huginn's random loop count per step (mean `sampled_loops`, up to
    twice that) beside the fixed-count one, for depth extrapolation. Warmup, warmdown and momentum
    warmup are fractions of the run in the presets, so every arm's schedule scales with its steps.
    Labels: mode (compute | params | flat | sampled), loops, budget (L1 tokens), flops (training FLOPs)."""
    from ..model.flops import measured_flops
    per_step = base.train.batch_tokens
    ref = measured_flops(base.override(hybrid(2, 1)))
    arms = []

    def arm(name: str, over: dict, mode: str, L: int, budget: int) -> None:
        cfg = base.override(over)
        flops = measured_flops(cfg) * cfg.train.iterations * per_step
        arms.append(Arm(name, over, {"mode": mode, "loops": L, "budget": budget, "flops": flops}))

    small = min(budgets)
    for b in budgets:
        for L in loops:
            iters = max(1, round(b / per_step * ref / measured_flops(base.override(hybrid(2, L)))))
            arm(f"compute-{b // 1000}k-L{L}", {**hybrid(2, L), "train.iterations": iters}, "compute", L, b)
    for L in loops:
        if L != 1:
            arm(f"params-L{L}", {**hybrid(2, L), "train.iterations": max(1, round(small / per_step))}, "params", L, small)
        if flat_control and L > 1:
            arm(f"flat-{2 + 2 * L}", {"schedule.kind": "flat", "schedule.n_layers": 2 + 2 * L,
                                       "train.iterations": max(1, round(small / per_step))}, "flat", L, small)
    if sampled_loops:
        arm(f"sampled-L{sampled_loops}", {**hybrid(2, sampled_loops), "train.iterations": max(1, round(small / per_step)),
                                          "train.loop_sampling": "poisson_lognormal",
                                          "train.loop_sampling_max": 2 * sampled_loops}, "sampled", sampled_loops, small)
    return {a.name: a for a in arms}


def loop_stop_verdict(df: pd.DataFrame, metric: str = "final_val_bpb", margin: float = 0.005) -> str:
    """Where loops stop paying (`loop_budget_arms`): the smallest L whose gain to the next loop count at
    the same tokens (paired by seed, t interval) has its upper bound below `margin` bpb AND whose gain per
    extra FLOP is below what the same FLOPs buy as more L1 steps (L1's gain between the two budgets per
    FLOP, paired by seed). Also, per budget, the compute-matched bpb at each L."""
    comp = df[df["mode"] == "compute"]
    lines = []
    for b, g in comp.groupby("budget"):
        est = g.groupby("loops")[metric].apply(lambda v: mean_ci(v.tolist()))
        lines.append(f"- budget {int(b):,} L1 tokens, compute matched: " + ", ".join(
            f"L{int(L)} {e.mean:.4f}" + ("" if math.isnan(e.lo) else f" [{e.lo:.4f}, {e.hi:.4f}]") for L, e in est.items()))
    budgets = sorted(comp["budget"].unique())
    l1 = comp[comp["loops"] == 1]
    slope = None
    if len(budgets) >= 2:
        lo_b, hi_b = budgets[0], budgets[-1]
        gain = paired_diff(l1, metric, by="budget", a=lo_b, b=hi_b)
        fl = l1.groupby("budget")["flops"].mean()
        slope = gain.mean / (fl[hi_b] - fl[lo_b])
        lines.append(f"- L1 from {int(lo_b):,} to {int(hi_b):,} tokens: gain {gain} bpb, "
                     f"{slope:.3g} bpb per FLOP")
    small = min(budgets) if budgets else None
    same_tokens = pd.concat([comp[(comp["loops"] == 1) & (comp["budget"] == small)], df[df["mode"] == "params"]])
    loops = sorted(same_tokens["loops"].unique())
    fl = same_tokens.groupby("loops")["flops"].mean()
    stop = None
    for a, b in zip(loops, loops[1:]):
        g = paired_diff(same_tokens, metric, by="loops", a=a, b=b)
        per_flop = g.mean / (fl[b] - fl[a])
        lines.append(f"- same tokens, gain L{int(a)} -> L{int(b)}: {g} bpb, {per_flop:.3g} bpb per extra FLOP")
        small_gain = not math.isnan(g.hi) and g.hi < margin
        cheaper = slope is not None and per_flop < slope
        if stop is None and small_gain and cheaper:
            stop = (a, b, g)
    if stop is not None:
        a, b, g = stop
        v = (f"Loops stop paying after {int(a)}: the gain to {int(b)} loops ({g} bpb) has its upper bound below "
             f"{margin} bpb, and per FLOP it buys less than more L1 steps do.")
    elif slope is None:
        v = "Need the L1 arm at two budgets to price a loop against more steps."
    else:
        v = (f"Inconclusive: no loop count's gain to the next is both resolved below {margin} bpb and cheaper per "
             "FLOP than more L1 steps; these runs do not locate where loops stop paying.")
    return "\n".join(lines + ["", v])


def flat_control_verdict(df: pd.DataFrame, metric: str = "final_val_bpb") -> str:
    """Depth or sharing (`loop_budget_arms`' flat controls)? Per L, the flat model of the same effective
    depth (unique blocks: more parameters, the same tokens and about the same FLOPs) minus the looped
    "params" arm, paired by seed. Below 0: sharing costs bpb at that depth; above 0: the flat model is
    worse (sharing helps)."""
    both = df[df["mode"].isin(["flat", "params"])]
    if both.empty or both["mode"].nunique() < 2:
        return "Need the flat controls and the looped arms at the same tokens."
    lines, calls = [], {}
    for L, g in both.groupby("loops"):
        if g["mode"].nunique() < 2:
            continue
        d = paired_diff(g, metric, by="mode", a="flat", b="params")
        calls[int(L)] = decide(d)
        lines.append(f"- L{int(L)}: flat {g[g['mode'] == 'flat'][metric].mean():.4f} vs looped "
                     f"{g[g['mode'] == 'params'][metric].mean():.4f}; flat - looped {d} bpb")
    lower = [L for L, c in calls.items() if c == "lower"]
    higher = [L for L, c in calls.items() if c == "higher"]
    if lower and len(lower) == len(calls):
        v = "Sharing costs bpb at every depth measured: the flat model of the same depth is better at the same tokens."
    elif higher and len(higher) == len(calls):
        v = "The looped model beats the flat one of the same depth at every L measured."
    elif lower or higher:
        names = lambda Ls: ", ".join(f"L{L}" for L in Ls) or "none"  # noqa: E731
        rest = [L for L, c in calls.items() if c not in ("lower", "higher")]
        v = (f"Partly resolved: flat better at {names(lower)}, looped better at {names(higher)}; "
             f"unresolved at {names(rest)}.")
    else:
        v = "Inconclusive: no flat - looped difference is resolved; depth and sharing are not separated here."
    return "\n".join(lines + ["", v])


def extrapolation_verdict(ext: pd.DataFrame, trained_loops: int, metric: str = "float_bpb",
                          margin: float = 0.005) -> str:
    """Depth extrapolation (Huginn: Geiping et al. 2025, arXiv:2502.05171). Per training mode
    (`loop_sampling`: fixed count or random count per step), the bpb at the deepest evaluated loop count
    minus at the trained (mean) count, paired by seed. Confirms the claim when the fixed-count model's
    change is resolved above 0 while the random-count one's upper bound stays below `margin` (no worse
    than that: flat or better); refutes it here when both are resolved above 0."""
    sub = ext.dropna(subset=[metric])
    if sub.empty or sub["loop_sampling"].nunique() < 2 or "fixed" not in set(sub["loop_sampling"]):
        return "Need a fixed-count and a random-count model evaluated at several loop counts."
    deep = int(sub["eval_loops"].max())
    # each seed's change from the trained to the deepest loop count, one column per mode
    wide = sub[sub["eval_loops"].isin([deep, trained_loops])].pivot_table(
        index=["loop_sampling", "seed"], columns="eval_loops", values=metric)
    change = (wide[deep] - wide[trained_loops]).unstack("loop_sampling")
    lines, est = [], {}
    for mode, g in sub.groupby("loop_sampling"):
        per = g.groupby("eval_loops")[metric].mean()
        est[mode] = d = mean_ci(change[mode].dropna().tolist())
        lines.append(f"- {mode}: " + ", ".join(f"{int(k)} loops {v:.4f}" for k, v in per.items())
                     + f"; {deep} - {trained_loops} loops {d} bpb")
    rises = {m: not math.isnan(e.lo) and e.lo > 0 for m, e in est.items()}
    holds = {m: not math.isnan(e.hi) and e.hi < margin for m, e in est.items()}
    sampled = [m for m in est if m != "fixed"]
    less = {}  # how much less each random-count model degrades than the fixed one, paired by seed
    for m in sampled:
        d = mean_ci((change[m] - change["fixed"]).dropna().tolist())
        less[m] = not math.isnan(d.hi) and d.hi < 0
        lines.append(f"- {m} - fixed, change from {trained_loops} to {deep} loops: {d} bpb")
    if rises["fixed"] and all(holds[m] for m in sampled):
        v = (f"Confirms depth extrapolation here: from {trained_loops} to {deep} loops the fixed-count model gets "
             f"worse while the random-count one is no worse than {margin} bpb.")
    elif rises["fixed"] and all(rises[m] for m in sampled) and not all(less.values()):
        v = f"Refutes depth extrapolation at this scale: both models get worse from {trained_loops} to {deep} loops."
    elif rises["fixed"] and all(less.values()):
        v = (f"Partly: from {trained_loops} to {deep} loops the random-count model degrades less than the fixed one "
             f"(resolved), but its own change is not shown to stay within {margin} bpb.")
    else:
        v = ("Inconclusive: " + ", ".join(f"{m} {'rises' if rises[m] else 'within the margin' if holds[m] else 'unresolved'}"
                                          for m in est) + f" (at {deep} vs {trained_loops} loops, margin {margin} bpb).")
    return "\n".join(lines + ["", v])


# -- extra evaluations of finished runs (run by runs.evaluate_variants) ------------------------------------


def export_variants(bits: list[int]) -> list[Arm]:
    """Export each run at each width; label: bits."""
    return [Arm(f"eval-int{b}", {"quant.export_bits": b}, {"bits": b}) for b in bits]


def depth_variants(extra: list[int]) -> Callable[[Config], list[Arm]]:
    """Evaluate each run at its trained loop count plus each of `extra` more loops; labels: trained_loops,
    extra_loops."""
    def variants(cfg: Config) -> list[Arm]:
        L = cfg.schedule.n_loops
        return [Arm(f"eval-loops{L + k}", {"eval.eval_loops": L + k}, {"trained_loops": L, "extra_loops": k})
                for k in [0, *extra]]
    return variants


def loop_count_variants(counts: list[int]) -> Callable[[Config], list[Arm]]:
    """Evaluate each run at each loop count in `counts` (depth extrapolation on an absolute scale);
    labels: trained_loops, eval_loops, loop_sampling."""
    def variants(cfg: Config) -> list[Arm]:
        return [Arm(f"eval-loops{k}", {"eval.eval_loops": k}, {"trained_loops": cfg.schedule.n_loops, "eval_loops": k,
                                                                 "loop_sampling": cfg.train.loop_sampling})
                for k in counts]
    return variants


# -- tables -----------------------------------------------------------------------------------------------


def quant_table(ev: pd.DataFrame) -> pd.DataFrame:
    """evaluate_variants rows of the quant ablation (columns arch, loops, qat, bits from the labels),
    finished evaluations only, in a stable order."""
    missing = {"arch", "loops", "qat", "bits"} - set(ev.columns)
    if missing:
        raise ValueError(f"quant_table: columns {sorted(missing)} missing; evaluate quant_arms runs with "
                         "export_variants so that their labels become columns")
    t = ev[ev["status"] == "finished"] if "status" in ev else ev
    return t.astype({"loops": int, "bits": int}).sort_values(["arch", "loops", "qat", "bits"], kind="stable",
                                                             ignore_index=True)


def loop_table(df: pd.DataFrame) -> pd.DataFrame:
    """Sweep rows of the loop ablation (columns mode, loops from the labels). The fixed-compute series
    starts from the same run as the fixed-parameter one at the smallest L, so that row is repeated
    with mode "compute"."""
    t = df.astype({"loops": int})
    base = t[t["mode"] == "params"]
    smallest = base["loops"].min()
    extra = base[base["loops"] == smallest].assign(mode="compute")
    return pd.concat([t, extra], ignore_index=True)


def divergence_counts(df: pd.DataFrame) -> pd.DataFrame:
    """Per arm: runs, diverged runs, the divergence rate with its 95% Wilson interval, the median
    divergence step, the mean final bpb of the finished runs, and the mean instability statistics
    (peak rise of the smoothed loss over its running minimum, spikes) where the runs recorded them."""
    g = df.groupby("arm", sort=False)
    out = pd.DataFrame({"runs": g.size(), "diverged": g["status"].apply(lambda s: int((s == "diverged").sum()))})
    rates = [rate_ci(int(k), int(n)) for k, n in zip(out["diverged"], out["runs"])]
    out["rate_lo"], out["rate_hi"] = [r.lo for r in rates], [r.hi for r in rates]
    out["median_diverge_step"] = g["diverged_at_step"].median() if "diverged_at_step" in df else None
    if "final_val_bpb" in df:
        out["bpb_mean"] = g["final_val_bpb"].mean()
        out["bpb_std"] = g["final_val_bpb"].std()
    for col in ("loss_peak_excess", "loss_spikes"):
        if col in df:
            out[f"{col}_mean"] = g[col].mean()
    return out.reset_index()


def _rate_line(arm: str, r: pd.Series) -> str:
    k, n = int(r.diverged), int(r.runs)
    text = f"- {arm}: diverged in {k}/{n} runs (rate 95% CI [{r.rate_lo:.0%}, {r.rate_hi:.0%}])"
    if k:
        text += f", median step {r.median_diverge_step:.0f}"
    if "loss_peak_excess_mean" in r and pd.notna(r.loss_peak_excess_mean):
        text += f"; peak loss rise {r.loss_peak_excess_mean:.2f} nats, {r.loss_spikes_mean:.1f} spikes"
    return text


def lora_verdict(df: pd.DataFrame) -> str:
    """#1096's claim: rank-8 factors on Muon diverge because of the keller shape scale. Decided from the
    difference of divergence rates, keller minus scale 1 (Newcombe's interval), and, where the runs
    recorded it, the paired-by-seed difference of the peak loss rise (a continuous measure that sees
    instability short of divergence)."""
    c = divergence_counts(df).set_index("arm")
    lines = [_rate_line(arm, r) for arm, r in c.iterrows()]
    keller, none, moon, adam8 = LORA_ARMS[1:]

    def k(arm: str) -> int:
        return int(c.loc[arm, "diverged"]) if arm in c.index else 0

    def n(arm: str) -> int:
        return int(c.loc[arm, "runs"]) if arm in c.index else 0

    d = rate_diff_ci(k(keller), n(keller), k(none), n(none))
    peak = (paired_diff(df, "loss_peak_excess", by="arm", a=keller, b=none)
            if "loss_peak_excess" in df and {keller, none} <= set(df["arm"]) else None)
    if peak is not None and peak.n:
        lines.append(f"- peak loss rise, keller - scale 1, paired by seed: {peak}")
    if not c["diverged"].any():
        verdict = (f"No arm diverged ({int(c['runs'].min())}-{int(c['runs'].max())} runs per arm): every arm's "
                   f"divergence rate is below {c['rate_hi'].max():.0%} (95% upper bound). #1096's rank-8 divergence "
                   "is not reproduced at this preset: a bounded null, not a refutation.")
        if peak is not None and decide(peak) == "higher":
            verdict += (" The keller scale does raise the peak loss rise over scale 1, short of divergence, in the "
                        "direction #1096 described.")
    elif k(adam8) and k(keller):
        verdict = (f"Rank 8 diverged on AdamW ({k(adam8)}/{n(adam8)}) as well as on Muon keller "
                   f"({k(keller)}/{n(keller)}): the data implicate the rank-8 per-loop delta itself more than "
                   "Muon's shape scale.")
    elif decide(d) == "higher":
        verdict = (f"Rank 8 on Muon diverged more often with the keller sqrt(rows/cols) scale than with scale 1 "
                   f"(rate difference {d}): the data support #1096's explanation (the shape scale amplifying "
                   "the thin B factor).")
    elif decide(d) == "lower":
        verdict = (f"Scale 1 diverged more often than the keller scale (rate difference keller - scale 1: {d}): "
                   "the data contradict #1096's explanation.")
    elif k(keller) and k(none):
        verdict = (f"Rank 8 on Muon diverged with scale 1 too ({k(none)}/{n(none)} against {k(keller)}/{n(keller)} "
                   f"with keller; difference {d}): the keller scale is not shown to be the whole cause, as #1096 "
                   "itself reported; orthogonalised updates of thin factors remain the suspect.")
    elif not k(keller) and (k(none) or k(moon)):
        verdict = ("Divergence appeared only with the 'none' or 'moonlight' scale: the keller scale is not what "
                   f"makes rank-8 factors diverge here (keller - scale 1 rate difference {d}).")
    else:
        verdict = (f"Inconclusive: the keller - scale 1 difference in divergence rate is {d}; "
                   f"{n(keller)} runs per arm cannot tell the two apart.")
    return "\n".join(lines + ["", verdict])


def lora_regime_verdict(df: pd.DataFrame, norms: pd.DataFrame | None = None, peak: str = "loss_peak_excess",
                        margin: float = 0.1) -> str:
    """The regime grid (`lora_regime_arms`): does instability rise with B's step multiplier at fixed lr
    and momentum? Decided from the divergence rates at the largest and the smallest multiplier over
    all cells (Newcombe's interval of the difference) and the peak loss rise paired by cell and seed
    (t interval). The AdamW control at #1096's lr says whether Muon is needed for the failure at all.
    With `norms` (`runs.lora_norm_summary`), the final ||A|| per multiplier: #1096's feedback predicts A
    growing faster where B steps further. `peak` names the instability column: `loss_peak_excess` (over
    the run's own running minimum) or `clean_peak_excess` (the same without the steps every arm finds
    hard, `relative_instability`). A difference of peak rises inside +-`margin` nats (a tenth of the
    divergence criterion's 1 nat) is too small to call instability: "equivalent", not a direction."""
    grid = df[(df["optimizer"] == "muon") & df["b_mult"].notna()]
    if grid.empty or grid["b_mult"].nunique() < 2:
        return "Need the regime grid: Muon arms at two or more B-step multipliers."
    lo, hi = grid["b_mult"].min(), grid["b_mult"].max()
    lines = []
    for m, g in grid.groupby("b_mult"):
        k = int((g["status"] == "diverged").sum())
        rise = mean_ci(g[peak].tolist()) if peak in g else None
        r = rate_ci(k, len(g))
        lines.append(f"- B-step x{m:g}: diverged {k}/{len(g)} (rate 95% CI [{r.lo:.0%}, {r.hi:.0%}])"
                     + (f", {_PEAK_NAMES[peak]} {rise.mean:.3f} nats" if rise is not None and rise.n else ""))
    k_hi, n_hi = int((grid[grid["b_mult"] == hi]["status"] == "diverged").sum()), int((grid["b_mult"] == hi).sum())
    k_lo, n_lo = int((grid[grid["b_mult"] == lo]["status"] == "diverged").sum()), int((grid["b_mult"] == lo).sum())
    rate = rate_diff_ci(k_hi, n_hi, k_lo, n_lo)
    rise_d = (paired_diff(grid, peak, by="b_mult", a=hi, b=lo, pair=["seed", "beta", "lr"])
              if peak in grid else None)
    lines.append(f"- divergence rate, x{hi:g} - x{lo:g}: {rate}")
    if rise_d is not None:
        lines.append(f"- {_PEAK_NAMES[peak]}, x{hi:g} - x{lo:g}, paired by seed, momentum and lr: {rise_d}")
    if norms is not None and not norms.empty and "A_mean" in norms:
        mult = grid.drop_duplicates("arm").set_index("arm")["b_mult"]
        a = norms[norms["arm"].isin(mult.index)].assign(b_mult=lambda t: t["arm"].map(mult))
        a = a.groupby("b_mult")["A_mean"].mean()
        lines.append("- final ||A|| (mean over factors, loops and cells): "
                     + ", ".join(f"x{m:g} {v:.3g}" for m, v in a.items()))
    for arm, g in df[df["b_mult"].isna()].groupby("arm", sort=False):  # the controls, as #1096's table ran them
        rise = mean_ci(g[peak].tolist()) if peak in g else None
        lines.append(f"- {arm}: diverged {int((g['status'] == 'diverged').sum())}/{len(g)}"
                     + (f", {_PEAK_NAMES[peak]} {rise.mean:.3f} nats" if rise is not None and rise.n else ""))
    if "diverged_at_step" in df and (df["status"] == "diverged").any():  # onsets locked to one step point at the schedule
        onsets = df[df["status"] == "diverged"].sort_values("diverged_at_step")
        lines.append("- divergence onsets (step): " + ", ".join(
            f"{r['arm']} seed {r['seed']} at {int(r['diverged_at_step'])}" for _, r in onsets.iterrows()))
    adam = df[(df["optimizer"] == "adamw") & (df["rank"] > 1) & (df["lr"] == 0.025)]
    adam_k = int((adam["status"] == "diverged").sum())
    decisions = {decide(rate), "inconclusive" if rise_d is None else decide(rise_d, margin)}
    if "higher" in decisions and "lower" not in decisions:
        v = (f"Instability rises with B's step multiplier at fixed lr and momentum (x{hi:g} against x{lo:g}): the "
             "shape-scale story of #1096 holds here")
        v += (f"; but rank {int(adam['rank'].max())} on AdamW at lr 0.025 diverged too ({adam_k}/{len(adam)}), so Muon's "
              "scale is not the only route to it." if adam_k else ".")
    elif "lower" in decisions and "higher" not in decisions:
        v = (f"Instability falls as B's step multiplier rises (x{hi:g} against x{lo:g}): against the shape-scale story "
             "of #1096.")
    elif not (df["status"] == "diverged").any() and rise_d is not None and decide(rise_d, margin) == "equivalent":
        v = (f"No run diverged ({len(df)} runs; at each multiplier the rate is below {rate_ci(0, n_hi).hi:.0%}, 95% upper "
             f"bound) and the peak loss rise does not separate the multipliers by more than {margin} nats: a bounded "
             "null at this width, length and momentum schedule, not a refutation of #1096.")
    elif not (df["status"] == "diverged").any():
        v = (f"No run diverged ({len(df)} runs), but the peak loss rise of x{hi:g} - x{lo:g} is not resolved "
             f"({'no interval' if rise_d is None else rise_d}): it may or may not exceed {margin} nats, so no bound on "
             "the multiplier's effect follows.")
    else:
        v = (f"Inconclusive: the intervals of x{hi:g} - x{lo:g} include 0, so these runs cannot say whether B's step "
             "multiplier drives the instability.")
    return "\n".join(lines + ["", v])


def quant_verdict(df: pd.DataFrame, bits: int = 8) -> str:
    """#341's claim: a hybrid (unique first and last layers) has a smaller quantization gap than a fully
    shared model. df: one row per run and export width (columns arch, qat, bits, loops, seed, quant_gap).
    Decided from the paired-by-seed difference hybrid - shared of the gap without QAT, t interval."""
    sub = df[df["bits"] == bits]
    if sub.empty:
        return f"No int{bits} results."
    parts = [f"- {arch}, QAT {qat}: int{bits} gap {mean_ci(g['quant_gap'].tolist())} bpb"
             for (arch, qat), g in sub.groupby(["arch", "qat"])]
    off = sub[sub["qat"] == "off"]
    if not {"shared", "hybrid"} <= set(off["arch"]):
        return "\n".join(parts)
    pair = ["seed", "loops"] if "loops" in off else ["seed"]
    d = paired_diff(off, "quant_gap", by="arch", a="hybrid", b="shared", pair=pair)
    shared = mean_ci(off[off["arch"] == "shared"]["quant_gap"].tolist())
    parts.append(f"- hybrid - shared gap (QAT off), paired by {' and '.join(pair)}: {d} bpb")
    if decide(d) == "lower":
        v = (f"The hybrid's int{bits} gap is smaller than the fully shared model's ({d} bpb), in the direction of "
             f"#341's claim")
    elif decide(d) == "higher":
        v = f"The hybrid's int{bits} gap is larger than the fully shared model's ({d} bpb), against #341's claim"
    else:
        v = (f"Inconclusive: the hybrid - shared difference of the int{bits} gap is {d} bpb, an interval that "
             "includes 0 (or none at one seed), so these runs cannot tell whether the hybrid closes the gap")
    if not math.isnan(shared.hi) and shared.hi < 0.40:
        v += (f". The fully shared model's own gap ({shared}) lies below #341's 0.40: the compounding #341 "
              "reported does not show at this scale and length")
    return "\n".join(parts + ["", v + "."])


def _run_diff(g: pd.DataFrame, value: str, by: str, a: object, b: object) -> tuple[Estimate, str]:
    """value(a) - value(b): paired by seed with a t interval when two or more seeds have both, else from
    one run of each and their window-bootstrap intervals (`<value>_lo`/`_hi`, normal approximation,
    independent runs), which see the sampling of the eval text but not the seed's."""
    both = set(g[g[by] == a]["seed"]) & set(g[g[by] == b]["seed"])
    if len(both) >= 2:
        return paired_diff(g[g["seed"].isin(both)], value, by=by, a=a, b=b), f"paired by seed, n = {len(both)}"
    lo, hi = f"{value}_lo", f"{value}_hi"
    if {lo, hi} <= set(g.columns) and (g[by] == a).any() and (g[by] == b).any():
        ra, rb = g[g[by] == a].iloc[0], g[g[by] == b].iloc[0]
        if not any(math.isnan(float(v)) for v in (ra[lo], ra[hi], rb[lo], rb[hi])):
            se = math.hypot(ra[hi] - ra[lo], rb[hi] - rb[lo]) / (2 * 1.96)
            d = ra[value] - rb[value]
            return Estimate(d, d - 1.96 * se, d + 1.96 * se, 1, 0.95, f"{value}: {a} - {b}"), \
                "one seed: window-bootstrap intervals"
    return mean_ci([]), "no interval"


# All-steps effect over the summed single-step effects above which errors count as compounding (the
# design's criterion, written before the runs).
SUPERADDITIVE = 1.2


def per_application(df: pd.DataFrame) -> pd.DataFrame:
    """quant_gap (and its window-bootstrap quant_gap_lo/_hi) divided by the number of times the shared
    blocks run (`reuse`): flat when every application adds the same error, rising when errors compound."""
    out = df.assign(per_application=df["quant_gap"] / df["reuse"])
    for side in ("_lo", "_hi"):
        if f"quant_gap{side}" in df:
            out[f"per_application{side}"] = df[f"quant_gap{side}"] / df["reuse"]
    return out


def _superadd(row: pd.Series) -> Estimate:
    """A probe summary row's all-steps / summed single-step ratio with its bootstrap interval (NaN
    bounds for a probe table without one)."""
    nan = float("nan")
    return Estimate(float(row["superadditivity"]), float(row.get("superadditivity_lo", nan)),
                    float(row.get("superadditivity_hi", nan)), int(row.get("n_seqs", 0) or 0), 0.95, "ratio")


def _ratio_str(e: Estimate) -> str:
    return f"{e.mean:.2f}" if math.isnan(e.lo) else f"{e.mean:.2f} [{e.lo:.2f}, {e.hi:.2f}]"


def _ratio_reading(e: Estimate) -> str:
    """What a super-additivity interval says against 1 (additive) and SUPERADDITIVE (compounding)."""
    if math.isnan(e.lo):
        return "no interval"
    if e.lo > SUPERADDITIVE:
        return f"super-additive beyond {SUPERADDITIVE} (compounding)"
    if e.hi < 1:
        return "sub-additive (interval below 1)"
    if e.hi < SUPERADDITIVE:
        return f"below {SUPERADDITIVE}" + (" but above 1 (mildly super-additive)" if e.lo > 1 else ", including 1 (additive)")
    return (f"above 1, unresolved against {SUPERADDITIVE}" if e.lo > 1
            else f"unresolved (interval spans 1 and {SUPERADDITIVE})")


def quant_loop_verdict(df: pd.DataFrame, bits: int, probe: pd.DataFrame | None = None) -> str:
    """Does the gap compound through loops? df: quant_table rows of `quant_loop_arms` runs (arch, loops,
    reuse, seed, bits, qat, quant_gap and its window-bootstrap quant_gap_lo/_hi). Three readings of the
    fully shared model, as the design names them: (1) the gap per application of the shared blocks at the
    most loops minus at the fewest (`_run_diff`): above 0, the gap grows faster than the number of
    applications; (2) from `probe` (probes.probe_table's summary, deepest L, the baseline quantizer where
    probed): the all-steps effect over the summed single-step effects, compounding when its bootstrap
    interval over sequences lies above SUPERADDITIVE, not when it lies below; (3) the hidden-state error
    at the last schedule step against the first, compounding when it grows. Compounding when all three
    say so; none when (1) is resolved below 0 and the probe reads below SUPERADDITIVE with a shrinking
    error; otherwise the parts are listed as they fell."""
    sub = df[(df["bits"] == bits) & (df["qat"] == "off")]
    if sub.empty or sub["loops"].nunique() < 2:
        return f"Need int{bits} gaps at two or more loop counts."
    lines = [f"- {arch}, L = {int(L)}: int{bits} gap {mean_ci(g['quant_gap'].tolist())} bpb"
             for (arch, L), g in sub.groupby(["arch", "loops"])]
    lo, hi = int(sub["loops"].min()), int(sub["loops"].max())
    growth = {}
    for arch, g in per_application(sub).groupby("arch"):
        growth[arch], how = _run_diff(g, "per_application", "loops", hi, lo)
        lines.append(f"- {arch}: gap per application, L = {hi} minus L = {lo}: {growth[arch]} bpb ({how})")
    if {"shared", "hybrid"} <= set(sub["arch"]):  # #341's fix at matched reuse: does the hybrid's lead widen in L?
        for L in (lo, hi):
            d, how = _run_diff(sub[sub["loops"] == L], "quant_gap", "arch", "hybrid", "shared")
            lines.append(f"- hybrid - shared gap at L = {L}: {d} bpb ({how})")
    superadd = error_grows = None
    if probe is not None and not probe.empty:
        p = probe[probe["bits"] == bits]
        for (arch, scheme), g in p.groupby(["arch", "scheme"]):
            each = "; ".join(f"L = {int(r['loops'])} {_ratio_str(_superadd(r))}" for _, r in g.sort_values("loops").iterrows()) \
                if "loops" in g else str(mean_ci(g["superadditivity"].tolist()))
            lines.append(f"- {arch} ({scheme}): all-steps / summed single-step effect: {each}")
        shared_p = p[p["arch"] == "shared"]
        if "loops" in shared_p:
            shared_p = shared_p[shared_p["loops"] == shared_p["loops"].max()]
        if "scheme" in shared_p and (shared_p["scheme"] == "baseline").any():  # the export's own quantizer
            shared_p = shared_p[shared_p["scheme"] == "baseline"]
        if not shared_p.empty:
            deep = shared_p.iloc[0]
            superadd = _superadd(deep)
            if {"rel_error_first", "rel_error_last"} <= set(shared_p.columns):
                first, last = float(deep["rel_error_first"]), float(deep["rel_error_last"])
                error_grows = last > first
                lines.append(f"- shared at its deepest L ({deep.get('scheme', 'its scheme')}): hidden-state error "
                             f"{first:.3g} at the first step, {last:.3g} at the last; all-steps / summed "
                             f"single-step {_ratio_str(superadd)}: {_ratio_reading(superadd)}")
    shared = growth.get("shared")
    d = "inconclusive" if shared is None else decide(shared)
    # compounding needs the ratio's interval above 1.2; additive error, its interval below 1.2
    probe_for = superadd is not None and superadd.lo > SUPERADDITIVE and error_grows is True
    probe_against = superadd is not None and superadd.hi < SUPERADDITIVE and error_grows is False
    if d == "higher" and probe_for:
        v = (f"The fully shared model's int{bits} error compounds through the loops, as #341 said: its gap grows "
             f"faster than the number of times its blocks run ({lo} -> {hi} loops), the effects are super-additive "
             "and the hidden-state error grows step by step")
    elif d == "lower" and (probe_against or superadd is None):
        v = (f"No compounding: the fully shared model's int{bits} gap grows more slowly than the number of times "
             f"its blocks run ({lo} -> {hi} loops)"
             + ("; the effects add up rather than multiply and the hidden-state error shrinks through the steps: "
                "the first application of each weight dominates" if probe_against else ""))
    else:
        parts = [f"gap per application {d}"]
        if superadd is not None:
            parts.append(f"all-steps / summed single-step {_ratio_str(superadd)}, {_ratio_reading(superadd)}")
        if error_grows is not None:
            parts.append("hidden-state error " + ("grows" if error_grows else "shrinks") + " through the steps")
        v = "Inconclusive or mixed: " + "; ".join(parts)
    return "\n".join(lines + ["", v + ". What this cannot see: widths, token counts and quantizers far from #341's."])


def loop_verdict(df: pd.DataFrame, metric: str = "float_bpb", margin: float = 0.005) -> str:
    """Where extra loops stop paying, at fixed unique parameters. df: columns loops, seed, metric. For
    each adjacent pair of loop counts, the gain (metric at L minus at the next L, paired by seed, t
    interval). Loops stop paying at the smallest L whose gain to the next has its upper bound below
    `margin` bpb (a gain too small to matter, named by the caller); when no gain is resolved either
    way, the verdict says so."""
    m = df.groupby("loops")[metric].apply(lambda s: mean_ci(s.tolist()))
    if len(m) < 2:
        return "Need at least two loop counts."
    lines = [f"- {int(L)} loops: {e.mean:.4f} bpb" + ("" if math.isnan(e.lo) else f" [{e.lo:.4f}, {e.hi:.4f}]")
             + f" (n = {e.n})" for L, e in m.items()]
    loops = list(m.index)
    gains = {}
    for a, b in zip(loops, loops[1:]):
        g = paired_diff(df[df["loops"].isin([a, b])], metric, by="loops", a=a, b=b)  # metric(a) - metric(b)
        gains[a] = (b, g)
        lines.append(f"- gain {int(a)} -> {int(b)} loops: {g} bpb")
    stop = next((a for a, (b, g) in gains.items() if not math.isnan(g.hi) and g.hi < margin), None)
    if stop is not None:
        b, g = gains[stop]
        v = (f"Loops stop paying after {int(stop)}: the gain from {int(stop)} to {int(b)} loops is {g} bpb, "
             f"whose upper bound is below {margin} bpb.")
        before = [f"{int(a)} -> {int(b2)}" for a, (b2, g2) in gains.items() if a < stop and decide(g2) != "higher"]
        if before:
            v += (f" The gains before it ({', '.join(before)}) are not resolved above 0 either: that {int(stop)} loops "
                  "beat fewer is not shown.")
    elif all(decide(g) == "higher" for _, g in gains.values()):
        v = f"Every extra loop paid up to {int(loops[-1])} loops (each adjacent gain's interval lies above 0)."
    else:
        unresolved = [f"{int(a)} -> {int(b)}" for a, (b, g) in gains.items() if decide(g) == "inconclusive"]
        v = (f"Inconclusive: the gains {', '.join(unresolved)} have intervals that include 0 and reach above "
             f"{margin} bpb (or have none, at one seed); these runs cannot say where loops stop paying.")
    return "\n".join(lines + ["", v])
