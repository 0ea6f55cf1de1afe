"""Ablation arms and verdicts: the sentences under the tables follow the data, whichever way it goes."""
from __future__ import annotations

import pandas as pd
import pytest

from recur_lib import Config
from recur_lib.lab.ablations import (divergence_counts, lora_arms, lora_verdict, loop_arms, loop_table, quant_arms,
                                 quant_table, quant_verdict, loop_verdict)


def lora_df(diverged: dict[str, int], runs: int = 3) -> pd.DataFrame:
    rows = []
    for arm in ("rank1-vectors-adamw", "rank8-muon-keller", "rank8-muon-none", "rank8-muon-moonlight", "rank8-adamw"):
        for i in range(runs):
            d = i < diverged.get(arm, 0)
            rows.append({"arm": arm, "status": "diverged" if d else "finished",
                         "diverged_at_step": 1500.0 if d else None, "final_val_bpb": None if d else 1.3})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("diverged, expect", [
    ({}, "not reproduced"),
    ({"rank8-muon-keller": 3}, "support #1096's explanation"),
    ({"rank8-muon-keller": 3, "rank8-muon-none": 2}, "not the whole cause"),
    ({"rank8-muon-keller": 3, "rank8-adamw": 3}, "rank-8 per-loop delta itself"),
    ({"rank8-muon-moonlight": 1}, "keller scale is not what"),
])
def test_lora_verdict_follows_the_data(diverged: dict, expect: str) -> None:
    text = lora_verdict(lora_df(diverged))
    assert expect in text
    c = divergence_counts(lora_df(diverged)).set_index("arm")
    assert c.loc["rank8-muon-keller", "diverged"] == diverged.get("rank8-muon-keller", 0)


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


def test_quant_table_and_verdict() -> None:
    ev = pd.DataFrame([{"arm": f"{a}-L3-qat-{q}", "seed": 0, "variant": f"eval-int{b}", "quant_gap": g,
                        "arch": a, "loops": 3, "qat": q, "bits": b, "status": "finished"}
                       for a, q, b, g in [("shared", "off", 8, 0.40), ("hybrid", "off", 8, 0.01), ("shared", "on", 8, 0.02),
                                          ("hybrid", "on", 8, 0.0), ("shared", "off", 4, 0.9), ("hybrid", "off", 4, 0.5)]])
    t = quant_table(ev)
    assert set(t.columns) >= {"arch", "loops", "qat", "bits"} and t["loops"].eq(3).all()
    assert "in the direction of #341's claim" in quant_verdict(t, 8)
    assert "does not close the gap" in quant_verdict(t, 4)
    small = t.assign(quant_gap=0.001)
    assert "far from #341's 0.40" in quant_verdict(small, 8)


def test_loop_arms_and_verdict() -> None:
    base = Config.from_name("smoke", {"train.iterations": 120})
    arms = loop_arms([1, 2, 4], base, fixed_compute=True)
    assert set(arms) == {"params-L1", "params-L2", "params-L4", "compute-L2", "compute-L4"}
    assert arms["compute-L4"].overrides["train.iterations"] == round(120 * 4 / 10)
    df = pd.DataFrame([{"arm": a, "status": "finished", "final_val_bpb": v, **arms[a].labels}
                       for a, v in [("params-L1", 2.0), ("params-L2", 1.9), ("params-L4", 1.895), ("compute-L2", 1.95)]])
    t = loop_table(df)
    assert sorted(t[t["mode"] == "compute"]["loops"]) == [1, 2]
    text = loop_verdict(t[t["mode"] == "params"], metric="final_val_bpb")
    assert "stop paying after 2" in text
    assert "still paid" in loop_verdict(t[t["mode"] == "params"], metric="final_val_bpb", min_gain=0.001)
