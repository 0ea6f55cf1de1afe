"""The model: schedules, causality, equivalences between schedules and with tricks off, LoRA naming,
parameter counts, forward/backward in fp32 and bf16 autocast, and CUDA when there is one."""
from __future__ import annotations

import re

import pytest
import torch

from recur_lib.config import Config, ConfigError
from recur_lib.model import RecurGPT, build_model, build_schedule, format_schedule
from recur_lib.export import CONTROL
from recur_lib.model.blocks import MLP, Block, Rotary, apply_rotary, rms_norm
from recur_lib.model.tricks import (BigramHash, SmearGate, birkhoff_mix, clamped_step_scales, exclusive_self_attention,
                                    last_n_mask, leaky_relu2)
from recur_lib.optim import route_parameters

from reference.baseline_gpt import BaselineGPT as RefGPT

TINY = {"model.vocab_size": 64, "model.dim": 32, "model.n_heads": 4, "model.n_kv_heads": 2}
SCHEDULES = {
    "flat": {"schedule.kind": "flat", "schedule.n_layers": 4},
    "looped": {"schedule.kind": "looped", "schedule.n_prelude": 0, "schedule.n_core": 2, "schedule.n_loops": 3,
               "schedule.n_coda": 0},
    "hybrid": {"schedule.kind": "hybrid", "schedule.n_prelude": 1, "schedule.n_core": 2, "schedule.n_loops": 2,
               "schedule.n_coda": 1},
    "repeat": {"schedule.kind": "repeat", "schedule.n_layers": 5, "schedule.repeat_layers": (2, 3),
               "schedule.n_loops": 2},
    "cyclic": {"schedule.kind": "cyclic", "schedule.n_prelude": 0, "schedule.n_core": 2, "schedule.n_loops": 3,
               "schedule.n_coda": 0},
    "repeat_after": {"schedule.kind": "repeat", "schedule.n_layers": 5, "schedule.repeat_layers": (2, 3),
                     "schedule.n_loops": 2, "schedule.repeat_at": "after"},
}
ALL_TRICKS = {"model.xsa_last_n": 2, "model.ve_last_n": 2, "model.ve_dim": 8, "model.use_smear_gate": True,
              "model.bigram_buckets": 97, "model.bigram_dim": 8, "model.loop_lora_rank": 2,
              "model.loop_lora_form": "matrices", "model.use_loop_scales": True, "model.use_loop_embedding": True,
              "model.mlp_act": "leaky_relu2", "model.output_norm": "all", "model.birkhoff_mix": "all",
              "model.use_step_scales": True, "model.rope_dims": 4, "model.ln_scale": True,
              "model.step_controls": ("attn_scale", "mlp_scale", "q_gain")}
# on schedules with a looped core: the #1096 scopes and #927's unit
CORE_TRICKS = {"model.output_norm": "core", "model.birkhoff_mix": "core", "model.last_n_unit": "loops"}
# every field added with the #1096 / #1406 / #927 tricks, at its default
NEW_DEFAULTS = {"model.last_n_unit": "steps", "model.mlp_act": "relu2", "model.output_norm": "off",
                "model.birkhoff_mix": "off", "model.use_step_scales": False, "model.step_scale_clamp": 4.0,
                "model.rope_dims": 0, "model.ln_scale": False, "model.step_controls": (), "model.ve_steps": ()}


def tiny(**over) -> Config:
    return Config.from_name("smoke", {**TINY, **over})


def make(cfg: Config, seed: int = 0, perturb: float = 0.0) -> RecurGPT:
    torch.manual_seed(seed)
    m = build_model(cfg)
    if perturb:  # wake zero-initialised parts (output projections, LoRA B, ...) so they matter
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn_like(p) * perturb)
    return m.eval()


def tokens(B: int = 2, T: int = 24, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 64, (B, T), generator=torch.Generator().manual_seed(seed))


def test_schedules_have_the_documented_shapes() -> None:
    fmt = lambda over: format_schedule(build_schedule(tiny(**over).schedule))  # noqa: E731
    assert fmt(SCHEDULES["flat"]) == "0 1 2 3"
    assert fmt(SCHEDULES["looped"]) == "0 1 | 0 1 | 0 1"
    assert fmt(SCHEDULES["hybrid"]) == "P0 | 1 2 | 1 2 | C3"
    assert fmt(SCHEDULES["repeat"]) == "0 1 | 2 3 | 2 3 | 4"
    s1096 = build_schedule(Config.from_name("seed-1096").schedule)
    assert [st.block for st in s1096] == [0] + [1, 2, 3, 4] * 3 + [5]
    assert [st.loop for st in s1096] == [0] + [0] * 4 + [1] * 4 + [2] * 4 + [0]
    s1406 = build_schedule(Config.from_name("seed-1406").schedule)
    assert [st.block for st in s1406] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 4, 5]  # #1406 repeats after the stack
    assert [st.loop for st in s1406] == [0] * 11 + [1, 1]
    assert len(build_schedule(Config.from_name("seed-1406").schedule, repeats_on=False)) == 11
    s927 = build_schedule(Config.from_name("seed-927").schedule)  # 7 applications cycling through 4 blocks
    assert [(st.block, st.loop) for st in s927] == [(0, 0), (1, 0), (2, 0), (3, 0), (0, 1), (1, 1), (2, 1)]
    assert format_schedule(s927) == "0 1 2 3 | 0 1 2"
    repeat_in_place = tiny(**{**SCHEDULES["repeat"], "schedule.repeat_at": "in_place"}).schedule
    repeat_after = tiny(**{**SCHEDULES["repeat"], "schedule.repeat_at": "after"}).schedule
    assert fmt({**SCHEDULES["repeat"], "schedule.repeat_at": "in_place"}) == "0 1 | 2 3 | 2 3 | 4"
    assert fmt({**SCHEDULES["repeat"], "schedule.repeat_at": "after"}) == "0 1 | 2 3 | 4 | 2 3"
    assert len(build_schedule(repeat_in_place)) == len(build_schedule(repeat_after))


@pytest.mark.parametrize("kind", list(SCHEDULES))
@pytest.mark.parametrize("tricks", [False, True], ids=["plain", "all_tricks"])
def test_changing_token_t_never_changes_earlier_logits(kind: str, tricks: bool) -> None:
    on = {**ALL_TRICKS, **(CORE_TRICKS if kind != "flat" else {})} if tricks else {}
    m = make(tiny(**SCHEDULES[kind], **on), perturb=0.05)
    x = tokens()
    base = m(x)
    for t in (0, 7, 23):
        y = x.clone()
        y[:, t:] = (y[:, t:] + 1 + torch.arange(24 - t)) % 64
        out = m(y)
        assert torch.equal(out[:, :t], base[:, :t]), f"logits before {t} changed"
        if t < 23:
            assert not torch.equal(out[:, t:], base[:, t:])


def _copy(src: RecurGPT, dst: RecurGPT) -> None:
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    assert not unexpected
    assert all(k.split(".")[0] in ("loop_lora", "loop_gains", "loop_embed", "step_scales", "bigram", "value_embed",
                                   "smear") for k in missing), missing


def test_shared_schedule_with_one_loop_equals_flat() -> None:
    flat = make(tiny(**{"schedule.kind": "flat", "schedule.n_layers": 4}), perturb=0.05)
    looped = make(tiny(**{"schedule.kind": "looped", "schedule.n_prelude": 0, "schedule.n_core": 4,
                          "schedule.n_loops": 1, "schedule.n_coda": 0}), seed=5)
    hybrid = make(tiny(**{"schedule.kind": "hybrid", "schedule.n_prelude": 1, "schedule.n_core": 2,
                          "schedule.n_loops": 1, "schedule.n_coda": 1}), seed=6)
    _copy(flat, looped)
    _copy(flat, hybrid)
    x = tokens()
    assert torch.equal(looped(x), flat(x)) and torch.equal(hybrid(x), flat(x))


@pytest.mark.parametrize("form, rank", [("matrices", 4), ("matrices", 1), ("vectors", 1)])
def test_zero_initialised_loop_parameters_are_an_exact_no_op(form: str, rank: int) -> None:
    sched = SCHEDULES["hybrid"]
    plain = make(tiny(**sched), perturb=0.05)
    extra = make(tiny(**sched, **{"model.loop_lora_rank": rank, "model.loop_lora_form": form,
                                  "model.use_loop_scales": True, "model.use_loop_embedding": True,
                                  "model.use_step_scales": True}), seed=3)
    _copy(plain, extra)
    x = tokens()
    assert torch.equal(extra(x), plain(x))


def test_zero_initialised_bigram_and_value_embedding_are_exact_no_ops() -> None:
    plain = make(tiny(), perturb=0.05)
    extra = make(tiny(**{"model.bigram_buckets": 97, "model.bigram_dim": 8, "model.ve_last_n": 2, "model.ve_dim": 8}), seed=3)
    _copy(plain, extra)
    assert torch.equal(extra(tokens()), plain(tokens()))


def test_tricks_off_match_an_independent_baseline_implementation() -> None:
    cfg = tiny(**SCHEDULES["flat"])
    ours = make(cfg, perturb=0.05)
    ref = RefGPT(64, 32, 4, 4, 2, 64, 30.0, 10000.0)
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = tokens()
    assert torch.equal(ours(x), ref(x))  # bitwise in float32


def test_xsa_output_is_orthogonal_to_own_value() -> None:
    y, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8)
    out = exclusive_self_attention(y, v)
    v_hat = torch.nn.functional.normalize(v, dim=-1).repeat_interleave(2, dim=1)
    assert (out * v_hat).sum(-1).abs().max() < 1e-5
    assert not torch.allclose(out, y)


def test_smear_gate_and_bigram_hash_follow_their_definitions() -> None:
    sg = SmearGate(4)
    x = torch.randn(1, 3, 4)
    g = torch.sigmoid(sg.gate)
    out = sg(x)
    torch.testing.assert_close(out[:, 0], (1 - g) * x[:, 0])
    torch.testing.assert_close(out[:, 2], (1 - g) * x[:, 2] + g * x[:, 1])
    bh = BigramHash(1000, 4, 8)
    idx = torch.tensor([[5, 7, 11]])
    assert bh.bucket_ids(idx).tolist() == [[5 % 1000, (5 * 92821 + 7) % 1000, (7 * 92821 + 11) % 1000]]
    assert torch.equal(bh(idx), torch.zeros(1, 3, 8))  # zero-initialised projection


@pytest.mark.parametrize("form, rank, ndim", [("matrices", 8, 2), ("vectors", 1, 1)])
def test_lora_tensors_are_named_for_routing(form: str, rank: int, ndim: int) -> None:
    m = make(Config.from_name("seed-1096-quick", {"model.loop_lora_rank": rank, "model.loop_lora_form": form}))
    names = [n for n, _ in m.named_parameters() if n.startswith("loop_lora.")]
    pattern = re.compile(r"loop_lora\.b(\d)_l(\d)\.(q|k|v|o|fc|proj)\.(A|B|u|v)")
    assert names and all(pattern.fullmatch(n) for n in names), names[:3]
    assert {int(pattern.fullmatch(n).group(1)) for n in names} == {1, 2, 3, 4}  # shared blocks only
    assert {int(pattern.fullmatch(n).group(2)) for n in names} == {0, 1, 2}  # one set per loop
    assert all(p.ndim == ndim for n, p in m.named_parameters() if n.startswith("loop_lora."))
    assert {pattern.fullmatch(n).group(3) for n in names} == set(m.cfg.model.loop_lora_targets)
    assert len(names) == 4 * 3 * len(m.cfg.model.loop_lora_targets) * 2


def test_seed_parameter_counts_and_depth() -> None:
    with torch.device("meta"):
        m = build_model(Config.from_name("seed-1096"))
    assert len(m.blocks) == 6 and len(m.steps) == 14 and m.cfg.model.dim == 640
    mc = m.cfg.model  # the preset's MLP width, LoRA targets and mixing are the preset's business: read them
    d, kv, hidden, h = 640, 5 * 64, int(mc.mlp_mult * 640), 10
    mats = 2 * d * d + 2 * d * kv + 2 * d * hidden + h + 2 * d             # + q_gain, attn/mlp scales
    mix = {True: 1, False: 2 * d}                                            # Birkhoff logit | resid_mix
    g = m.param_groups()
    assert g["blocks.unique"] == 2 * (mats + mix[mc.birkhoff_mix == "all"])
    assert g["blocks.shared"] == 4 * (mats + mix[mc.birkhoff_mix != "off"])
    in_out = {"q": d + d, "k": d + kv, "v": d + kv, "o": d + d, "fc": d + hidden, "proj": hidden + d}
    assert g["loop_lora"] == 4 * 3 * sum(in_out[t] for t in mc.loop_lora_targets)  # rank-1 vectors u, v
    assert g["total"] == sum(v for k, v in g.items() if k != "total")
    text = m.describe()
    assert "14 effective layers from 6 unique blocks" in text and "loop_lora(r1, vectors)" in text
    with torch.device("meta"):
        m927 = build_model(Config.from_name("seed-927"))
    assert (len(m927.blocks), len(m927.steps), m927.n_encoder) == (4, 7, 3)


def test_negative_rank_and_bad_shapes_fail_at_construction() -> None:
    with pytest.raises(ConfigError, match=r"model\.loop_lora_rank = -1: out of range"):
        tiny(**{"model.loop_lora_rank": -1})
    with pytest.raises(ConfigError, match=r"model\.n_kv_heads = 3 must divide"):
        tiny(**{"model.n_kv_heads": 3})


def test_eval_at_other_loop_counts_and_delayed_repeats() -> None:
    m = make(tiny(**SCHEDULES["hybrid"], **ALL_TRICKS), perturb=0.05)
    x = tokens()
    for loops in (1, 2, 5):
        assert m(x, n_loops=loops).shape == (2, 24, 64)
    assert torch.equal(m(x, n_loops=2), m(x))
    r = make(tiny(**SCHEDULES["repeat"]), perturb=0.05)
    on = r(x)
    r.repeats_on = False
    assert len(r.schedule()) == 5 and not torch.equal(r(x), on)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quick_preset_forward_backward_on_cpu(dtype: torch.dtype) -> None:
    cfg = Config.from_name("quick", {"model.use_smear_gate": True, "model.xsa_last_n": 2})
    m = build_model(cfg).train()
    x, y = torch.randint(0, cfg.model.vocab_size, (2, 2, cfg.train.seq_len))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        loss = m(x, y)
    loss.backward()
    # near-uniform predictions at init: the tied embedding starts at std 0.005
    assert torch.isfinite(loss) and abs(loss.item() - torch.log(torch.tensor(1024.0)).item()) < 0.1
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    per_token = m(x, y, reduction="none")
    assert per_token.shape == x.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_runs_unchanged_on_cuda() -> None:
    cfg = tiny(**SCHEDULES["hybrid"], **ALL_TRICKS)
    m = make(cfg, perturb=0.05)
    x = tokens()
    cpu = m(x)
    m = m.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = m(x.cuda())
    assert out.shape == cpu.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_softcap_head_matches_autograd(dtype: torch.dtype) -> None:
    cfg = tiny(**SCHEDULES["hybrid"], **{"model.logit_softcap": 5.0})  # a small cap: tanh far from linear
    idx, tgt = torch.randint(0, 64, (2, 3, 16))
    losses, grads = [], []
    for fused in (True, False):
        m = make(cfg.override({"run.fused_head": fused}), perturb=0.5)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = m(idx, tgt)
        loss.backward()
        losses.append(loss.detach())
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters() if p.grad is not None]))
    tol = 1e-6 if dtype == torch.float32 else 2e-2
    assert torch.allclose(losses[0], losses[1], rtol=tol, atol=tol)
    assert torch.allclose(grads[0], grads[1], rtol=tol, atol=tol * grads[1].abs().max().item())
    m = make(cfg, perturb=0.5)
    loss = m(idx, tgt)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="run.fused_head=false"):
        loss.backward()


# -- the #1096 / #855 / #1406-lineage / #927 tricks ------------------------------------------------------


@pytest.mark.parametrize("kind", list(SCHEDULES))
def test_new_fields_at_default_and_neutral_settings_leave_the_forward_bitwise_unchanged(kind: str) -> None:
    sched = SCHEDULES[kind]
    plain = make(tiny(**sched), perturb=0.05)
    x = tokens()
    ref = plain(x)
    explicit = make(tiny(**sched, **NEW_DEFAULTS), seed=3)
    assert list(explicit.state_dict()) == list(plain.state_dict())
    _copy(plain, explicit)
    assert torch.equal(explicit(x), ref)
    # settings that must be exact no-ops: RoPE on all 8 head dims, unit step scales (init), power-of-2 clamp
    neutral = make(tiny(**sched, **{"model.rope_dims": 8, "model.use_step_scales": True,
                                    "model.step_scale_clamp": 2.0}), seed=4)
    _copy(plain, neutral)
    assert torch.equal(neutral(x), ref)
    if kind != "flat":  # the last loop (+ coda / tail) is the last few steps: the same selection
        n_steps = {"looped": 2, "cyclic": 1, "repeat_after": 2}.get(kind, 3)
        by_steps = make(tiny(**sched, **{"model.xsa_last_n": n_steps, "model.ve_last_n": n_steps, "model.ve_dim": 8}),
                        perturb=0.05)
        by_loops = make(tiny(**sched, **{"model.xsa_last_n": 1, "model.ve_last_n": 1, "model.ve_dim": 8,
                                         "model.last_n_unit": "loops"}), seed=5)
        by_loops.load_state_dict(by_steps.state_dict())
        assert torch.equal(by_loops(x), by_steps(x))


def test_leaky_relu2_is_leaky_relu_half_squared_in_the_mlp() -> None:
    x = torch.randn(3, 5, 16)
    assert torch.equal(leaky_relu2(x), torch.nn.functional.leaky_relu(x, 0.5) ** 2)
    assert torch.equal(leaky_relu2(torch.tensor([-2.0, 3.0])), torch.tensor([1.0, 9.0]))
    torch.manual_seed(0)
    mlp = MLP(16, 32, "leaky_relu2")
    torch.nn.init.normal_(mlp.proj.weight)
    h = torch.nn.functional.leaky_relu(x @ mlp.fc.weight.T, 0.5) ** 2
    torch.testing.assert_close(mlp(x), h @ mlp.proj.weight.T)
    relu = MLP(16, 32)
    relu.load_state_dict(mlp.state_dict())
    assert not torch.allclose(relu(x), mlp(x))
    with pytest.raises(ValueError, match="unknown MLP activation"):
        MLP(16, 32, "gelu")


def test_birkhoff_mix_is_a_convex_combination_of_stream_and_x0() -> None:
    x, x0 = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    inf = torch.tensor([float("inf")])
    assert torch.equal(birkhoff_mix(x, x0, inf), x)       # logit +inf: the stream
    assert torch.equal(birkhoff_mix(x, x0, -inf), x0)     # logit -inf: the embedding
    torch.testing.assert_close(birkhoff_mix(x, x0, torch.zeros(1)), (x + x0) / 2)  # init: halfway
    s = torch.sigmoid(torch.tensor([0.7]))
    torch.testing.assert_close(birkhoff_mix(x, x0, torch.tensor([0.7])), s * x + (1 - s) * x0)
    # in a block: mix_logit replaces resid_mix, and at +-inf it is resid_mix = [1, 0] or [0, 1]
    torch.manual_seed(0)
    bk, plain = Block(16, 4, 2, 32, 10000.0, 1.5, birkhoff=True), Block(16, 4, 2, 32, 10000.0, 1.5)
    assert bk.resid_mix is None and bk.mix_logit.shape == (1,) and bk.mix_logit.item() == 0.0
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    bk.load_state_dict({k: v for k, v in plain.state_dict().items() if k != "resid_mix"} | {"mix_logit": inf})
    xs, x0s = torch.randn(2, 6, 16), torch.randn(2, 6, 16)
    for logit, mix in ((inf, (1.0, 0.0)), (-inf, (0.0, 1.0))):
        with torch.no_grad():
            bk.mix_logit.copy_(logit)
            plain.resid_mix.copy_(torch.tensor(mix)[:, None].expand(2, 16))
        assert torch.equal(bk(xs, x0s), plain(xs, x0s))


def test_output_norm_normalises_branch_outputs_instead_of_inputs() -> None:
    torch.manual_seed(0)
    blk = Block(16, 4, 2, 32, 10000.0, 1.5, output_norm=True)
    with torch.no_grad():
        torch.nn.init.normal_(blk.attn.o.weight, std=0.3)  # the MLP's zero-initialised proj keeps its branch at 0
    x, x0 = torch.randn(2, 6, 16) * 5, torch.randn(2, 6, 16)
    seen = []
    blk.attn.register_forward_pre_hook(lambda mod, args: seen.append(args[0]))
    out = blk(x, x0)
    assert torch.equal(seen[0], x)  # the attention sees the raw stream (resid_mix = [1, 0]), no input norm
    expected = x + blk.attn_scale * rms_norm(blk.attn(x))
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close((out - x).pow(2).mean(-1), torch.ones(2, 6), rtol=1e-4, atol=1e-4)  # unit RMS
    # scope "core": only the looped core's blocks (hybrid: P0 | 1 2 | 1 2 | C3)
    m = make(tiny(**SCHEDULES["hybrid"], **{"model.output_norm": "core", "model.birkhoff_mix": "core"}))
    assert [b.out_norm for b in m.blocks] == [False, True, True, False]
    assert [b.mix_logit is not None for b in m.blocks] == [False, True, True, False]
    r = make(tiny(**SCHEDULES["repeat"], **{"model.output_norm": "core"}))
    assert [b.out_norm for b in r.blocks] == [False, False, True, True, False]
    a = make(tiny(**SCHEDULES["flat"], **{"model.output_norm": "all"}))
    assert all(b.out_norm for b in a.blocks)
    with pytest.raises(ConfigError, match=r"model\.output_norm = 'core' needs a schedule with a looped core"):
        tiny(**SCHEDULES["flat"], **{"model.output_norm": "core"})
    with pytest.raises(ConfigError, match=r"model\.birkhoff_mix = 'core'"):
        tiny(**SCHEDULES["flat"], **{"model.birkhoff_mix": "core"})


def test_step_scales_multiply_the_branches_and_stay_clamped_after_a_big_step() -> None:
    sched = SCHEDULES["hybrid"]
    plain = make(tiny(**sched), perturb=0.05)
    scaled = make(tiny(**sched, **{"model.use_step_scales": True}), seed=3)
    _copy(plain, scaled)
    assert scaled.step_scales.shape == (len(scaled.steps), 2, 32)
    x = tokens()
    # scales of 2 (exact in float) == attn_scale and mlp_scale doubled; 8 is clamped to 4 == x4
    for value, factor in ((2.0, 2.0), (8.0, 4.0), (-8.0, -4.0)):
        with torch.no_grad():
            scaled.step_scales.fill_(value)
        ref = make(tiny(**sched), seed=3)
        ref.load_state_dict(plain.state_dict())
        with torch.no_grad():
            for b in ref.blocks:
                b.attn_scale.mul_(factor)
                b.mlp_scale.mul_(factor)
        assert torch.equal(scaled(x), ref(x))
    # a huge gradient step pushes the parameters far past the clamp; the values used never exceed it
    with torch.no_grad():
        scaled.step_scales.fill_(1.0)
    scaled.train()
    scaled(x, x.roll(-1, 1)).backward()
    torch.optim.SGD([scaled.step_scales], lr=1e6).step()
    assert scaled.step_scales.abs().max() > 4.0
    used = torch.stack([clamped_step_scales(scaled.step_scales, i, 4.0) for i in range(len(scaled.steps))])
    assert used.abs().max() <= 4.0 and (used.abs() == 4.0).any()
    clamped = make(tiny(**sched, **{"model.use_step_scales": True}), seed=3)
    clamped.load_state_dict(scaled.state_dict())
    with torch.no_grad():
        clamped.step_scales.clamp_(-4.0, 4.0)
    scaled.eval()
    assert torch.equal(scaled(x), clamped(x))
    # evaluation at more loops reuses the last trained loop's rows; repeats off use the first pass's
    steps5 = scaled.schedule(n_loops=5)
    assert [scaled.step_scale_row(st) for st in steps5] == [0, 1, 2, 3, 4, 3, 4, 3, 4, 3, 4, 5]
    r = make(tiny(**SCHEDULES["repeat"], **{"model.use_step_scales": True}))
    r.repeats_on = False
    assert [r.step_scale_row(st) for st in r.schedule()] == [0, 1, 2, 3, 6]


def test_partial_rope_leaves_the_unrotated_dims_as_they_were(monkeypatch: pytest.MonkeyPatch) -> None:
    x = torch.randn(2, 3, 10, 8)
    cos, sin = Rotary(8, 10000.0, rope_dims=4)(10, x.device)
    assert cos.shape[-1] == 2
    out = apply_rotary(x, cos, sin)
    assert torch.equal(out[..., 4:], x[..., 4:])
    assert torch.equal(out[..., :4], apply_rotary(x[..., :4], *Rotary(4, 10000.0)(10, x.device)))
    assert not torch.equal(out[..., :4], x[..., :4])
    # in the model: q and k reaching attention, with and without rotation, differ only in the first 4 dims
    import recur_lib.model.blocks as blocks_mod
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append((q, k))
        return sdpa(q, k, v, **kw)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    m = make(tiny(**{"model.rope_dims": 4}), perturb=0.05)
    m(tokens())
    q_rope, k_rope = seen[0]
    seen.clear()
    monkeypatch.setattr(blocks_mod, "apply_rotary", lambda t, c, s: t)
    m(tokens())
    q_none, k_none = seen[0]
    assert torch.equal(q_rope[..., 4:], q_none[..., 4:]) and torch.equal(k_rope[..., 4:], k_none[..., 4:])
    assert not torch.equal(q_rope[..., :4], q_none[..., :4]) and not torch.equal(k_rope[..., :4], k_none[..., :4])
    for bad in (3, 10):
        with pytest.raises(ConfigError, match=r"model\.rope_dims = \d+ must be even and <= the head dim"):
            tiny(**{"model.rope_dims": bad})


def test_ln_scale_multiplies_the_normed_branch_inputs_by_one_over_sqrt_block_plus_one() -> None:
    m = make(tiny(**SCHEDULES["flat"], **{"model.ln_scale": True}), perturb=0.05)
    ins: dict[str, torch.Tensor] = {}
    blk = m.blocks[2]
    blk.register_forward_pre_hook(lambda mod, args: ins.update(x=args[0], x0=args[1]))
    blk.attn.register_forward_pre_hook(lambda mod, args: ins.update(attn=args[0]))
    m(tokens())
    mix = blk.resid_mix
    assert torch.equal(ins["attn"], rms_norm(mix[0] * ins["x"] + mix[1] * ins["x0"]) * (1 / 3 ** 0.5))
    assert [b.ln_scale for b in m.blocks] == [1.0, 1 / 2 ** 0.5, 1 / 3 ** 0.5, 0.5]


def test_last_n_loops_selects_the_expected_steps() -> None:
    def chosen(over: dict, n: int, unit: str, n_loops: int | None = None) -> list[int]:
        m = make(tiny(**over))
        steps = m.schedule(n_loops)
        return [i for i, on in enumerate(last_n_mask(steps, n, unit, m.core_blocks)) if on]

    looped = {"schedule.kind": "looped", "schedule.n_prelude": 0, "schedule.n_core": 4, "schedule.n_loops": 7,
              "schedule.n_coda": 0}                                                           # #927: 4 x 7
    assert chosen(looped, 4, "loops") == list(range(12, 28))   # XSA in the last 4 loops: the last 16 steps
    assert chosen(looped, 2, "loops") == list(range(20, 28))   # VE in the last 2 loops: the last 8 steps
    assert chosen(looped, 4, "steps") == list(range(24, 28))
    hybrid = {"schedule.kind": "hybrid", "schedule.n_prelude": 1, "schedule.n_core": 4, "schedule.n_loops": 3,
              "schedule.n_coda": 1}                                                           # #1096: 1 + 4x3 + 1
    assert chosen(hybrid, 1, "loops") == [9, 10, 11, 12, 13]     # last pass + the coda
    assert chosen(hybrid, 2, "loops") == list(range(5, 14))
    assert chosen(hybrid, 3, "loops") == chosen(hybrid, 9, "loops") == list(range(1, 14))  # never the prelude
    assert chosen(hybrid, 1, "loops", n_loops=5) == [17, 18, 19, 20, 21]
    assert chosen(hybrid, 0, "loops") == []
    r = make(tiny(**SCHEDULES["repeat"]))                          # 0 1 | 2 3 | 2 3 | 4
    assert [i for i, on in enumerate(last_n_mask(r.steps, 1, "loops", r.core_blocks)) if on] == [4, 5, 6]
    r.repeats_on = False                                          # 0 1 2 3 4: the segment is one loop
    assert [i for i, on in enumerate(last_n_mask(r.schedule(), 1, "loops", r.core_blocks)) if on] == [2, 3, 4]
    with pytest.raises(ConfigError, match=r"model\.last_n_unit = 'loops' needs a schedule with a looped core"):
        tiny(**SCHEDULES["flat"], **{"model.xsa_last_n": 2, "model.last_n_unit": "loops"})


def test_xsa_and_value_embedding_run_at_exactly_the_selected_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    import recur_lib.model.blocks as blocks_mod
    calls: list[bool] = []
    xsa = blocks_mod.exclusive_self_attention
    monkeypatch.setattr(blocks_mod, "exclusive_self_attention", lambda y, v: calls.append(True) or xsa(y, v))
    hybrid = {"schedule.kind": "hybrid", "schedule.n_prelude": 1, "schedule.n_core": 4, "schedule.n_loops": 3,
              "schedule.n_coda": 1}
    m = make(tiny(**hybrid, **{"model.xsa_last_n": 1, "model.ve_last_n": 2, "model.ve_dim": 8,
                               "model.last_n_unit": "loops"}), perturb=0.05)
    ve_steps: list[int] = []
    orig = m._extras
    monkeypatch.setattr(m, "_extras", lambda st, x, v: (ve_steps.append(m.steps.index(st)) if v is not None else None)
                        or orig(st, x, v))
    m(tokens())
    assert len(calls) == 5 and ve_steps == list(range(5, 14))


def test_new_parameters_are_routed_and_kept_in_fp32_and_described() -> None:
    cfg = tiny(**SCHEDULES["hybrid"], **{**ALL_TRICKS, **CORE_TRICKS})
    m = make(cfg)
    names = dict(m.named_parameters())
    assert {"step_scales", "blocks.1.mix_logit", "blocks.2.mix_logit"} <= set(names)
    assert "blocks.0.mix_logit" not in names and "blocks.1.resid_mix" not in names
    groups = {n: g for g, named in route_parameters(m).items() for n, _ in named}
    assert groups["step_scales"] == groups["blocks.1.mix_logit"] == groups["blocks.0.resid_mix"] == "scalars"
    assert CONTROL.fullmatch("step_scales") and CONTROL.fullmatch("blocks.1.mix_logit")
    text = m.describe()
    for label in ("xsa(last 2 loops)", "output_norm(core)", "birkhoff_mix(core)", "step_scales(clamp 4)",
                  "leaky_relu2", "partial_rope(4)", "ln_scale"):
        assert label in text, label


def test_readme_describes_the_seed_presets_as_the_code_does() -> None:
    """The README's `recur model describe` listing is what the code prints today."""
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name in ("pg-baseline", "seed-927", "seed-1406", "seed-341", "seed-1096"):
        with torch.device("meta"):
            text = build_model(Config.from_name(name)).describe()
        assert f"### {name}\n{text}\n" in readme, name
