"""The model: schedules, causality, equivalences between schedules and with tricks off, LoRA naming,
parameter counts, forward/backward in fp32 and bf16 autocast, and CUDA when there is one."""
from __future__ import annotations

import re

import pytest
import torch

from recur_lib.config import Config, ConfigError
from recur_lib.model import RecurGPT, build_model, build_schedule, format_schedule
from recur_lib.model.tricks import BigramHash, SmearGate, exclusive_self_attention

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
}
ALL_TRICKS = {"model.xsa_last_n": 2, "model.ve_last_n": 2, "model.ve_dim": 8, "model.use_smear_gate": True,
              "model.bigram_buckets": 97, "model.bigram_dim": 8, "model.loop_lora_rank": 2,
              "model.loop_lora_form": "matrices", "model.use_loop_scales": True, "model.use_loop_embedding": True}


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
    assert [st.block for st in s1406] == [0, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 10]
    assert len(build_schedule(Config.from_name("seed-1406").schedule, repeats_on=False)) == 11
    assert len(build_schedule(Config.from_name("seed-927").schedule)) == 28


@pytest.mark.parametrize("kind", list(SCHEDULES))
@pytest.mark.parametrize("tricks", [False, True], ids=["plain", "all_tricks"])
def test_changing_token_t_never_changes_earlier_logits(kind: str, tricks: bool) -> None:
    m = make(tiny(**SCHEDULES[kind], **(ALL_TRICKS if tricks else {})), perturb=0.05)
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
    assert all(k.split(".")[0] in ("loop_lora", "loop_gains", "loop_embed", "bigram", "value_embed", "smear")
               for k in missing), missing


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
                                  "model.use_loop_scales": True, "model.use_loop_embedding": True}), seed=3)
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
    assert len(names) == 4 * 3 * 6 * 2


def test_seed_parameter_counts_and_depth() -> None:
    with torch.device("meta"):
        m = build_model(Config.from_name("seed-1096"))
    assert len(m.blocks) == 6 and len(m.steps) == 14 and m.cfg.model.dim == 640
    d, kv, hidden, h = 640, 5 * 64, 1280, 10
    per_block = 2 * d * d + 2 * d * kv + 2 * d * hidden + h + 4 * d
    g = m.param_groups()
    assert g["blocks.unique"] == 2 * per_block and g["blocks.shared"] == 4 * per_block
    assert g["loop_lora"] == 4 * 3 * (2 * d + (d + kv) * 2 + (d + d) + (d + hidden) * 2)
    assert g["total"] == sum(v for k, v in g.items() if k != "total")
    text = m.describe()
    assert "14 effective layers from 6 unique blocks" in text and "loop_lora(r1, vectors)" in text
    with torch.device("meta"):
        m927 = build_model(Config.from_name("seed-927"))
    assert (len(m927.blocks), len(m927.steps), m927.n_encoder) == (4, 28, 12)


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
