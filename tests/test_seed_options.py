"""The options the seeds' code needs (cyclic schedule, per-step controls, repeats after the stack or switched
on by the clock, XSA/VE by block or by step, SWA below an LR threshold, a QAT rule of its own, AdamW weight
decay on embeddings and scalars): what each computes, and that each is an equivalence where it should be."""
from __future__ import annotations

import math

import pytest
import torch

from recur_lib.config import Config, ConfigError
from recur_lib.model import build_model
from recur_lib.model.tricks import last_n_mask
from recur_lib.optim import Optimizers
from recur_lib.train import WeightAverager, lr_scale, repeats_on

from test_model import make, tiny, tokens

CONTROLS = ("attn_scale", "mlp_scale", "resid_mix", "q_gain")


HYBRID = {"schedule.kind": "hybrid", "schedule.n_prelude": 1, "schedule.n_core": 2, "schedule.n_loops": 3,
          "schedule.n_coda": 1}


def _block_control(block, name: str) -> torch.Tensor:
    return block.attn.q_gain if name == "q_gain" else getattr(block, name)


@pytest.mark.parametrize("names", [CONTROLS, ("attn_scale", "mlp_scale", "resid_mix")], ids=["all", "927"])
def test_step_controls_holding_each_blocks_values_compute_the_blocks_forward_bitwise(names) -> None:
    plain = make(tiny(**HYBRID), perturb=0.05)
    steps = build_model(tiny(**HYBRID, **{"model.step_controls": names})).eval()
    own = {k: v for k, v in plain.state_dict().items() if k in steps.state_dict()}
    steps.load_state_dict(own, strict=False)
    with torch.no_grad():
        for i, st in enumerate(steps.steps):
            for name in names:
                steps.step_controls[name][i].copy_(_block_control(plain.blocks[st.block], name))
    assert "q_gain" in names or steps.blocks[1].attn.q_gain is not None
    assert all(getattr(steps.blocks[1], n, None) is None for n in names if n != "q_gain")
    x = tokens()
    assert torch.equal(steps(x), plain(x))
    with torch.no_grad():  # and a shared block's applications can now differ: one row changes one application
        steps.step_controls["attn_scale"][3].zero_()
    assert not torch.equal(steps(x), plain(x))


def test_step_controls_are_routed_to_adam_and_refused_with_a_birkhoff_mix_or_a_typo() -> None:
    m = build_model(tiny(**HYBRID, **{"model.step_controls": CONTROLS}))
    opt = Optimizers(m, m.cfg)
    assert {n for n, _ in opt.groups["scalars"]} >= {f"step_controls.{c}" for c in CONTROLS}
    assert m.step_controls["resid_mix"].shape == (len(m.steps), 2, 32)
    with pytest.raises(ConfigError, match="model.step_controls keeps a resid_mix per step"):
        tiny(**HYBRID, **{"model.step_controls": ("resid_mix",), "model.birkhoff_mix": "core"})
    with pytest.raises(ConfigError, match=r"model.step_controls: unknown \['q_gian'\]"):
        tiny(**HYBRID, **{"model.step_controls": ("q_gian",)})


def test_a_cyclic_schedule_over_whole_passes_is_the_looped_one() -> None:
    looped = make(tiny(**{**HYBRID, "schedule.kind": "looped", "schedule.n_prelude": 0, "schedule.n_coda": 0}),
                  perturb=0.05)
    cyclic = build_model(tiny(**{**HYBRID, "schedule.kind": "cyclic", "schedule.n_prelude": 0, "schedule.n_coda": 0,
                                 "schedule.n_loops": 6})).eval()
    cyclic.load_state_dict(looped.state_dict())
    assert [(s.block, s.loop) for s in cyclic.steps] == [(s.block, s.loop) for s in looped.steps]
    x = tokens()
    assert torch.equal(cyclic(x), looped(x))
    with pytest.raises(ConfigError, match="fewer applications than blocks"):
        tiny(**{"schedule.kind": "cyclic", "schedule.n_core": 4, "schedule.n_loops": 3, "schedule.n_prelude": 0,
                "schedule.n_coda": 0})


def test_last_n_by_block_selects_every_pass_of_the_last_blocks_and_ve_steps_select_by_index() -> None:
    cfg = Config.from_name("seed-1406")
    with torch.device("meta"):
        m = build_model(cfg)
    xsa, ve = m.last_n_masks(m.steps)
    blocks = [st.block for st in m.steps]  # 0..10, then 4 5 again
    assert [b for b, on in zip(blocks, xsa) if on] == [7, 8, 9, 10]
    assert [b for b, on in zip(blocks, ve) if on] == [9, 10]
    assert last_n_mask(m.steps, 2, "steps", frozenset()) == (False,) * 11 + (True, True)  # what 'steps' would pick
    with torch.device("meta"):
        m1096 = build_model(Config.from_name("seed-1096"))
    assert [i for i, on in enumerate(m1096.last_n_masks(m1096.steps)[1]) if on] == [9, 10]
    with pytest.raises(ConfigError, match="both place the value embedding"):
        tiny(**{"model.ve_steps": (1,), "model.ve_last_n": 1})
    with pytest.raises(ConfigError, match=r"model.ve_steps = \[9, 10\]: steps \[9, 10\] are past the schedule's 6"):
        Config.from_name("seed-1096", {"schedule.n_loops": 1, "model.loop_lora_rank": 0})


def test_swa_below_an_lr_threshold_snapshots_every_k_steps_while_the_multiplier_is_under_it() -> None:
    cfg = tiny(**{"train.swa_below_lr_scale": 0.2, "train.swa_every": 50})
    avg = WeightAverager(build_model(cfg), cfg)
    assert [s for s in range(1, 400) if avg.swa_due(s, 0.1 if s > 200 else 0.5)] == [250, 300, 350]
    assert not avg.swa_due(300, 0.2)  # strictly below, as `scale < 0.2`
    by_start = tiny(**{"train.swa_start_frac": 0.5, "train.swa_every": 2})  # 4 steps: from step 2, every 2
    avg = WeightAverager(build_model(by_start), by_start)
    assert [s for s in range(1, 5) if avg.swa_due(s, 1.0)] == [2, 4]


def test_the_qat_rule_is_the_exports_unless_set_apart() -> None:
    q = Config().quant
    assert q.qat_rule() == ("baseline", q.clip_percentile)
    q927 = Config.from_name("seed-927").quant
    assert (q927.scheme, q927.qat_rule()) == ("baseline", ("rowmax", 100.0))


def test_adam_weight_decay_reaches_the_embedding_and_scalar_groups_only_when_set() -> None:
    def wds(cfg: Config) -> dict[str, float]:
        opt = Optimizers(build_model(cfg), cfg)
        return {g: o.param_groups[0]["weight_decay"] for g, o in opt.optimizers.items()}
    assert wds(tiny(**HYBRID)) == {"matrices": 0.0, "embed": 0.0, "scalars": 0.0}
    assert wds(tiny(**HYBRID, **{"optim.embed_weight_decay": 0.04, "optim.scalar_weight_decay": 0.01})) == \
        {"matrices": 0.0, "embed": 0.04, "scalars": 0.01}


def test_repeats_switched_on_by_the_clock_follow_training_time_or_steps_without_a_cap() -> None:
    clock = Config.from_name("pg-miniloop")
    start = clock.phases()["repeat_start_step"]
    assert not repeats_on(19999, 209.9, start, clock) and repeats_on(1, 210.0, start, clock)  # 0.35 x 600 s
    uncapped = clock.override({"train.max_wallclock_s": 0.0, "train.iterations": 100})
    assert [repeats_on(s, 1e9 * (s < 35), uncapped.phases()["repeat_start_step"], uncapped) for s in (34, 35)] \
        == [False, True]


def test_a_warmdown_longer_than_the_run_starts_the_lr_below_one() -> None:
    """#341: 2,500 warmdown steps over a 954-step run; its scaled presets keep the 2.62 ratio."""
    cfg = Config.from_name("seed-341-cpu")
    n = cfg.train.iterations
    assert cfg.train.warmdown_frac == pytest.approx(2500 / 954)
    assert lr_scale(0, 0.0, cfg) == pytest.approx(n / math.ceil(2500 / 954 * n))
