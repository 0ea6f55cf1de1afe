"""The runner: content-addressed ids, reuse, resume, force, and sweeps that record crashing, diverging
and invalid arms as rows while the other arms go on."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from recur_lib import Config
from recur_lib.lab.runs import Arm, evaluate_variants, launch, load_metrics, run_id, summarize, sweep
from recur_lib.train import train

from conftest import TINY_VOCAB


def base(data: Path, **over) -> Config:
    return Config.from_name("smoke", {"data.root": str(data), "model.vocab_size": TINY_VOCAB, "train.iterations": 4,
                                      "run.name": "t", **over})


def test_run_id_is_content_addressed(tiny_data: Path) -> None:
    c = base(tiny_data)
    assert run_id(c) == run_id(c.override({"run.name": "other", "run.out_dir": "/elsewhere"}))
    assert run_id(c) != run_id(c.override({"run.seed": 1}))
    assert run_id(c) != run_id(c.override({"optim.matrix_lr": 0.03}))
    assert len(run_id(c)) == 10


def test_finished_run_is_reused_and_force_trains_again(tiny_data: Path, tmp_path: Path) -> None:
    first = launch(base(tiny_data), tmp_path, quiet=True)
    assert first.status == "finished" and not first.reused and first.eval is not None
    again = launch(base(tiny_data), tmp_path, quiet=True)
    assert again.reused and again.run_dir == first.run_dir and again.eval == first.eval
    forced = launch(base(tiny_data), tmp_path, force=True, quiet=True)
    assert not forced.reused and forced.status == "finished"
    assert list(tmp_path.glob(f"{first.run_dir.name}.replaced-*"))  # the old run was moved aside, not deleted
    assert forced.summary["final_val_bpb"] == first.summary["final_val_bpb"]


def test_unfinished_run_resumes(tiny_data: Path, tmp_path: Path) -> None:
    cfg = base(tiny_data, **{"train.iterations": 6})
    rid = run_id(cfg.override({"run.nproc": 1}))
    run_dir = tmp_path / f"t-{rid}"
    train(cfg.override({"run.out_dir": str(tmp_path), "run.name": run_dir.name}), run_dir, stop_at_step=3)
    rec = launch(cfg, tmp_path, quiet=True, evaluate=False)
    assert rec.status == "finished" and rec.run_dir == run_dir and not rec.reused
    steps = load_metrics(run_dir).dropna(subset=["train_loss"])["step"].tolist()
    assert steps == [1, 2, 3, 4, 5, 6]
    assert "resumed from step 3" in (run_dir / "train.log").read_text()


def test_sweep_records_crashing_diverging_and_invalid_arms(tiny_data: Path, tmp_path: Path) -> None:
    hot = {"optim.matrix_lr": 5.0, "optim.scalar_lr": 5.0, "optim.tied_embed_lr": 5.0,
           "train.diverge_loss": 10.0, "train.diverge_patience": 1, "train.iterations": 10}
    arms = {"ok": {}, "crash": {"data.root": str(tmp_path / "missing")}, "hot": hot, "invalid": {"model.dim": 3}}
    df = sweep(base(tiny_data), arms, seeds=[0, 1], runs_dir=tmp_path, quiet=True)
    status = df.groupby("arm")["status"].first().to_dict()
    assert status == {"ok": "finished", "crash": "failed", "hot": "diverged", "invalid": "invalid_config"}
    assert len(df) == 8 and df[df.arm == "ok"]["final_val_bpb"].notna().all()
    assert df[df.arm == "crash"]["error"].str.contains("data folder not found|exit code", regex=True).all()
    assert "model.dim = 3" in df[df.arm == "invalid"]["error"].iloc[0]
    s = summarize(df).set_index("arm")
    assert s.loc["ok", "count"] == 2 and s.loc["hot", "diverged"] == 2 and s.loc["crash", "failed"] == 2
    again = sweep(base(tiny_data), {"ok": {}}, seeds=[0, 1], runs_dir=tmp_path, quiet=True)
    assert again["reused"].all()


def test_grid_product_names_arms_and_parallel_runs_share_the_cores(tiny_data: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    df = sweep(base(tiny_data, **{"train.iterations": 2}), {"schedule.n_loops": [1, 2], "model.dim": [32]},
               seeds=[0], runs_dir=tmp_path, evaluate=False, quiet=True, parallel=2)
    assert df["arm"].tolist() == ["n_loops=1,dim=32", "n_loops=2,dim=32"]  # rows in job order
    assert (df["status"] == "finished").all()
    assert [json.loads((Path(d) / "summary.json").read_text())["threads"] for d in df["run_dir"]] == [1, 1]
    assert json.loads((Path(df["run_dir"][1]) / "config.json").read_text())["schedule"]["n_loops"] == 2


def test_arm_labels_become_columns_and_variants_evaluate_in_subprocesses(tiny_data: Path, tmp_path: Path) -> None:
    """Labels travel from the arm to the sweep row and on to every variant row; a failing variant is a
    row with its status (the others still evaluate, two at a time); a saved evaluation is reused."""
    arms = [Arm("narrow", {"model.dim": 32}, labels={"width": 32, "kind": "n"}),
            Arm("wide", {"model.dim": 64}, labels={"width": 64, "kind": "w"})]
    df = sweep(base(tiny_data, **{"train.iterations": 2}), arms, seeds=[0], runs_dir=tmp_path, evaluate=False, quiet=True)
    assert df[["arm", "width", "kind", "model.dim"]].values.tolist() == [["narrow", 32, "n", 32], ["wide", 64, "w", 64]]
    variants = [Arm("int6", {"quant.export_bits": 6}, labels={"bits": 6}),
                Arm("bad", {"quant.export_bits": 99}, labels={"bits": 99}),
                Arm("nodata", {"data.root": str(tmp_path / "missing")}, labels={"bits": 8})]
    ev = evaluate_variants(df, variants, parallel=2, quiet=True)
    assert len(ev) == 6 and ev[["arm", "variant"]].values.tolist()[:3] == [["narrow", "int6"], ["narrow", "bad"],
                                                                          ["narrow", "nodata"]]
    status = ev.set_index(["arm", "variant"])["status"].to_dict()
    assert {k[1]: v for k, v in status.items()} == {"int6": "finished", "bad": "invalid_config", "nodata": "eval_failed"}
    ok = ev[ev["variant"] == "int6"]
    assert ok["width"].tolist() == [32, 64] and ok["bits"].eq(6).all() and ok["quant_gap"].notna().all()
    assert "quant.export_bits" in ev.loc[ev["variant"] == "bad", "error"].iloc[0]
    assert (Path(df["run_dir"][0]) / "int6.json").exists() and not (Path(df["run_dir"][0]) / "nodata.json").exists()
    saved = Path(df["run_dir"][0]) / "int6.json"
    mtime = saved.stat().st_mtime_ns
    again = evaluate_variants(df, variants[:1], quiet=True)
    assert again["quant_gap"].tolist() == ok["quant_gap"].tolist() and saved.stat().st_mtime_ns == mtime  # reused
