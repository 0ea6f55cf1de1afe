"""Quantization through the schedule (recur_lib.lab.probes): the hooks change nothing they are not asked
to, quantizing every step through them is the quantized model bitwise, and the sums add up."""
from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch

from recur_lib import Config, build_model
from recur_lib.lab.probes import quant_probe, quantized_blocks


def model_and_tokens(**over: object) -> tuple[torch.nn.Module, Config, torch.Tensor]:
    cfg = Config.from_name("smoke", {"model.vocab_size": 64, "eval.seq_len": 16, **over})
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    tokens = torch.randint(0, 64, (16 * 4 + 1,), generator=torch.Generator().manual_seed(1))
    return model, cfg, tokens


def test_a_float_twin_changes_nothing() -> None:
    model, cfg, tokens = model_and_tokens()
    t = quant_probe(model, cfg, tokens, bits=4, twin=copy.deepcopy(model.blocks))
    assert len(t) == len(model.schedule()) == 4 and list(t["role"]) == [s.role for s in model.schedule()]
    assert (t["rel_error"] == 0).all() and (t["dloss_single"] == 0).all()
    assert t.attrs["dloss_all"] == 0 and math.isnan(t.attrs["superadditivity"])


def test_every_step_quantized_is_the_quantized_model_bitwise() -> None:
    model, cfg, tokens = model_and_tokens()
    t = quant_probe(model, cfg, tokens, bits=4, n_seqs=4)
    qmodel = copy.deepcopy(model)
    qmodel.blocks = quantized_blocks(model, cfg, 4)
    x = tokens[:-1].view(4, 16)
    y = tokens[1:].view(4, 16)
    with torch.no_grad():  # per token, bitwise; the mean over tokens to float64 rounding
        per_token = qmodel(x, y, reduction="none").double() - model(x, y, reduction="none").double()
    assert per_token.mean().item() == pytest.approx(t.attrs["dloss_all"], rel=1e-12, abs=0)
    assert t.attrs["n_tokens"] == 64 and t.attrs["dloss_all_se"] == pytest.approx(
        per_token.mean(1).std().item() / 2, rel=1e-9)
    assert (t["rel_error"] > 0).all() and t.attrs["dloss_all"] != 0
    assert t.attrs["dloss_sum_single"] == pytest.approx(t["dloss_single"].sum())
    assert t.attrs["superadditivity"] == pytest.approx(t.attrs["dloss_all"] / t.attrs["dloss_sum_single"])
    # quantizing at more bits moves the hidden states less
    assert (quant_probe(model, cfg, tokens, bits=8)["rel_error"] < t["rel_error"]).all()


def test_one_step_is_additive_by_definition_and_gains_are_measured() -> None:
    model, cfg, tokens = model_and_tokens(**{"schedule.kind": "flat", "schedule.n_layers": 1})
    t = quant_probe(model, cfg, tokens, bits=4)
    assert len(t) == 1 and t.attrs["superadditivity"] == pytest.approx(1.0)
    assert math.isnan(t["next_gain"].iloc[0]) and t["end_gain"].iloc[0] == pytest.approx(1.0)
    deep = quant_probe(*model_and_tokens(), bits=4)
    assert deep["next_gain"].iloc[:-1].between(0.01, 100).all() and math.isnan(deep["next_gain"].iloc[-1])
    assert deep["end_gain"].iloc[-1] == pytest.approx(1.0) and deep["end_gain_rel"].iloc[-1] == pytest.approx(1.0)
    # the relative forms rescale by the hidden states' norms, one ratio per step: consistent along the chain
    scale = deep["end_gain_rel"] / deep["end_gain"]
    assert (scale / scale.shift(-1)).iloc[:-1].to_numpy() == pytest.approx(
        (deep["next_gain_rel"] / deep["next_gain"]).iloc[:-1].to_numpy())
    assert math.isnan(deep["next_gain_rel"].iloc[-1]) and not deep["end_gain_rel"].isna().any()


def test_too_few_tokens_are_named() -> None:
    model, cfg, _ = model_and_tokens()
    with pytest.raises(ValueError, match="no sequence of 16"):
        quant_probe(model, cfg, torch.zeros(10, dtype=torch.long), bits=4)


def test_a_probe_is_kept_in_its_run_folder_and_measured_again_when_damaged(tiny_data, tmp_path, capsys) -> None:
    from recur_lib.lab.probes import probe_run
    from conftest import TINY_VOCAB
    cfg = Config.from_name("smoke", {"data.root": str(tiny_data), "model.vocab_size": TINY_VOCAB})
    run = tmp_path / "run"
    run.mkdir()
    cfg.save(run / "config.json")
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():  # away from the init, where zero-initialised projections quantize exactly
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    torch.save(model.state_dict(), run / "model.pt")
    first = probe_run(str(run), 4, "baseline", n_seqs=4)
    kept = run / "probes" / "int4-baseline-n4.json"
    assert kept.exists()
    (run / "model.pt").unlink()  # a kept probe needs no weights: it is read, not measured
    again = probe_run(str(run), 4, "baseline", n_seqs=4)
    pd.testing.assert_frame_equal(first, again)
    assert again.attrs == first.attrs and first.attrs["dloss_all"] != 0
    kept.write_text(kept.read_text()[:50])  # cut short
    with pytest.raises(FileNotFoundError):  # measured again: it needs the weights, which are gone
        probe_run(str(run), 4, "baseline", n_seqs=4)
    assert "unreadable" in capsys.readouterr().out
