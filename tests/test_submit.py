"""`recur submit`: the generated train_gpt.py computes what `recur train` + `recur eval` compute, in a
fresh interpreter outside the repository, under torchrun with 1 and 2 processes; the folder's
structure, bytes and refusals."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from recur_lib import Config
from recur_lib import submit
from recur_lib.evaluate import evaluate_run
from recur_lib.submit import SubmitError, write_submission
from recur_lib.train import train

from conftest import TINY_VOCAB

ROOT = Path(__file__).resolve().parents[1]


def smoke_cfg(data: Path, seed: int = 3, **over) -> Config:
    return Config.from_name("smoke", {"data.root": str(data), "model.vocab_size": TINY_VOCAB, "run.seed": seed, **over})


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def torchrun(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_port", str(free_port()), *args]


@pytest.mark.parametrize("nproc", [1, 2])
def test_the_script_scores_what_recur_train_and_eval_score(tiny_data: Path, tmp_path: Path, nproc: int) -> None:
    """Score-first TTT included: under 2 processes it splits each chunk over the ranks in both."""
    cfg = smoke_cfg(tiny_data, **{"run.nproc": nproc, "eval.ttt": "score_first", "eval.ttt_epochs": 1,
                                  "eval.ttt_chunk_tokens": 1024})
    records = tmp_path / "records"
    sub = write_submission(cfg, records)
    script = records / "train_gpt.py"
    assert script.stat().st_size == sub["bytes_code"]
    env = clean_env(DATA_PATH=str(tiny_data), SEED="3", RUN_ID="s3")
    if nproc == 1:  # a plain, isolated interpreter that also reports what it imported
        check = ("import runpy, sys; runpy.run_path('train_gpt.py', run_name='__main__'); "
                 "bad = [m for m in sys.modules if m.split('.')[0] == 'recur_lib']; assert not bad, bad")
        cmd = [sys.executable, "-I", "-c", check]
    else:
        cmd = torchrun(nproc, "train_gpt.py")
    res = subprocess.run(cmd, cwd=records, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-8000:]
    mine = json.loads((records / "runs" / "s3" / "eval.json").read_text())

    cfg.save(tmp_path / "cfg.json")
    ref = tmp_path / "ref"
    for sub_cmd in (["train", "--config", str(tmp_path / "cfg.json"), "--run-dir", str(ref)], ["eval", str(ref)]):
        cli = ["-m", "recur_lib.cli", *sub_cmd]
        cmd = [sys.executable, *cli] if nproc == 1 else torchrun(nproc, *cli)
        r = subprocess.run(cmd, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    theirs = json.loads((ref / "eval.json").read_text())
    for weights in ("float", "quantized"):
        assert mine[weights]["plain"]["val_bpb"] == theirs[weights]["plain"]["val_bpb"]  # bitwise
        assert mine[weights]["ttt"]["val_bpb"] == theirs[weights]["ttt"]["val_bpb"]
    assert mine["artifact"]["model_bytes"] == theirs["artifact"]["model_bytes"]
    assert mine["artifact"]["code_bytes"] == sub["bytes_code"]  # the budget counts this file
    final = theirs["quantized"]["ttt"]  # the challenge's final line scores what the config scores with
    exact = f"final_int8_zstd_roundtrip_exact val_loss:{final['val_loss']:.8f} val_bpb:{final['val_bpb']:.8f}"
    assert exact in res.stdout


def imports_of(source: str) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("preset", ["seed-927", "seed-1406", "seed-341", "seed-1096"])
def test_every_seed_preset_gives_a_records_folder(preset: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Structure, imports and bytes; the random-init estimate (minutes at full size) is replaced by a
    number here: the real ones come from `recur submit --preset seed-N` (README "Submitting")."""
    monkeypatch.setattr(submit, "estimate_model_bytes", lambda cfg: 1_000_000)
    cfg = Config.from_name(preset)
    sizes = {}
    for strip in (False, True):
        out = tmp_path / f"s{strip}"
        sub = write_submission(cfg, out, strip=strip)
        assert sorted(p.name for p in out.iterdir()) == ["README.md", "requirements.txt", "submission.json", "train_gpt.py"]
        text = (out / "train_gpt.py").read_text()
        tree = ast.parse(text)
        modules = {}
        for node in tree.body:  # MODULES[name] = source
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript):
                modules[node.targets[0].slice.value] = node.value.value
        assert {"train", "evaluate", "export", "model.gpt"} <= set(modules)
        assert not any(m.startswith(("lab", "cli", "submit", "data.corpus")) for m in modules)
        outside = set().union(imports_of(text), *map(imports_of, modules.values())) - set(sys.stdlib_module_names)
        assert outside <= {"torch", "numpy", "sentencepiece", "zstandard", "tqdm"}  # tqdm: switched off by main()
        assert "recur_lib" not in outside
        meta = json.loads((out / "submission.json").read_text())
        assert meta == sub and meta["bytes_code"] == len(text.encode()) and meta["bytes_model_estimated"]
        assert meta["bytes_total"] == meta["bytes_code"] + 1_000_000 and meta["track"] == "10min_16mb"
        sizes[strip] = meta["bytes_code"]
        if strip:
            assert meta["bytes_code_stripped_saved"] == sizes[False] - sizes[True] > 0
    assert sizes[True] < 0.8 * sizes[False]


def test_over_budget_is_refused_naming_each_part(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(submit, "estimate_model_bytes", lambda cfg: 15_900_000)
    out = tmp_path / "over"
    with pytest.raises(SubmitError, match=r"code [\d,]+ \+ model 15,900,000 = .* over the 16,000,000-byte budget by"):
        write_submission(Config.from_name("smoke"), out)
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing written, no partial folder
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    monkeypatch.setattr(submit, "estimate_model_bytes", lambda cfg: 1000)
    with pytest.raises(SubmitError, match="not empty"):
        write_submission(Config.from_name("smoke"), out)
    assert (out / "keep.txt").read_text() == "mine"


def test_runs_fill_submission_json(tiny_data: Path, tmp_path: Path) -> None:
    runs = []
    for seed in (1, 2):
        cfg = smoke_cfg(tiny_data, seed)
        train(cfg, tmp_path / f"seed{seed}")
        runs.append(tmp_path / f"seed{seed}")
        evaluate_run(runs[-1])
    sub = write_submission(smoke_cfg(tiny_data, 1), tmp_path / "records", runs, name="smoke pair")
    evals = [json.loads((r / "eval.json").read_text()) for r in runs]
    bpbs = [e["quantized"]["plain"]["val_bpb"] for e in evals]
    assert sub["seeds"] == [1, 2] and sub["val_bpb"] == pytest.approx(sum(bpbs) / 2, abs=0)
    assert sub["bytes_model"] == max(e["artifact"]["model_bytes"] for e in evals) and not sub["bytes_model_estimated"]
    assert sub["seed_results"]["2"]["artifact_bytes"] == evals[1]["artifact"]["model_bytes"] + sub["bytes_code"]
    assert (tmp_path / "records" / "train_seed2.log").read_text() == (runs[1] / "train.log").read_text()
    assert "| 2 | " in (tmp_path / "records" / "README.md").read_text()
    with pytest.raises(SubmitError, match="differs from the submission's in"):
        write_submission(smoke_cfg(tiny_data, 1, **{"train.iterations": 5}), tmp_path / "other", runs)
