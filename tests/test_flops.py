"""The FLOP counter: torch's FlopCounterMode on the meta device and the closed form agree exactly for
the plain architecture at every schedule family, and the parts add up as the docstring says."""
from __future__ import annotations

import pytest

from recur_lib import Config
from recur_lib.model.flops import flops_breakdown, measured_flops


@pytest.mark.parametrize("name, over", [
    ("smoke", {}), ("quick", {}), ("pg-baseline", {}), ("quick", {"schedule.n_loops": 1}),
    ("quick", {"schedule.kind": "looped", "schedule.n_core": 4, "schedule.n_prelude": 0, "schedule.n_coda": 0}),
    ("quick", {"schedule.kind": "flat", "schedule.n_layers": 5, "model.n_kv_heads": 4}),
    ("quick", {"train.seq_len": 256}),
])
def test_measured_and_closed_form_agree(name: str, over: dict) -> None:
    cfg = Config.from_name(name, over)
    assert measured_flops(cfg) == flops_breakdown(cfg)["total"]


def test_by_hand_for_one_block() -> None:
    """A flat 1-block model, dim 32, 2 heads / 1 kv head, MLP 2x, vocab 64, seq 16: per token
    6 x (2*32*32 + 2*32*16 + 2*32*64) for the block, 12 x 16 x 32 for attention, 6 x 32 x 64 head."""
    cfg = Config.from_name("smoke", {"schedule.kind": "flat", "schedule.n_layers": 1, "model.vocab_size": 64,
                                     "train.seq_len": 16, "eval.seq_len": 16})
    b = flops_breakdown(cfg)
    assert b == {"blocks": 6 * (2048 + 1024 + 4096), "attention": 12 * 16 * 32, "head": 6 * 32 * 64,
                 "total": 6 * 7168 + 6144 + 12288}
    assert measured_flops(cfg) == b["total"]
    assert measured_flops(cfg, backward=False) == b["total"] / 3


def test_deeper_arms_cost_more_than_their_layers_say() -> None:
    one, four = (Config.from_name("quick", {"schedule.n_loops": L}) for L in (1, 4))
    ratio = measured_flops(four) / measured_flops(one)
    assert ratio == pytest.approx(3096576 / 1474560) and ratio < 10 / 4
