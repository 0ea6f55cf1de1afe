"""Evaluate the runs of train_quick_presets.py: float vs int8/int6 artifacts, sliding window, TTT.

    python benchmarks/eval_quick_presets.py [--presets ...] [--val-tokens 65536] [--out results/eval_quick]

All modes score the same first --val-tokens of val, so their differences are comparable. Writes
eval-int8.json / eval-int6.json into each run folder (copies of eval.json) and a table to --out.
"""
from __future__ import annotations

import argparse
import json
import shutil

from recur_lib import Config
from recur_lib.evaluate import evaluate_run
from recur_lib.paths import resolve

PRESETS = ["quick", "seed-927-quick", "seed-1406-quick", "seed-341-quick", "seed-1096-quick"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--presets", nargs="+", default=PRESETS)
    p.add_argument("--runs", default="runs/train-quick")
    p.add_argument("--val-tokens", type=int, default=65536)
    p.add_argument("--out", default="results/eval_quick")
    a = p.parse_args()
    out = resolve(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in a.presets:
        run_dir = resolve(a.runs) / name
        saved = Config.load(run_dir / "config.json")
        common = {"data.val_max_tokens": a.val_tokens, "eval.stride": 64, "eval.ttt": "score_first",
                  "eval.ttt_epochs": 1, "eval.ttt_optimizer": "sgd", "eval.ttt_lr": 0.002, "eval.ttt_params": "all"}
        res = {}
        for bits in (8, 6):
            over = {**common, "quant.export_bits": bits}
            if bits == 6:  # the float and window/TTT numbers do not depend on the export bits
                over.update({"eval.stride": 0, "eval.ttt": "off"})
            e = evaluate_run(run_dir, saved.override(over))
            shutil.copy(run_dir / "eval.json", run_dir / f"eval-int{bits}.json")
            res[bits] = e
        e8, e6 = res[8], res[6]
        f = e8["float"]
        rows.append({
            "preset": name,
            "float_bpb": f["plain"]["val_bpb"], "int8_bpb": e8["quantized"]["plain"]["val_bpb"],
            "int6_bpb": e6["quantized"]["plain"]["val_bpb"],
            "gap_int8": e8["quant_gap_bpb"], "gap_int6": e6["quant_gap_bpb"],
            "sliding_delta": f["sliding"]["val_bpb"] - f["plain"]["val_bpb"],
            "ttt_delta": f["ttt"]["val_bpb"] - f["plain"]["val_bpb"],
            "int8_model_bytes": e8["artifact"]["model_bytes"], "int6_model_bytes": e6["artifact"]["model_bytes"],
            "code_bytes": e8["artifact"]["code_bytes"],
            "int6_matrices_zstd": e6["artifact"]["groups"]["matrices"]["zstd_bytes"],
            "int6_matrices_entropy": e6["artifact"]["groups"]["matrices"]["entropy_bytes"],
            "eval_seconds": e8["eval_seconds"] + e6["eval_seconds"],
        })
    import pandas as pd
    df = pd.DataFrame(rows)
    df.to_csv(out / "summary.csv", index=False)
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    with_pd = df.copy()
    print(with_pd.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    main()
