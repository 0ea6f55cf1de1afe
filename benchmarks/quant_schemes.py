"""Quantization gap of the quick model under the baseline's rule and under rowmax, at int8/6/4.

    python benchmarks/quant_schemes.py [--seeds 0 1 2] [--parallel 2] [--out results/quant_schemes]

The quick preset is trained once per seed on the default data (no QAT, so both rules quantize the same
weights; runs are reused), then each run is exported and evaluated at every width under each rule
(`runs.evaluate_variants`, one subprocess per evaluation). The gap is quantized minus float val bpb on
the preset's validation tokens; the table gives its mean and standard deviation over the seeds, which
vary the init and where in the train stream a run starts (data.seed_offset).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recur_lib import Config  # noqa: E402
from recur_lib.lab.runs import Arm, evaluate_variants, save_table, sweep  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="quick")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--bits", type=int, nargs="+", default=[8, 6, 4])
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--runs", default="runs/quant-schemes")
    p.add_argument("--out", default="results/quant_schemes")
    a = p.parse_args()
    base = Config.from_name(a.preset)
    df = sweep(base, [Arm(a.preset, {})], a.seeds, a.runs, parallel=a.parallel, evaluate=False, quiet=True)
    variants = [Arm(f"{scheme}-int{b}", {"quant.scheme": scheme, "quant.export_bits": b, "quant.embed_bits": b},
                    {"scheme": scheme, "bits": b}) for scheme in ("baseline", "rowmax") for b in a.bits]
    ev = evaluate_variants(df, variants, parallel=a.parallel, quiet=True)
    ev["run_dir"] = [os.path.relpath(d, ROOT) for d in ev["run_dir"]]  # published tables: project-relative
    save_table(ev, a.out, "quant_schemes_runs")
    ok = ev[ev["status"] == "finished"]
    table = (ok.groupby(["scheme", "bits"])["quant_gap"].agg(["mean", "std", "count"])
             .join(ok.groupby(["scheme", "bits"])["artifact_bytes"].mean()).reset_index()
             .sort_values(["scheme", "bits"], ascending=[True, False]))
    path = save_table(table, a.out, "quant_schemes")
    print(table.to_string(index=False))
    print(f"float bpb {ok['float_bpb'].mean():.4f} +- {ok.groupby('seed')['float_bpb'].first().std():.4f} "
          f"over {ok['seed'].nunique()} seeds -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
