"""Train the `quick` preset and each seed's `*-quick` preset on the default data and tabulate them.

    python benchmarks/train_quick_presets.py [--presets quick seed-927-quick ...] [--out results/train_quick]

Each run lives in runs/train-quick/<preset> (finished runs are reused; unfinished ones resume); the
table (CSV + JSON) and a val-bpb plot go to --out. This checks that every schedule family trains on
CPU; the ablations proper are the notebooks' job.
"""
from __future__ import annotations

import argparse
import json

from recur_lib import Config
from recur_lib.cli import parse_sets
from recur_lib.paths import resolve
from recur_lib.rundir import read_summary
from recur_lib.train import train

PRESETS = ["quick", "seed-927-quick", "seed-1406-quick", "seed-341-quick", "seed-1096-quick"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--presets", nargs="+", default=PRESETS)
    p.add_argument("--out", default="results/train_quick")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    a = p.parse_args()
    out = resolve(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in a.presets:
        cfg = Config.from_name(name, parse_sets(a.set)).override(
            {"run.out_dir": "runs/train-quick", "run.name": name, "train.val_every": 50})
        run_dir = resolve(cfg.run.out_dir) / name
        s = read_summary(run_dir)
        if not (s and s.get("status") == "finished"):
            s = train(cfg, resume=(run_dir / "ckpt.pt").exists()).summary
        curve = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        vals = [(r["step"], r["val_bpb"]) for r in curve if "val_bpb" in r]
        rows.append({"preset": name, "status": s["status"], "steps": s["steps"], "tokens": s["tokens"],
                     "train_time_s": s["train_time_s"], "tokens_per_s": round(s["tokens_per_s"]),
                     "first_val_bpb": vals[0][1], "final_val_bpb": s.get("final_val_bpb"),
                     "final_train_loss": s["final_train_loss"], "val_curve": vals,
                     "git_commit": s["git_commit"]})
    import pandas as pd
    df = pd.DataFrame(rows)
    df.drop(columns=["val_curve"]).to_csv(out / "summary.csv", index=False)
    (out / "summary.json").write_text(json.dumps(rows, indent=2))
    print(df.drop(columns=["val_curve", "git_commit"]).to_string(index=False))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in rows:
        steps, bpb = zip(*r["val_curve"])
        ax.plot(steps, bpb, marker="o", label=r["preset"])
    ax.set_xlabel("step")
    ax.set_ylabel("val bpb")
    ax.set_title("quick presets on the default corpus (CPU, 1 process)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "val_bpb.png", dpi=120)


if __name__ == "__main__":
    main()
