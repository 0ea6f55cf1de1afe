"""Estimated artifact size of each full-size seed preset, set beside the size its PR reports.

    python benchmarks/artifact_sizes.py [--out results/artifact_sizes] [--runs runs/artifact-sizes]

A random-init model says little about an artifact: Gaussian codes compress differently from trained
ones. So each seed's `-quick` preset (same schedule, tricks and export settings, width 64) is trained
on the default data (runs are reused). Two estimates of the full-size artifact follow from it:
* `per_code`: the compressed bits per code of the quick model's quantized matrices, measured per export
  width, times the full model's code count, plus its fp16 row scales and float tensors;
* `resampled` (the main one): the full-size model with every quantized matrix refilled row by row from
  the quick model's trained weights, standardised per row (a pooled, heavy-tailed distribution), times a
  row scale drawn from the quick model's row standard deviations scaled by sqrt(64 / fan-in) (the init
  scale's width rule, assumed to hold after training), then exported by our exporter at the preset's
  settings. Long rows reach further into the tails, so their codes crowd nearer zero than the quick
  model's 64-entry rows do: `per_code` overstates the full-size artifact, `resampled` sees that.
Each preset is also exported under the other quantizer rule (`other_scheme_total_bytes`): under the
baseline rule's floor the bytes depend on the weights' absolute scale, so the rule alone moves them.
What neither sees: trained statistics that change with run length (150 steps against the seeds'
thousands) and structure across rows or tensors that zstd could find.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import zstandard

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recur_lib import Config, build_model  # noqa: E402
from recur_lib.export import code_bytes, export_artifact, pack_codes, quantize_tensor, tensor_plan  # noqa: E402
from recur_lib.lab.runs import save_table  # noqa: E402
from recur_lib.rundir import read_summary  # noqa: E402
from recur_lib.train import train  # noqa: E402
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


def trained_pool(model: torch.nn.Module, cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row standardised entries and row standard deviations of the quick model's quantized matrices."""
    z, stds = [], []
    for name, t in model.state_dict().items():
        if tensor_plan(name, t, cfg)[0] == "int":
            w = t.detach().float()
            sd = w.std(dim=1, keepdim=True).clamp_min(1e-12)
            z.append((w / sd).flatten())
            stds.append(sd.flatten() * (w.shape[1] ** 0.5))  # in units of 1 / sqrt(fan-in)
    return torch.cat(z), torch.cat(stds)


def resampled_bytes(cfg: Config, pool: tuple[torch.Tensor, torch.Tensor], seed: int = 0) -> int:
    """Model bytes of the full-size artifact with its quantized matrices refilled from the trained pool."""
    z, stds = pool
    g = torch.Generator().manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if tensor_plan(name, t, cfg)[0] != "int":
                continue
            rows, cols = t.shape
            draw = z[torch.randint(len(z), (rows * cols,), generator=g)].view(rows, cols)
            sd = stds[torch.randint(len(stds), (rows, 1), generator=g)] / cols ** 0.5
            t.copy_(draw * sd)
    return export_artifact(model, cfg, report_only=True).model_bytes


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
        # one run folder per preset, reused whatever the code version: the estimate needs trained-like
        # weights of the shape, not this commit's exact numbers
        run_dir = ROOT / a.runs / f"{seed.preset}-quick"
        small = Config.from_name(f"{seed.preset}-quick", {"run.name": run_dir.name, "run.out_dir": a.runs})
        if (read_summary(run_dir) or {}).get("status") != "finished":
            result = train(small, run_dir, resume=(run_dir / "ckpt.pt").exists())
            if result.status != "finished":
                print(f"{seed.preset}-quick: {result.status}; skipped", flush=True)
                continue
        small = Config.load(run_dir / "config.json")
        trained = build_model(small)
        trained.load_state_dict(torch.load(run_dir / "model.pt", weights_only=True))
        bpc = bits_per_code(trained, small)
        full = Config.from_name(seed.preset)
        est = estimate(full, bpc)
        pool = trained_pool(trained, small)
        resampled = resampled_bytes(full, pool)
        total = resampled + code_bytes()
        # the same weights under the other rule: how much the export rule alone decides
        other = "rowmax" if full.quant.scheme == "baseline" else "baseline"
        other_total = resampled_bytes(full.override({"quant.scheme": other}), pool) + code_bytes()
        rows.append({"preset": seed.preset, "params": est["params"], "export_bits": full.quant.export_bits,
                     "embed_bits": full.quant.embed_bits, "scheme": full.quant.scheme,
                     "bits_per_code": json.dumps({str(b): round(v, 3) for b, v in bpc.items()}),
                     "codes_bytes": round(est["codes"]), "scales_bytes": round(est["scales"]),
                     "float_bytes": round(est["float"]), "per_code_model_bytes": round(est["model"]),
                     "resampled_model_bytes": resampled,
                     "code_bytes": code_bytes(), "total_bytes": round(total),
                     "budget_left": round(full.quant.budget_bytes - total), "pr_bytes": PR_BYTES[seed.preset],
                     "other_scheme": other, "other_scheme_total_bytes": other_total,
                     "quick_run": os.path.relpath(run_dir, ROOT)})
        print(rows[-1], flush=True)
    import pandas as pd
    path = save_table(pd.DataFrame(rows), a.out, "artifact_sizes")
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
