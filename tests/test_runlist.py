"""Finding and comparing runs (`recur runs ls|compare`, recur_lib.lab.runlist) on a folder of real
smoke runs: finished (one evaluated), nested, failed, killed without a summary, and one being trained;
and the optional TensorBoard mirror of metrics.jsonl."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from recur_lib import Config, compare_runs, list_runs
from recur_lib.cli import main
from recur_lib.config import ConfigError
from recur_lib.lab.runlist import TABLE_COLUMNS, find_run, format_runs, plot_runs, run_status
from recur_lib.rundir import RunFolder, RunLock
from recur_lib.train import train

from conftest import TINY_VOCAB


def smoke(data: Path, runs: Path, name: str, **over) -> Config:
    return Config.from_name("smoke", {"data.root": str(data), "model.vocab_size": TINY_VOCAB, "run.out_dir": str(runs),
                                      "run.name": name, "train.val_every": 2, **over})


@pytest.fixture(scope="module")
def runs(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """a: finished and evaluated; b: finished, another schedule and lr; sub/c: finished, nested; broken:
    failed (no data); killed: checkpoint at step 2 and no summary, as a SIGKILL leaves it; not a run:
    a folder without config.json, and one inside a hidden folder."""
    from recur_lib.evaluate import evaluate_run
    root = tmp_path_factory.mktemp("runlist") / "runs"
    train(smoke(tiny_data, root, "a"))
    evaluate_run(root / "a")
    train(smoke(tiny_data, root, "b", **{"schedule.n_loops": 3, "optim.matrix_lr": 0.03}))
    train(smoke(tiny_data, root / "sub", "c", **{"run.seed": 7}), root / "sub" / "c")
    with pytest.raises(Exception, match="data"):
        train(smoke(tiny_data, root, "broken", **{"data.root": str(root / "no-such-data")}))
    train(smoke(tiny_data, root, "killed"), stop_at_step=2)
    (root / "killed" / "summary.json").unlink()
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not a run\n")
    hidden = root / ".ipynb_checkpoints" / "old"
    hidden.mkdir(parents=True)
    for f in ("config.json", "summary.json"):
        (hidden / f).write_text((root / "a" / f).read_text())
    return root


def test_list_runs_rows_and_columns(runs: Path) -> None:
    df = list_runs(runs).set_index("run")
    assert sorted(df.index) == ["a", "b", "broken", "killed", "sub/c"]
    assert set(TABLE_COLUMNS) - {"run"} <= set(df.columns)
    assert df["status"].to_dict() == {"a": "finished", "b": "finished", "sub/c": "finished", "broken": "failed",
                                      "killed": "unfinished"}
    assert (df["base"] == "smoke").all()  # every config is nearest to the preset it was made from
    assert df.loc["a", "shape"] == "hybrid 1+1x2+1 d32" and df.loc["b", "shape"] == "hybrid 1+1x3+1 d32"
    assert "n_loops=3" in df.loc["b", "changes"] and "matrix_lr=0.03" in df.loc["b", "changes"]
    assert "n_loops" not in df.loc["a", "changes"] and "seed=7" in df.loc["sub/c", "changes"]
    assert "root=no-such-data" in df.loc["broken", "changes"]  # a path shows its last part
    assert df.loc["b", "changed"]["schedule.n_loops"] == 3 and "run.name" not in df.loc["b", "changed"]
    assert df.loc["a", "steps"] == 4 and df.loc["killed", "steps"] == 2  # killed: from metrics.jsonl
    assert math.isfinite(df.loc["a", "val_bpb"]) and math.isnan(df.loc["broken", "val_bpb"])
    ev = json.loads((runs / "a" / "eval.json").read_text())
    assert df.loc["a", "artifact_bytes"] == ev["artifact"]["total_bytes"] > 0
    assert math.isnan(df.loc["b", "artifact_bytes"])
    assert df["age"].str.fullmatch(r"\d+[smhd]").all()
    best = list_runs(runs, sort="val_bpb")
    finite = best["val_bpb"].dropna().tolist()
    assert finite == sorted(finite) and best["val_bpb"].iloc[-1] != best["val_bpb"].iloc[-1]  # NaN last
    with pytest.raises(FileNotFoundError, match="no such folder"):
        list_runs(runs / "nowhere")


def test_a_run_being_trained_is_running(runs: Path) -> None:
    lock = RunLock.acquire(runs / "killed")
    try:
        assert run_status(runs / "killed") == "running"
    finally:
        lock.release()
    assert run_status(runs / "killed") == "unfinished"


def test_runs_ls_prints_the_table(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", "ls", str(runs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "status", "base", "shape", "changes", "steps", "val_bpb", "artifact", "age"]
    rows = {ln.split()[0]: ln.split() for ln in lines[1:]}
    assert set(rows) == {"a", "b", "broken", "killed", "sub/c"}
    assert rows["a"][1:5] == ["finished", "smoke", "hybrid", "1+1x2+1"] and rows["killed"][1] == "unfinished"
    assert rows["broken"][1] == "failed"
    bytes_a = json.loads((runs / "a" / "eval.json").read_text())["artifact"]["total_bytes"]
    assert f"{bytes_a:,}" in rows["a"]
    assert main(["runs", "ls", str(runs), "--status", "failed", "--status", "unfinished"]) == 0
    assert [ln.split()[0] for ln in capsys.readouterr().out.splitlines()[1:]] == ["broken", "killed"]
    assert main(["runs", "ls", str(runs / "nowhere")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert format_runs(list_runs(runs).iloc[:0]) == "no run folders"


def test_compare_runs_tables(runs: Path) -> None:
    diff, metrics = compare_runs([runs / "a", runs / "b", runs / "broken"])
    assert list(diff.columns) == list(metrics.index) == ["a", "b", "broken"]
    assert {"schedule.n_loops", "optim.matrix_lr", "data.root"} <= set(diff.index)
    assert not {"run.name", "run.out_dir", "model.dim"} & set(diff.index)  # where a run lives; equal keys
    assert diff.loc["schedule.n_loops"].tolist() == [2, 3, 2]
    assert metrics["status"].tolist() == ["finished", "finished", "failed"]
    a = metrics.loc["a"]
    assert a["steps"] == 4 and a["quant_gap"] == pytest.approx(a["quant_bpb"] - a["float_bpb"])
    assert a["final_val_bpb"] == json.loads((runs / "a" / "summary.json").read_text())["final_val_bpb"]
    assert a["tokens_per_s"] > 0 and math.isnan(metrics.loc["b", "float_bpb"])
    assert "no-such-data" in metrics.loc["broken", "reason"]
    same, _ = compare_runs([runs / "a", runs / "a"])
    assert same.empty


def test_runs_compare_prints_side_by_side_and_writes_the_figure(runs: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    fig = tmp_path / "figs" / "cmp.png"
    # folder names are looked up under --root; a unique start of one is enough
    assert main(["runs", "compare", "a", "b", "kil", "--root", str(runs), "--out", str(fig)]) == 0
    out = capsys.readouterr().out
    assert fig.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"figure: {fig}" in out
    config, metrics = out.split("\nmetrics\n")
    header = config.splitlines()[1].split()
    assert header == ["key", "a", "b", "killed"]
    n_loops = next(ln.split() for ln in config.splitlines() if ln.startswith("schedule.n_loops"))
    assert n_loops == ["schedule.n_loops", "2", "3", "2"]
    rows = {ln.split()[0]: ln.split()[1:] for ln in metrics.splitlines()[1:] if ln.strip()}
    assert rows["status"] == ["finished", "finished", "unfinished"]
    assert rows["steps"] == ["4", "4", "2"] and len(rows["final_val_bpb"]) == 3
    assert rows["quant_gap"][0].startswith(("+", "-")) and rows["quant_gap"][1:] == ["-", "-"]
    assert find_run("b", runs) == runs / "b" and find_run("bro", runs) == runs / "broken"  # exact name first
    for twin in ("x1", "x2"):
        (tmp_path / twin).mkdir()
        for f in ("config.json", "summary.json"):
            (tmp_path / twin / f).write_text((runs / "a" / f).read_text())
    with pytest.raises(FileNotFoundError, match="2 runs under .* start so: x1, x2"):
        find_run("x", tmp_path)
    assert main(["runs", "compare", "zzz", "--root", str(runs), "--out", "-"]) == 2


def test_plot_runs_draws_labelled_curves(runs: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2)
    out = plot_runs([runs / "a", runs / "b", runs / "killed"], ax=axes)
    assert list(out) == list(axes)
    loss, val = out
    assert [ln.get_label() for ln in loss.get_lines()] == ["a", "b", "killed"]
    assert loss.get_xlabel() == "step" and "loss" in loss.get_ylabel() and "bpb" in val.get_ylabel()
    assert list(loss.get_lines()[2].get_xdata()) == [1, 2]  # the killed run's steps
    assert list(val.get_lines()[0].get_xdata()) == [0, 2, 4]  # step 0, val_every 2, the final evaluation
    plt.close(fig)
    with pytest.raises(ValueError, match="axes"):
        plot_runs([runs / "a"], ax=axes[0])


def test_plot_runs_draws_a_resumed_runs_steps_once(runs: Path, tmp_path: Path) -> None:
    import json
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(1, 5.0), (2, 4.0), (3, 9.0), (3, 3.5), (4, 3.0)]  # step 3 logged again after a resume
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "train_loss": v}) + "\n" for s, v in rows))
    (tmp_path / "config.json").write_text((runs / "a" / "config.json").read_text())
    fig, ax = plt.subplots()
    (line,) = plot_runs([tmp_path], metrics=("train_loss",), ax=[ax])[0].get_lines()
    assert list(line.get_xdata()) == [1, 2, 3, 4] and list(line.get_ydata()) == [5.0, 4.0, 3.5, 3.0]
    plt.close(fig)


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


def test_tensorboard_mirrors_the_metrics_through_a_resume(tiny_data: Path, tmp_path: Path) -> None:
    cfg = smoke(tiny_data, tmp_path, "tb", **{"run.tensorboard": True, "train.iterations": 6,
                                                "model.loop_lora_rank": 1})
    train(cfg, stop_at_step=3)
    assert list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))
    # what a process killed after its checkpoint leaves: a step written, then lost with the process
    late = RunFolder(tmp_path / "tb", main=True)  # run.tensorboard read from the folder's config.json
    late.append_metrics({"step": 4, "time": 1.0, "tokens": 2048, "train_loss": 99.0})
    late.close()
    assert scalars(tmp_path / "tb")["train_loss"][-1] == (4, 99.0)
    train(cfg, resume=True)
    recs = [json.loads(x) for x in (tmp_path / "tb" / "metrics.jsonl").read_text().splitlines()]
    tb = scalars(tmp_path / "tb")
    # every step once (the resumed writer hides what the first wrote after its checkpoint), same values
    want = [(r["step"], r["train_loss"]) for r in recs if "train_loss" in r]
    assert [s for s, _ in want] == [1, 2, 3, 4, 5, 6]
    assert [s for s, _ in tb["train_loss"]] == [s for s, _ in want]
    assert [v for _, v in tb["train_loss"]] == pytest.approx([v for _, v in want], rel=1e-6)
    assert [s for s, _ in tb["val_bpb"]] == [r["step"] for r in recs if "val_bpb" in r] == [0, 2, 4, 6]
    assert [s for s, _ in tb["lr_scale"]] == [1, 2, 3, 4, 5, 6]
    assert {"update_rms/matrices", "update_rms/lora_vectors"} <= set(tb)
    last = recs[-2]["lora_norms"]["b1_l1.fc"]
    assert tb["lora_norms/b1_l1.fc/BA"][-1] == (6, pytest.approx(last[2], rel=1e-6))
    assert not (tmp_path / "plain").exists()
    train(smoke(tiny_data, tmp_path, "plain"))
    assert not (tmp_path / "plain" / "tensorboard").exists()  # off by default


def test_tensorboard_scalars_name_nested_values() -> None:
    rec = {"step": 3, "train_loss": 2.5, "final": True, "update_rms": {"matrices": 0.1},
           "lora_norms": {"b1_l0.q": [1.0, 2.0, 3.0]}, "note": "text"}
    assert RunFolder.tensorboard_scalars(rec) == {"train_loss": 2.5, "update_rms/matrices": 0.1,
                                                  "lora_norms/b1_l0.q/A": 1.0, "lora_norms/b1_l0.q/B": 2.0,
                                                  "lora_norms/b1_l0.q/BA": 3.0}


def test_tensorboard_missing_stops_the_run_before_its_first_step(tiny_data: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # its import now fails
    with pytest.raises(ConfigError, match=r"pip install 'recur-golf\[tensorboard\]'"):
        train(smoke(tiny_data, tmp_path, "tb", **{"run.tensorboard": True}))
    summary = json.loads((tmp_path / "tb" / "summary.json").read_text())
    assert summary["status"] == "failed" and "recur-golf[tensorboard]" in summary["error"]
    assert not (tmp_path / "tb" / "metrics.jsonl").exists()
