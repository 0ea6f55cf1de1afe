"""Export: dense packing, round trip for every bit width and schedule family, no pickle, the budget,
per-group report, and the exact list of code files."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from recur_lib import Config, build_model
from recur_lib.export import (CODE_FILES, ArtifactError, code_bytes, export_artifact, load_artifact, pack_codes,
                              packed_size, quantize_tensor, quantized_state_dict, read_artifact, tensor_plan,
                              unpack_codes)
from recur_lib.quant import qmax

FAMILIES = {
    "flat": {"schedule.kind": "flat", "schedule.n_layers": 3},
    "looped": {"schedule.kind": "looped", "schedule.n_prelude": 0, "schedule.n_coda": 0, "schedule.n_core": 2,
               "schedule.n_loops": 3},
    "hybrid": {"model.loop_lora_rank": 2, "model.loop_lora_form": "matrices", "model.use_loop_scales": True,
               "model.bigram_buckets": 64, "model.bigram_dim": 16, "model.ve_last_n": 1, "model.ve_dim": 16,
               "model.use_smear_gate": True},
    "repeat": {"schedule.kind": "repeat", "schedule.n_layers": 4, "schedule.repeat_layers": (1, 2),
               "schedule.n_loops": 2},
}


def trained_like(cfg: Config, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = build_model(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


@pytest.mark.parametrize("bits", [3, 4, 5, 6, 8])
def test_pack_unpack_is_exact_and_dense(bits: int) -> None:
    rng = np.random.default_rng(bits)
    q = rng.integers(-qmax(bits), qmax(bits) + 1, size=1001).astype(np.int8)
    buf = pack_codes(q, bits)
    assert len(buf) == packed_size(1001, bits) == -(-1001 * bits // 8)
    assert np.array_equal(unpack_codes(buf, bits, 1001), q)


def assert_round_trip(cfg: Config, tmp_path: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Export a trained-like model and load it back: its logits equal the in-memory quantizer's, bitwise."""
    m = trained_like(cfg)
    export_artifact(m, cfg, tmp_path / "a.rgolf")
    loaded = load_artifact(tmp_path / "a.rgolf")
    ref = build_model(cfg)
    ref.load_state_dict(quantized_state_dict(m, cfg))
    x = torch.randint(0, 1024, (2, 32))
    assert torch.equal(loaded(x), ref(x))
    return m, loaded


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("bits", [4, 5, 6, 8])
@pytest.mark.parametrize("pack", ["auto", "dense", "bytes"])
def test_round_trip_equals_the_in_memory_quantizer(tmp_path: Path, family: str, bits: int, pack: str) -> None:
    cfg = Config.from_name("smoke", {**FAMILIES[family], "quant.export_bits": bits, "quant.embed_bits": bits,
                                     "quant.pack": pack})
    m, loaded = assert_round_trip(cfg, tmp_path)
    assert loaded.cfg == cfg
    kinds = {tensor_plan(n, t, cfg)[0] for n, t in m.state_dict().items()}
    assert {"int", "fp32"} <= kinds and (family != "hybrid" or "fp16" in kinds)


@pytest.mark.parametrize("scheme", ["baseline", "rowmax"])
@pytest.mark.parametrize("bits", [3, 8])
def test_round_trip_of_each_scheme_including_per_tensor_codes(tmp_path: Path, scheme: str, bits: int) -> None:
    """keep_float_max_numel 0: under the baseline's rule every vector gets per-tensor codes (int_tensor)."""
    cfg = Config.from_name("smoke", {"quant.scheme": scheme, "quant.export_bits": bits, "quant.embed_bits": bits,
                                     "quant.keep_float_max_numel": 0})
    m, _ = assert_round_trip(cfg, tmp_path)
    kinds = {tensor_plan(n, t, cfg)[0] for n, t in m.state_dict().items()}
    assert kinds == ({"int", "int_tensor"} if scheme == "baseline" else {"int", "fp32"})


def test_gptq_lite_never_increases_reconstruction_error(tmp_path: Path) -> None:
    cfg = Config.from_name("smoke", {"quant.export_bits": 4})
    m = trained_like(cfg)
    plain = quantized_state_dict(m, cfg)
    lite = quantized_state_dict(m, cfg.override({"quant.gptq_lite": True}))
    w = m.state_dict()
    for name in plain:
        if tensor_plan(name, w[name], cfg)[0] == "int":
            e_plain = (plain[name] - w[name]).pow(2).sum(dim=1)
            e_lite = (lite[name] - w[name]).pow(2).sum(dim=1)
            assert (e_lite <= e_plain + 1e-12).all()
    export_artifact(m, cfg.override({"quant.gptq_lite": True}), tmp_path / "g.rgolf")
    assert torch.equal(load_artifact(tmp_path / "g.rgolf").state_dict()["blocks.0.attn.q.weight"],
                       lite["blocks.0.attn.q.weight"])


def test_artifact_has_no_pickle_and_bad_files_are_refused(tmp_path: Path) -> None:
    import zstandard
    cfg = Config.from_name("smoke")
    export_artifact(trained_like(cfg), cfg, tmp_path / "a.rgolf")
    frame = zstandard.ZstdDecompressor().decompress((tmp_path / "a.rgolf").read_bytes())
    assert frame.startswith(b"RGOLF1\n") and b"\x80\x04\x95" not in frame[:64]  # no pickle protocol header
    header_len = int.from_bytes(frame[7:11], "little")
    header = json.loads(frame[11:11 + header_len])
    assert header["format"] == 1 and header["config"] == cfg.to_dict()
    (tmp_path / "junk.rgolf").write_bytes(b"not zstd")
    with pytest.raises(ArtifactError, match="not a zstd-compressed artifact"):
        read_artifact(tmp_path / "junk.rgolf")
    (tmp_path / "wrong.rgolf").write_bytes(zstandard.ZstdCompressor().compress(b"PICKLE" + b"\x00" * 20))
    with pytest.raises(ArtifactError, match="magic"):
        read_artifact(tmp_path / "wrong.rgolf")


def test_over_budget_says_by_how_much_and_what_to_change(tmp_path: Path) -> None:
    cfg = Config.from_name("smoke", {"quant.budget_bytes": 50_000})
    m = trained_like(cfg)
    with pytest.raises(ArtifactError, match=r"over the 50,000-byte budget by [\d,]+\. Lower quant\.export_bits"):
        export_artifact(m, cfg, tmp_path / "a.rgolf")
    r = export_artifact(m, cfg, tmp_path / "b.rgolf", report_only=True)
    assert r.over_budget_by > 0 and r.total_bytes == r.model_bytes + r.code_bytes
    assert r.model_bytes == (tmp_path / "b.rgolf").stat().st_size
    assert "OVER by" in r.table()


def test_report_groups_and_entropy_bound(tmp_path: Path) -> None:
    cfg = Config.from_name("smoke", FAMILIES["hybrid"])
    r = export_artifact(trained_like(cfg), cfg, tmp_path / "a.rgolf")
    d = r.as_dict()
    assert set(d["groups"]) >= {"matrices", "embed", "control", "lora"}
    mat = d["groups"]["matrices"]
    assert 8 in mat["bits"] and mat["zstd_bytes"] > 0 and mat["entropy_bytes"] > 0
    assert 0.5 < mat["zstd_over_entropy"] < 1.5
    assert d["code_bytes"] == code_bytes() and d["fits"]


def test_code_files_are_exactly_what_loading_and_evaluating_imports(tmp_path: Path, tiny_data: Path) -> None:
    from conftest import TINY_VOCAB
    from recur_lib.train import train
    cfg = Config.from_name("smoke", {"data.root": str(tiny_data), "model.vocab_size": TINY_VOCAB, "run.out_dir": str(tmp_path),
                                     "run.name": "r", "train.iterations": 2, "eval.ttt": "score_first",
                                     "eval.ttt_optimizer": "muon", "eval.stride": 32, "eval.ttt_epochs": 1})
    train(cfg)
    script = (
        "import sys, json\n"
        "from recur_lib.evaluate import evaluate_run\n"
        f"evaluate_run({str(tmp_path / 'r')!r})\n"
        "mods = sorted(m.__file__ for n, m in sys.modules.items() if n.startswith('recur_lib') and getattr(m, '__file__', None))\n"
        "print(json.dumps(mods))\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0, res.stderr[-2000:]
    root = Path(__file__).resolve().parents[1] / "recur_lib"
    loaded = {Path(f).resolve().relative_to(root).as_posix() for f in json.loads(res.stdout.strip().splitlines()[-1])}
    assert loaded == set(CODE_FILES)


def test_auto_packing_keeps_the_smaller_layout(tmp_path: Path) -> None:
    """quant.pack = auto writes whichever layout compresses smaller. Both candidates are framed with the
    same config here (the header stores the config, and at zstd-22 a one-character change in it can
    move the compressed size by tens of bytes), so the comparison is exact."""
    import zstandard

    from recur_lib.export import _frame
    cfg = Config.from_name("smoke", {"quant.export_bits": 6})
    m = trained_like(cfg)
    auto = export_artifact(m, cfg, tmp_path / "auto.rgolf").model_bytes
    state = {n: t.detach().cpu() for n, t in m.state_dict().items()}
    plans = {n: tensor_plan(n, t, cfg) for n, t in state.items()}
    quantized = {n: quantize_tensor(state[n], b, cfg) for n, (k, b) in plans.items() if k == "int"}
    zc = zstandard.ZstdCompressor(level=cfg.quant.zstd_level)
    sizes = {p: len(zc.compress(_frame(state, cfg, p, plans, quantized)[0])) for p in ("dense", "bytes")}
    assert auto == min(sizes.values())
    assert abs(sizes["dense"] - sizes["bytes"]) > 8  # so the choice above was a real one
