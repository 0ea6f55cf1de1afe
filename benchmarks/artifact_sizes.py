"""Estimated artifact size of each full-size seed preset, set beside the size its PR reports.

    python benchmarks/artifact_sizes.py [--out results/artifact_sizes] [--runs runs/artifact-sizes]

A random-init model says little about an artifact: Gaussian codes compress differently from trained
ones. So each seed's `-quick` preset (same schedule, tricks and export settings, width 64) is trained
on the default data (runs are reused), and the compressed bits per code of its quantized matrices are
measured per export width (each tensor's packed codes through zstd at the preset's level). The full-size
estimate is then: every quantized tensor of the full shape at those bits per code, plus its fp16 row
scales, plus every float tensor at 2 or 4 bytes, plus our code bytes (the modules an artifact needs).
What this cannot see: trained statistics that change with width or run length (a 150-step quick model
is less spread than a 600 s one), and zstd finding structure across tensors.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import zstandard

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recur_lib import Config, build_model  # noqa: E402
from recur_lib.export import code_bytes, pack_codes, quantize_tensor, tensor_plan  # noqa: E402
from recur_lib.lab.runs import launch, save_table  # noqa: E402
from recur_lib.presets import SEEDS  # noqa: E402

# The sizes the PRs report (parameter-golf.md, the PR texts); #341 reports none.
PR_BYTES = {"seed-927": 15_850_000, "seed-1406": 15_920_000, "seed-1096": 11_390_000, "seed-341": None}


def bits_per_code(model: torch.nn.Module, cfg: Config) -> dict[int, float]:
    """Compressed bits per code, per export width, over the model's per-row quantized tensors."""
    zc = zstandard.ZstdCompressor(level=cfg.quant.zstd_level)
    totals: dict[int, list[int]] = {}
    for name, t in model.state_dict().items():
        kind, bits = tensor_plan(name, t, cfg)
        if kind != "int":
            continue
        q, _ = quantize_tensor(t.detach().cpu().float(), bits, cfg)
        n_bytes = min(len(zc.compress(pack_codes(q.numpy(), bits))), len(zc.compress(q.numpy().tobytes())))
        acc = totals.setdefault(bits, [0, 0])
        acc[0] += n_bytes * 8
        acc[1] += q.numel()
    return {b: c / n for b, (c, n) in totals.items()}


def estimate(cfg: Config, bpc: dict[int, float]) -> dict[str, float]:
    """Bytes of the full-size artifact's parts, from shapes alone (meta device) and measured bits per code."""
    with torch.device("meta"):
        model = build_model(cfg)
    parts = {"codes": 0.0, "scales": 0.0, "float": 0.0, "params": 0}
    for name, t in model.state_dict().items():
        kind, bits = tensor_plan(name, t, cfg)
        parts["params"] += t.numel()
        if kind == "int":
            parts["codes"] += t.numel() * bpc[bits] / 8
            parts["scales"] += 2 * t.shape[0]
        elif kind == "int_tensor":
            parts["codes"] += t.numel() * bpc.get(bits, bits) / 8 + 4
        else:
            parts["float"] += t.numel() * (4 if kind == "fp32" else 2)
    parts["model"] = parts["codes"] + parts["scales"] + parts["float"]
    return parts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/artifact_sizes")
    p.add_argument("--runs", default="runs/artifact-sizes")
    a = p.parse_args()
    rows = []
    for seed in SEEDS:
        small = Config.from_name(f"{seed.preset}-quick")
        rec = launch(small, a.runs, evaluate=False, quiet=True)
        if rec.status != "finished":
            print(f"{seed.preset}-quick: {rec.status}; skipped", flush=True)
            continue
        trained = build_model(rec.config)
        trained.load_state_dict(torch.load(rec.run_dir / "model.pt", weights_only=True))
        bpc = bits_per_code(trained, rec.config)
        full = Config.from_name(seed.preset)
        est = estimate(full, bpc)
        total = est["model"] + code_bytes()
        rows.append({"preset": seed.preset, "params": est["params"], "export_bits": full.quant.export_bits,
                     "embed_bits": full.quant.embed_bits, "scheme": full.quant.scheme,
                     "bits_per_code": json.dumps({str(b): round(v, 3) for b, v in bpc.items()}),
                     "codes_bytes": round(est["codes"]), "scales_bytes": round(est["scales"]),
                     "float_bytes": round(est["float"]), "model_bytes": round(est["model"]),
                     "code_bytes": code_bytes(), "total_bytes": round(total),
                     "budget_left": round(full.quant.budget_bytes - total), "pr_bytes": PR_BYTES[seed.preset],
                     "quick_run": str(rec.run_dir.relative_to(ROOT)) if rec.run_dir.is_relative_to(ROOT) else str(rec.run_dir)})
        print(rows[-1], flush=True)
    import pandas as pd
    path = save_table(pd.DataFrame(rows), a.out, "artifact_sizes")
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
