"""Ablation arms and verdicts: the sentences under the tables follow the data, whichever way it goes, and
decide from intervals: each branch on a synthetic table."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from recur_lib import Config
from recur_lib.lab.ablations import (boundary_arms, divergence_counts, lora_arms, lora_regime_arms, lora_regime_verdict, lora_verdict,
                                     loop_arms, loop_table, loop_verdict, quant_arms, quant_loop_arms, quant_loop_verdict,
                                     quant_table, quant_verdict)


def lora_df(diverged: dict[str, int], runs: int = 3, peak: dict[str, float] | None = None) -> pd.DataFrame:
    rows = []
    for arm in ("rank1-vectors-adamw", "rank8-muon-keller", "rank8-muon-none", "rank8-muon-moonlight", "rank8-adamw"):
        for i in range(runs):
            d = i < diverged.get(arm, 0)
            rows.append({"arm": arm, "seed": i, "status": "diverged" if d else "finished",
                         "diverged_at_step": 1500.0 if d else None, "final_val_bpb": None if d else 1.3,
                         "loss_peak_excess": (peak or {}).get(arm, 0.1) + 0.01 * i, "loss_spikes": 0})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("diverged, expect", [
    ({}, "not reproduced at this preset: a bounded null"),
    ({"rank8-muon-keller": 3}, "support #1096's explanation"),
    ({"rank8-muon-none": 3}, "contradict #1096's explanation"),
    ({"rank8-muon-keller": 3, "rank8-muon-none": 2}, "not shown to be the whole cause"),
    ({"rank8-muon-keller": 3, "rank8-adamw": 3}, "rank-8 per-loop delta itself"),
    ({"rank8-muon-moonlight": 1}, "keller scale is not what"),
    ({"rank8-muon-keller": 1}, "Inconclusive"),
])
def test_lora_verdict_follows_the_data(diverged: dict, expect: str) -> None:
    text = lora_verdict(lora_df(diverged))
    assert expect in text, text
    c = divergence_counts(lora_df(diverged)).set_index("arm")
    assert c.loc["rank8-muon-keller", "diverged"] == diverged.get("rank8-muon-keller", 0)
    assert "rate 95% CI" in text


def test_lora_verdict_sees_instability_short_of_divergence() -> None:
    text = lora_verdict(lora_df({}, peak={"rank8-muon-keller": 2.0, "rank8-muon-none": 0.3}))
    assert "bounded null" in text and "does raise the peak loss rise" in text
    assert "does raise" not in lora_verdict(lora_df({}))


def test_lora_arms_route_each_factor() -> None:
    base = Config.from_name("seed-1096-smoke")
    arms = lora_arms(0.01, 0.04)
    cfgs = {k: base.override(v.overrides) for k, v in arms.items()}
    assert cfgs["rank1-vectors-adamw"].model.loop_lora_form == "vectors"
    assert cfgs["rank8-muon-none"].optim.lora_scale_rule == "none" and cfgs["rank8-muon-none"].optim.lora_optimizer == "muon"
    assert cfgs["rank8-adamw"].optim.lora_optimizer == "adamw" and cfgs["rank8-adamw"].model.loop_lora_rank == 8


def test_quant_arms_match_parameters_and_depth() -> None:
    base = Config.from_name("smoke")
    cfgs = {k: base.override(v.overrides) for k, v in quant_arms([2, 3], 6).items()}
    for L in (2, 3):
        s, h = cfgs[f"shared-L{L}-qat-off"], cfgs[f"hybrid-L{L}-qat-on"]
        assert s.unique_blocks == h.unique_blocks == 4 and s.effective_layers == h.effective_layers == 4 * L
        assert h.quant.qat_bits == 6 and s.quant.qat_bits == 0


def quant_ev(gaps: dict[tuple[str, str, int], list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"arm": f"{a}-L3-qat-{q}", "seed": s, "variant": f"eval-int{b}", "quant_gap": g,
                          "arch": a, "loops": 3, "qat": q, "bits": b, "status": "finished"}
                         for (a, q, b), gs in gaps.items() for s, g in enumerate(gs)])


def test_quant_table_and_every_verdict_branch() -> None:
    t = quant_table(quant_ev({("shared", "off", 8): [0.40, 0.42, 0.38], ("hybrid", "off", 8): [0.01, 0.02, 0.0],
                              ("shared", "on", 8): [0.02, 0.02, 0.02], ("hybrid", "on", 8): [0.0, 0.0, 0.0],
                              ("shared", "off", 4): [0.10, 0.12, 0.11], ("hybrid", "off", 4): [0.50, 0.52, 0.49],
                              ("shared", "off", 6): [0.0079, 0.0081, 0.0075], ("hybrid", "off", 6): [0.0061, 0.0090, 0.0030]}))
    assert set(t.columns) >= {"arch", "loops", "qat", "bits"} and t["loops"].eq(3).all()
    v8 = quant_verdict(t, 8)
    assert "in the direction of #341's claim" in v8 and "below #341's 0.40" not in v8
    assert "against #341's claim" in quant_verdict(t, 4) and "below #341's 0.40" in quant_verdict(t, 4)
    v6 = quant_verdict(t, 6)
    assert "Inconclusive" in v6 and "below #341's 0.40" in v6
    one_seed = quant_table(quant_ev({("shared", "off", 8): [0.001], ("hybrid", "off", 8): [0.0001]}))
    assert "Inconclusive" in quant_verdict(one_seed, 8) and "no interval" in quant_verdict(one_seed, 8)
    assert quant_verdict(t, 5) == "No int5 results."


def loop_df(bpb: dict[int, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([{"arm": f"params-L{L}", "mode": "params", "loops": L, "seed": s, "status": "finished",
                          "final_val_bpb": v} for L, vs in bpb.items() for s, v in enumerate(vs)])


def test_loop_arms_and_table() -> None:
    base = Config.from_name("smoke", {"train.iterations": 120})
    arms = loop_arms([1, 2, 4], base, fixed_compute=True)
    assert set(arms) == {"params-L1", "params-L2", "params-L4", "compute-L2", "compute-L4"}
    # FLOP-matched: at smoke size 1 + 2x4 + 1 costs 872,448 training FLOPs per token against 1 + 2x1 + 1's
    # 466,944 (the head is 42% of the latter at dim 32), not the 10 / 4 of its effective layers
    assert arms["compute-L4"].overrides["train.iterations"] == round(120 * 466944 / 872448) == 64
    flat = loop_arms([1, 2], base, fixed_compute=False, flat_control=True)
    assert set(flat) == {"params-L1", "params-L2", "flat-6"} and flat["flat-6"].labels == {"mode": "flat", "loops": 2}
    cfg = base.override(flat["flat-6"].overrides)
    assert cfg.effective_layers == cfg.unique_blocks == base.override(flat["params-L2"].overrides).effective_layers
    df = pd.DataFrame([{"arm": a, "status": "finished", "final_val_bpb": v, **arms[a].labels}
                       for a, v in [("params-L1", 2.0), ("params-L2", 1.9), ("params-L4", 1.895), ("compute-L2", 1.95)]])
    t = loop_table(df)
    assert sorted(t[t["mode"] == "compute"]["loops"]) == [1, 2]


@pytest.mark.parametrize("bpb, expect", [
    ({1: [2.00, 2.10, 1.95], 2: [1.90, 2.00, 1.85], 4: [1.899, 1.999, 1.848]}, "stop paying after 2"),
    ({1: [2.00, 2.10, 1.95], 2: [1.90, 2.00, 1.85], 4: [1.80, 1.91, 1.74]}, "Every extra loop paid up to 4"),
    ({1: [2.00, 2.10, 1.95], 2: [1.95, 2.12, 1.90], 4: [1.96, 2.08, 1.93]}, "Inconclusive: the gains 1 -> 2, 2 -> 4"),
    ({1: [2.0], 2: [1.9]}, "Inconclusive"),
    ({1: [2.00, 2.10, 1.95], 2: [1.95, 2.12, 1.90], 4: [1.96, 2.13, 1.91]},
     "stop paying after 2: the gain from 2 to 4 loops is -0.0100 [-0.0100, -0.0100] (95% CI, n = 3) bpb, whose upper "
     "bound is below 0.005 bpb. The gains before it (1 -> 2) are not resolved above 0 either"),
])
def test_loop_verdict_every_branch(bpb: dict, expect: str) -> None:
    text = loop_verdict(loop_df(bpb), metric="final_val_bpb")
    assert expect in text, text
    assert "gain 1 -> 2 loops" in text


def test_loop_verdict_margin_is_the_callers() -> None:
    """A gain of ~0.1 bpb: it stops paying only if the caller calls 0.2 bpb too small to matter."""
    df = loop_df({1: [2.00, 2.10, 1.95], 2: [1.90, 2.00, 1.86]})
    assert "Every extra loop paid" in loop_verdict(df, metric="final_val_bpb")
    assert "stop paying after 1" in loop_verdict(df, metric="final_val_bpb", margin=0.2)


def test_lora_regime_arms_are_the_stage_one_grid() -> None:
    base = Config.from_name("seed-1096-cpu", {"train.iterations": 1500})
    arms = lora_regime_arms(base.model.dim)
    grid = [a for a in arms.values() if a.labels["optimizer"] == "muon" and a.labels["rank"] == 8]
    assert len(grid) == 3 * 2 * 2 and len(arms) == 12 + 4
    assert sorted({a.labels["b_mult"] for a in grid}) == [1.0, 2.828, 9.8]
    cfg = base.override(arms["muon-r8-b9.8-beta0.99-lr0.04"].overrides)
    assert (cfg.optim.lora_scale_rule, cfg.optim.lora_b_step_mult, cfg.optim.muon_momentum) == ("none", 9.8, 0.99)
    ph = cfg.phases()
    assert ph["muon_momentum_warmup_steps"] == 1000 and cfg.optim.muon_momentum_warmup_start == 0.92
    v3 = base.override(arms["control-adamw-r8-matrices-lr0.025"].overrides)
    assert v3.optim.lora_optimizer == "adamw" and v3.model.loop_lora_rank == 8
    seed = base.override(arms["control-adamw-r1-vectors-lr0.025"].overrides)
    assert seed.model.loop_lora_form == "vectors"
    assert base.override(arms["control-muon-r1-matrices-lr0.01"].overrides).optim.lora_scale_rule == "keller"


def regime_df(diverged_at: dict[float, int], peak: dict[float, float], adam_diverged: bool = False) -> pd.DataFrame:
    """The stage-one grid, one seed: per B multiplier, how many of its 4 (beta, lr) cells diverged."""
    arms = lora_regime_arms(64)
    rows, seen = [], {}
    for name, a in arms.items():
        m = a.labels["b_mult"]
        i = seen[m] = seen.get(m, -1) + 1
        diverged = (m is not None and i < diverged_at.get(m, 0)) or (adam_diverged and name == "control-adamw-r8-matrices-lr0.025")
        rows.append({"arm": name, "seed": 0, **a.labels, "status": "diverged" if diverged else "finished",
                     "loss_peak_excess": (peak.get(m, 0.2) if m is not None else 0.2) + 0.01 * i})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("diverged, peak, adam, expect", [
    ({9.8: 4}, {}, False, "the shape-scale story of #1096 holds here."),
    ({9.8: 4}, {}, True, "diverged too (1/1)"),
    ({}, {1.0: 0.1, 2.828: 0.4, 9.8: 0.9}, False, "holds here"),
    ({1.0: 4}, {}, False, "against the shape-scale story"),
    ({}, {}, False, "a bounded null"),
    ({}, {1.0: 0.2, 9.8: 0.195}, False, "a bounded null"),  # consistently lower, but by 0.005 nats: not a direction
    ({9.8: 1}, {}, False, "Inconclusive"),
])
def test_lora_regime_verdict_every_branch(diverged: dict, peak: dict, adam: bool, expect: str) -> None:
    text = lora_regime_verdict(regime_df(diverged, peak, adam))
    assert expect in text, text
    assert "- B-step x9.8: diverged" in text


def test_lora_regime_verdict_reports_a_norm_per_multiplier() -> None:
    df = regime_df({}, {})
    norms = pd.DataFrame([{"arm": n, "A_mean": 1.0 + (n.startswith("muon-r8-b9.8"))} for n in df["arm"]])
    assert "final ||A|| (mean over factors, loops and cells): x1 1, x2.828 1, x9.8 2" in lora_regime_verdict(df, norms)


def test_boundary_arms_are_nearest_one_nat() -> None:
    """Peaks 0.2 + 0.01 i everywhere except x9.8 (0.9 + 0.01 i) and one diverged x1 cell: the diverged
    cell (counted at 1 nat) and the x9.8 cells nearest 1 nat come first; controls never."""
    df = regime_df({1.0: 1}, {9.8: 0.9})
    near = boundary_arms(df, k=3)
    assert near[0] == "muon-r8-b1-beta0.95-lr0.01"
    assert near[1:] == ["muon-r8-b9.8-beta0.99-lr0.04", "muon-r8-b9.8-beta0.99-lr0.01"]
    assert boundary_arms(df[df["optimizer"] == "adamw"]) == []
    # a data spike every arm meets sets every raw peak near 2 nats; the clean column still tells them apart
    spiked = df.assign(clean_peak_excess=df["loss_peak_excess"], loss_peak_excess=2.0)
    assert boundary_arms(spiked, k=3, peak="clean_peak_excess") == near


def test_quant_loop_arms_match_reuse_and_parameters() -> None:
    base = Config.from_name("smoke")
    arms = quant_loop_arms([1, 3])
    cfgs = {k: base.override(a.overrides) for k, a in arms.items()}
    s, h, pm = cfgs["shared-L3-qat-off"], cfgs["hybrid-L3-qat-off"], cfgs["hybrid-pm-L3-qat-off"]
    assert (s.effective_layers, h.effective_layers, pm.effective_layers) == (12, 14, 12)
    assert (s.unique_blocks, h.unique_blocks, pm.unique_blocks) == (4, 6, 4)
    assert [arms[f"{a}-L3-qat-off"].labels["reuse"] for a in ("shared", "hybrid", "hybrid-pm")] == [3, 3, 5]
    assert all(c.quant.embed_bits == 16 and c.quant.qat_bits == 0 for c in cfgs.values())
    assert len(quant_loop_arms([1, 2, 3, 4, 6], param_matched=False)) == 10


def quant_loop_df(per_app: dict[int, list[float]], width: float | None = None) -> pd.DataFrame:
    """Shared arm gaps at L loops = per-application gap x L, per seed; hybrid half of that. `width`: each
    run's window-bootstrap interval half-width."""
    rows = []
    for L, gaps in per_app.items():
        for s, g in enumerate(gaps):
            for arch, f in (("shared", 1.0), ("hybrid", 0.5)):
                gap = g * L * f
                rows.append({"arch": arch, "loops": L, "reuse": L, "seed": s, "bits": 4, "qat": "off",
                             "quant_gap": gap, **({"quant_gap_lo": gap - width, "quant_gap_hi": gap + width}
                                                  if width is not None else {})})
    return pd.DataFrame(rows)


def probe_summary(superadd: float, first: float, last: float, half: float = 0.05) -> pd.DataFrame:
    """The deepest shared run's probe, with a bootstrap interval of +-half on its ratio, and a rowmax
    probe beside it that reads the opposite way (the verdict decides from the baseline quantizer)."""
    row = {"arch": "shared", "scheme": "baseline", "bits": 4, "loops": 6, "superadditivity": superadd,
           "superadditivity_lo": superadd - half, "superadditivity_hi": superadd + half,
           "rel_error_first": first, "rel_error_last": last}
    return pd.DataFrame([row, {**row, "scheme": "rowmax", "superadditivity": 2.4 - superadd,
                               "superadditivity_lo": 2.4 - superadd - half, "superadditivity_hi": 2.4 - superadd + half,
                               "rel_error_first": last, "rel_error_last": first},
                         {**row, "loops": 1, "superadditivity": 1.0, "superadditivity_lo": 0.9, "superadditivity_hi": 1.1}])


GROWS = {1: [0.001, 0.0012, 0.0011], 6: [0.004, 0.0045, 0.0042]}
SHRINKS = {1: [0.004, 0.0045, 0.0042], 6: [0.001, 0.0012, 0.0011]}


@pytest.mark.parametrize("per_app, probe, expect", [
    (GROWS, probe_summary(1.5, 0.05, 0.2), "compounds through the loops"),
    (GROWS, probe_summary(1.0, 0.1, 0.05), "Inconclusive or mixed: gap per application higher; all-steps / summed "
                                           "single-step 1.00 [0.95, 1.05], below 1.2, including 1 (additive); "
                                           "hidden-state error shrinks"),
    (GROWS, probe_summary(1.5, 0.05, 0.2, half=0.4), "single-step 1.50 [1.10, 1.90], above 1, unresolved against 1.2"),
    (SHRINKS, probe_summary(1.19, 0.118, 0.046), "single-step 1.19 [1.14, 1.24], above 1, unresolved against 1.2"),
    (SHRINKS, probe_summary(1.1, 0.118, 0.046, half=0.2), "unresolved (interval spans 1 and 1.2)"),
    (SHRINKS, probe_summary(1.1, 0.118, 0.046, half=0.05), "below 1.2 but above 1 (mildly super-additive)"),
    (SHRINKS, probe_summary(0.8, 0.118, 0.046), "sub-additive (interval below 1)"),
    (GROWS, None, "Inconclusive or mixed: gap per application higher"),
    (SHRINKS, probe_summary(1.0, 0.118, 0.046), "the first application of each weight dominates"),
    (SHRINKS, None, "No compounding"),
    ({1: [0.001, 0.003, 0.002], 6: [0.003, 0.001, 0.0021]}, None, "Inconclusive or mixed: gap per application inconclusive"),
    ({1: [0.001], 6: [0.004]}, None, "Inconclusive"),
])
def test_quant_loop_verdict_every_branch(per_app: dict, probe: pd.DataFrame | None, expect: str) -> None:
    text = quant_loop_verdict(quant_loop_df(per_app), 4, probe)
    assert expect in text, text
    assert "- shared: gap per application, L = 6 minus L = 1" in text
    assert "- hybrid - shared gap at L = 1:" in text and "- hybrid - shared gap at L = 6:" in text


def test_quant_loop_verdict_with_one_seed_reads_the_bootstrap_intervals() -> None:
    narrow = quant_loop_verdict(quant_loop_df({1: [0.004], 6: [0.001]}, width=0.0005), 4)
    assert "No compounding" in narrow and "one seed: window-bootstrap intervals" in narrow
    wide = quant_loop_verdict(quant_loop_df({1: [0.004], 6: [0.001]}, width=0.05), 4)
    assert "gap per application inconclusive" in wide


def test_quant_loop_verdict_reads_the_probe() -> None:
    probe = pd.DataFrame([{"arch": "shared", "scheme": "rowmax", "bits": 4, "superadditivity": v} for v in (1.0, 1.1, 0.9)])
    text = quant_loop_verdict(quant_loop_df({1: [0.001] * 3, 2: [0.001] * 3}), 4, probe)
    assert "- shared (rowmax): all-steps / summed single-step effect: +1.0000 [" in text
    listed = quant_loop_verdict(quant_loop_df({1: [0.001] * 3, 6: [0.001] * 3}), 4, probe_summary(1.19, 0.1, 0.05))
    assert "- shared (baseline): all-steps / summed single-step effect: L = 1 1.00 [0.90, 1.10]; L = 6 1.19 [1.14, 1.24]" in listed
    assert "- shared at its deepest L (baseline): hidden-state error 0.1 at the first step, 0.05 at the last" in listed
    assert quant_loop_verdict(quant_loop_df({1: [0.001]}), 4).startswith("Need int4 gaps")


def test_loop_budget_arms_spend_each_budget() -> None:
    from recur_lib.lab.ablations import hybrid, loop_budget_arms
    from recur_lib.model.flops import measured_flops
    base = Config.from_name("quick")
    arms = loop_budget_arms([1, 2, 4], base, [1_000_000, 4_000_000])
    comp = [a for a in arms.values() if a.labels["mode"] == "compute"]
    assert len(comp) == 6 and {a.labels["budget"] for a in comp} == {1_000_000, 4_000_000}
    for a in comp:  # every compute arm spends its budget (to within one step)
        per_step = measured_flops(base.override(a.overrides)) * base.train.batch_tokens
        l1 = measured_flops(base.override(hybrid(2, 1))) * a.labels["budget"]
        assert abs(a.labels["flops"] - l1) <= per_step
    assert {a.labels["mode"] for a in arms.values()} == {"compute", "params", "flat", "sampled"}
    s = base.override(arms["sampled-L3"].overrides)
    assert s.train.loop_sampling == "poisson_lognormal" and s.schedule.n_loops == 3
    assert base.override(arms["flat-10"].overrides).effective_layers == 10


def budget_df(gain_l1: float, gain_loop: dict[int, float], seeds: int = 3) -> pd.DataFrame:
    """L1 at two budgets (1 and 4 units of FLOPs) and params arms at budget 1 costing L units each."""
    rows = []
    for s in range(seeds):
        e = 0.002 * (s - 1)
        rows += [{"mode": "compute", "loops": 1, "budget": 1, "flops": 1.0, "seed": s, "final_val_bpb": 3.0 + e},
                 {"mode": "compute", "loops": 1, "budget": 4, "flops": 4.0, "seed": s, "final_val_bpb": 3.0 - gain_l1 + e}]
        bpb = 3.0
        for L in sorted(gain_loop):
            bpb -= gain_loop[L]
            rows.append({"mode": "params", "loops": L, "budget": 1, "flops": float(L), "seed": s,
                         "final_val_bpb": bpb + e + 0.0001 * s * L})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("gain_l1, gains, expect", [
    (0.3, {2: 0.2, 3: 0.001, 4: 0.0005}, "stop paying after 2"),     # L2->3 tiny and L1 steps buy 0.1/FLOP
    (0.0003, {2: 0.2, 3: 0.001, 4: 0.0005}, "Inconclusive"),          # more L1 steps buy even less
    (0.3, {2: 0.2, 3: 0.1, 4: 0.08}, "Inconclusive"),                 # every loop still gains > margin
])
def test_loop_stop_verdict_every_branch(gain_l1: float, gains: dict, expect: str) -> None:
    from recur_lib.lab.ablations import loop_stop_verdict
    text = loop_stop_verdict(budget_df(gain_l1, gains))
    assert expect in text, text
    assert "Need the L1 arm" in loop_stop_verdict(budget_df(0.3, gains)[lambda d: d["budget"] == 1])


def length_df(gaps: dict[str, dict[int, float]], seeds: int = 1, width: float = 0.001) -> pd.DataFrame:
    rows = []
    for arch, per in gaps.items():
        for n, g in per.items():
            for s in range(seeds):
                v = g + 0.0002 * s
                rows.append({"arch": arch, "length": n, "bits": 4, "seed": s, "quant_gap": v,
                             "quant_gap_lo": v - width, "quant_gap_hi": v + width})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("gaps, seeds, expect", [
    ({"shared": {250: 0.01, 4000: 0.03}, "hybrid": {250: 0.01, 4000: 0.02}}, 1, "grows with training length in every arm"),
    ({"shared": {250: 0.01, 4000: 0.03}, "hybrid": {250: 0.01, 4000: 0.0105}}, 1, "in shared only"),
    ({"shared": {250: 0.03, 4000: 0.01}, "hybrid": {250: 0.03, 4000: 0.01}}, 3, "shrinks"),
    ({"shared": {250: 0.01, 4000: 0.0101}, "hybrid": {250: 0.01, 4000: 0.0101}}, 1, "Inconclusive"),
])
def test_quant_length_verdict_every_branch(gaps: dict, seeds: int, expect: str) -> None:
    from recur_lib.lab.ablations import quant_length_arms, quant_length_verdict
    text = quant_length_verdict(length_df(gaps, seeds), bits=4)
    assert expect in text, text
    assert ("paired by seed" in text) == (seeds > 1)
    arms = quant_length_arms(3, [250, 1000])
    assert sorted(arms) == ["hybrid-L3-1000steps", "hybrid-L3-250steps", "shared-L3-1000steps", "shared-L3-250steps"]
    assert arms["hybrid-L3-250steps"].overrides["train.iterations"] == 250
def test_relative_instability_cancels_a_spike_every_arm_sees(tmp_path: Path) -> None:
    """Three runs on the same batches: a data spike at step 5 in all three, an extra one at step 8 in
    run c only. The own-minimum peak sees the common spike everywhere; the clean one only c's."""
    from recur_lib.lab.ablations import relative_instability
    rows = []
    for name, extra in (("a", 0.0), ("b", 0.0), ("c", 3.0)):
        d = tmp_path / name
        d.mkdir()
        losses = [4.0 - 0.01 * s + (5.0 if s == 5 else 0.0) + (extra if s == 8 else 0.0) for s in range(1, 21)]
        logged = list(zip(range(1, 21), losses))
        if name == "b":  # interrupted after step 12 and resumed from step 10: steps 11-12 logged twice
            logged = logged[:10] + [(11, 99.0), (12, 99.0)] + logged[10:]
        (d / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "train_loss": v}) + "\n" for s, v in logged))
        rows.append({"arm": name, "seed": 0, "run_dir": str(d)})
    out = relative_instability(pd.DataFrame(rows)).set_index("arm")
    assert out.loc["a", "clean_peak_excess"] == pytest.approx(0.0, abs=1e-9) and out.loc["a", "rel_spikes"] == 0
    assert out.loc["b", "clean_peak_excess"] == pytest.approx(0.0, abs=1e-9)  # the resumed values count, not the torn ones
    assert out.loc["c", "clean_peak_excess"] == pytest.approx(0.3, abs=0.01) and out.loc["c", "rel_spikes"] == 1
    assert relative_instability(pd.DataFrame(rows[:2]))["clean_peak_excess"].isna().all()  # no median of two


def test_lora_regime_verdict_reads_the_named_instability_column() -> None:
    df = regime_df({}, {1.0: 0.1, 2.828: 0.4, 9.8: 0.9}).rename(columns={"loss_peak_excess": "clean_peak_excess"})
    text = lora_regime_verdict(df, peak="clean_peak_excess")
    assert "peak loss rise without the common data spikes, x9.8 - x1" in text and "holds here" in text


def flat_df(diffs: dict[int, float], seeds: int = 3) -> pd.DataFrame:
    """Looped "params" arms and flat controls per L; flat = looped + diffs[L] (+ a small seed effect)."""
    rows = []
    for s in range(seeds):
        for L, d in diffs.items():
            base = 3.0 - 0.01 * L + 0.002 * s
            rows += [{"mode": "params", "loops": L, "seed": s, "final_val_bpb": base},
                     {"mode": "flat", "loops": L, "seed": s, "final_val_bpb": base + d + 0.0003 * s * (s - 1)}]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("diffs, expect", [
    ({2: -0.05, 4: -0.04}, "Sharing costs bpb at every depth"),
    ({2: 0.05, 4: 0.04}, "looped model beats the flat one"),
    ({2: -0.05, 4: 0.0}, "Partly resolved: flat better at L2, looped better at none; unresolved at L4"),
    ({2: 0.0, 4: 0.0001}, "Inconclusive"),
])
def test_flat_control_verdict_every_branch(diffs: dict, expect: str) -> None:
    from recur_lib.lab.ablations import flat_control_verdict
    text = flat_control_verdict(flat_df(diffs))
    assert expect in text, text
    assert "Need the flat controls" in flat_control_verdict(flat_df(diffs)[lambda d: d["mode"] == "params"])


def extrapolation_df(rise: dict[str, float], seeds: int = 3, trained: int = 3) -> pd.DataFrame:
    """Each mode's bpb at 1..8 loops: a bowl at `trained` for the part below, then rise[mode] per loop."""
    rows = []
    for mode, r in rise.items():
        for s in range(seeds):
            for k in range(1, 9):
                v = 3.0 + 0.05 * max(trained - k, 0) + r * max(k - trained, 0) + 0.001 * s + 0.0002 * s * k
                rows.append({"loop_sampling": mode, "eval_loops": k, "seed": s, "float_bpb": v})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("rise, expect", [
    ({"fixed": 0.05, "poisson_lognormal": -0.001}, "Confirms depth extrapolation"),
    ({"fixed": 0.05, "poisson_lognormal": 0.0002}, "Confirms depth extrapolation"),   # flat within the margin
    ({"fixed": 0.05, "poisson_lognormal": 0.05}, "Refutes depth extrapolation"),
    ({"fixed": 0.05, "poisson_lognormal": 0.03}, "Partly: from 3 to 8 loops the random-count model degrades less"),
    ({"fixed": 0.0, "poisson_lognormal": 0.0}, "Inconclusive"),
])
def test_extrapolation_verdict_every_branch(rise: dict, expect: str) -> None:
    from recur_lib.lab.ablations import extrapolation_verdict
    text = extrapolation_verdict(extrapolation_df(rise), trained_loops=3)
    assert expect in text, text
    assert "8 - 3 loops" in text
    one = extrapolation_df(rise)[lambda d: d["loop_sampling"] == "fixed"]
    assert "Need a fixed-count and a random-count" in extrapolation_verdict(one, 3)
    # with one seed no interval can resolve anything
    assert "Inconclusive" in extrapolation_verdict(extrapolation_df(rise, seeds=1), 3)


def test_lora_regime_verdict_bounds_nothing_it_cannot_resolve_and_lists_controls_and_onsets() -> None:
    df = regime_df({}, {})
    noisy = {"muon-r8-b9.8-beta0.95-lr0.01": 0.9, "muon-r8-b9.8-beta0.99-lr0.04": -0.5}
    df["loss_peak_excess"] = [v + noisy.get(a, 0.0) for a, v in zip(df["arm"], df["loss_peak_excess"])]
    text = lora_regime_verdict(df)
    assert "No run diverged" in text and "is not resolved" in text and "bounded null" not in text, text
    assert "- control-muon-r1-matrices-lr0.01: diverged 0/1, peak loss rise 0.230 nats" in text
    onset = regime_df({9.8: 1}, {}).assign(diverged_at_step=lambda t: [1000.0 if s == "diverged" else float("nan")
                                                                       for s in t["status"]])
    assert "- divergence onsets (step): muon-r8-b9.8-beta0.95-lr0.01 seed 0 at 1000" in lora_regime_verdict(onset)
