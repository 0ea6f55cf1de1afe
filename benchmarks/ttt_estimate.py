"""Full-validation score-first TTT time at a seed's settings on 8xH100, from FLOPs and stated assumptions.

No GPU number enters: the FLOPs per token are the model's own (`model.flops.measured_flops`, LM head and
attention included), the rest are assumptions written into the output. Score-first TTT scores each
chunk (a forward) and then trains on it for `eval.ttt_epochs` epochs (forward + backward). Our
implementation splits each chunk over the ranks; the estimate gives one GPU and the ideal 8-way split.
    python benchmarks/ttt_estimate.py [--preset seed-927]   -> results/benchmarks/ttt_estimate.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from recur_lib import Config
from recur_lib.model.flops import measured_flops

ROOT = Path(__file__).resolve().parents[1]
ASSUMED = {
    "val_tokens": 62_021_632,        # the FineWeb val split (first 50k documents) as the baseline's log counts it
    "h100_bf16_dense_flops": 989e12,  # H100 SXM peak, dense bf16
    "mfu": 0.35,                     # a small model's share of that peak (assumed; not measured here)
    "eval_budget_s": 600,
}


def estimate(preset: str) -> dict:
    cfg = Config.from_name(preset)
    e = cfg.eval
    if e.ttt != "score_first":
        raise SystemExit(f"{preset}: eval.ttt = {e.ttt!r}, not score-first TTT: nothing to estimate; pass a preset "
                         "whose eval.ttt is 'score_first' (seed-927)")
    train_fpt = measured_flops(cfg, e.seq_len)                  # forward + backward, per token
    score_fpt = measured_flops(cfg, e.seq_len, backward=False)  # forward only
    stride_cost = e.seq_len / e.stride if e.stride else 1.0     # sliding scoring runs every token L/s times
    total = ASSUMED["val_tokens"] * (score_fpt * stride_cost + e.ttt_epochs * train_fpt)
    one_gpu = total / (ASSUMED["h100_bf16_dense_flops"] * ASSUMED["mfu"])
    return {"preset": preset, "ttt": e.ttt, "chunk_tokens": e.ttt_chunk_tokens, "epochs": e.ttt_epochs,
            "stride": e.stride, "seq_len": e.seq_len, "score_flops_per_token": score_fpt,
            "train_flops_per_token": train_fpt, "total_flops": total, "one_gpu_s": one_gpu,
            "eight_gpus_ideal_s": one_gpu / 8, "assumptions": ASSUMED}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", nargs="+", default=["seed-927"])  # the one seed whose code runs score-first TTT
    p.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "ttt_estimate.json"))
    a = p.parse_args()
    rows = [estimate(name) for name in a.preset]
    for r in rows:
        print(f"{r['preset']}: {r['total_flops']:.3g} FLOPs for {r['epochs']} epoch(s) + scoring (stride {r['stride']}): "
              f"{r['one_gpu_s']:.0f} s on one H100 at {ASSUMED['mfu']:.0%} MFU, {r['eight_gpus_ideal_s']:.0f} s split 8 ways")
    Path(a.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
