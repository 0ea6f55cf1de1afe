"""Every notebook runs top to bottom through papermill at the smoke preset (on the tiny corpus) and
writes its table with the expected arms and finite numbers; source notebooks carry no outputs."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from recur_lib.lab.workbook import NOTEBOOKS, notebook_parameters, run_workbook

from conftest import TINY_VOCAB

ROOT = Path(__file__).resolve().parents[1]


def test_source_notebooks_have_no_outputs_and_a_parameters_cell() -> None:
    for name in NOTEBOOKS:
        nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), name
        assert sum("parameters" in c.get("metadata", {}).get("tags", []) for c in code) == 1, name


def test_parameters_go_where_declared_and_typos_fail_before_running() -> None:
    cpu = notebook_parameters("cpu", NOTEBOOKS)
    assert cpu["00_quickstart"] == {}  # declares neither seeds nor loops
    assert cpu["20_quant_gap_hybrid"]["loops"] == [1, 2, 3, 4, 6] and cpu["20_quant_gap_hybrid"]["parallel"] == 2
    assert cpu["30_loop_scaling"]["loops"] == [1, 2, 3, 4, 6] and cpu["30_loop_scaling"]["design"] == "budgets"
    assert cpu["10_lora_rank_divergence"]["seeds"] == [0]  # a notebook's own default beats the preset's "*"
    p = notebook_parameters("cpu", NOTEBOOKS, {"seeds": [5], "30_loop_scaling:loops": [2]})
    assert p["10_lora_rank_divergence"]["seeds"] == [5] and p["30_loop_scaling"]["loops"] == [2]
    assert p["20_quant_gap_hybrid"]["seeds"] == [5] and p["20_quant_gap_hybrid"]["parallel"] == 2
    for bad, says in (({"seedz": [1]}, "not declared by any notebook"), ({"00_quickstart:loops": [1]}, "not declared by 00"),
                      ({"99_x:loops": [1]}, "no notebook '99_x'")):
        with pytest.raises(ValueError, match=says):
            notebook_parameters("quick", NOTEBOOKS, bad)


def test_an_override_of_a_field_the_notebooks_set_themselves_is_refused(capsys) -> None:
    """`recur workbook --set run.seed=102` would be recorded in the published parameters and not used."""
    from recur_lib.cli import main
    with pytest.raises(ValueError, match=r"overrides \['run.seed'\]: the notebooks set these themselves.*--seeds"):
        notebook_parameters("quick", NOTEBOOKS, {"overrides": {"run.seed": 102, "train.iterations": 5}})
    assert main(["workbook", "--preset", "smoke", "--set", "run.seed=102", "--results", "/nonexistent/x"]) == 2
    assert "choose seeds with --seeds" in capsys.readouterr().err
    assert notebook_parameters("quick", NOTEBOOKS, {"overrides": {"train.iterations": 5}})["30_loop_scaling"][
        "overrides"] == {"train.iterations": 5}


@pytest.fixture(scope="module")
def workbook(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("results")
    report = run_workbook("smoke", NOTEBOOKS, str(root), {
        "overrides": {"data.root": str(tiny_data), "model.vocab_size": TINY_VOCAB},
        "runs_dir": str(root / "runs"), "parallel": 2, "20_quant_gap_hybrid:loops": [1, 2]}, html=False)
    assert [r["status"] for r in report] == ["ok"] * len(NOTEBOOKS), [r["error"] for r in report]
    return root / "smoke"


def finite(series: pd.Series) -> bool:
    return all(isinstance(v, float) and math.isfinite(v) for v in series)


def test_quickstart_table(workbook: Path) -> None:
    t = pd.read_csv(workbook / "00_quickstart.csv")
    assert len(t) == 1 and t["status"][0] == "finished" and finite(t["float_bpb"]) and finite(t["quant_bpb"])
    nb = json.loads((workbook / "00_quickstart.ipynb").read_text())
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
               for c in nb["cells"] for o in c.get("outputs", []))  # the schedule diagram and plots rendered


def test_lora_table(workbook: Path) -> None:
    t = pd.read_csv(workbook / "10_lora_rank_divergence.csv")
    assert t["arm"].tolist() == ["rank1-vectors-adamw", "rank8-muon-keller", "rank8-muon-none",
                                 "rank8-muon-moonlight", "rank8-adamw"]
    norms = pd.read_csv(workbook / "10_lora_norms.csv")
    assert norms["arm"].tolist() == t["arm"].tolist() and finite(norms["BA_mean"]) and (norms["BA_mean"] >= 0).all()
    runs = pd.read_csv(workbook / "10_lora_runs.csv")
    assert runs["status"].isin(["finished", "diverged"]).all()
    assert finite(runs[runs.status == "finished"]["final_val_bpb"])


def test_quant_table(workbook: Path) -> None:
    t = pd.read_csv(workbook / "20_quant_gap_hybrid.csv")
    assert set(zip(t["arch"], t["qat"])) == {("shared", "off"), ("shared", "on"), ("hybrid", "off"), ("hybrid", "on")}
    assert sorted(t["bits"].unique()) == [4, 6, 8] and finite(t["quant_gap"]) and finite(t["quant_bpb"])
    assert sorted(t["loops"].unique()) == [1, 2] and set(zip(t["arch"], t["loops"], t["reuse"])) == {
        ("shared", 1, 1), ("shared", 2, 2), ("hybrid", 1, 1), ("hybrid", 2, 3)}
    nb = json.loads((workbook / "20_quant_gap_hybrid.ipynb").read_text())
    printed = "".join("".join(o["text"]) for c in nb["cells"] for o in c.get("outputs", []) if o.get("name") == "stdout")
    assert "- shared: gap per application, L = 2 minus L = 1" in printed  # the loop-count verdict ran


def test_loop_table(workbook: Path) -> None:
    t = pd.read_csv(workbook / "30_loop_scaling.csv")
    assert sorted(t[t["mode"] == "params"]["loops"]) == [1, 2, 4]
    assert finite(t["final_val_bpb"])
    d = pd.read_csv(workbook / "30_loop_scaling_depth.csv")
    assert set(d["eval_loops"] - d["trained_loops"]) == {0, 1, 2} and finite(d["float_bpb"])


def test_a_failing_notebook_leaves_published_results_alone(tiny_data: Path, tmp_path: Path) -> None:
    """The failure is reported with the cell's own exception, kept as <name>.failed.ipynb, and the
    published notebook and table stay as they were."""
    published = tmp_path / "smoke"
    published.mkdir()
    (published / "00_quickstart.ipynb").write_text("published notebook")
    (published / "00_quickstart.csv").write_text("published table")
    report = run_workbook("smoke", ("00_quickstart",), str(tmp_path), {
        "overrides": {"data.root": str(tiny_data), "model.vocab_size": TINY_VOCAB, "model.dim": 3}}, html=False)
    assert report[0]["status"] == "failed"
    assert "ConfigError" in report[0]["error"] and "model.dim = 3" in report[0]["error"]
    assert (published / "00_quickstart.ipynb").read_text() == "published notebook"
    assert (published / "00_quickstart.csv").read_text() == "published table"
    assert (published / "00_quickstart.failed.ipynb").exists()
    assert not list(published.glob(".staging-*"))
    entry = json.loads((published / "workbook.json").read_text())[0]
    assert entry["status"] == "unpublished" and entry["last_failure"]["status"] == "failed"


def test_workbook_presets_are_the_cpu_sizes() -> None:
    with pytest.raises(ValueError, match="recur train --preset seed-927"):
        run_workbook("full", ("00_quickstart",))


def test_the_lora_regime_design_runs_and_decides(tiny_data: Path, tmp_path: Path) -> None:
    report = run_workbook("smoke", ("10_lora_rank_divergence",), str(tmp_path), {
        "overrides": {"data.root": str(tiny_data), "model.vocab_size": TINY_VOCAB}, "design": "regime",
        "boundary_seeds": [1], "boundary_arms": 2, "runs_dir": str(tmp_path / "runs"), "parallel": 2}, html=False)
    assert report[0]["status"] == "ok", report[0]["error"]
    runs = pd.read_csv(tmp_path / "smoke" / "10_lora_runs.csv")
    assert len(runs) == 16 + 2 and set(runs["b_mult"].dropna()) == {1.0, 2.0, 9.8}
    stage2 = runs[runs["seed"] == 1]
    assert len(stage2) == 2 and (stage2["optimizer"] == "muon").all() and stage2["b_mult"].notna().all()
    nb = json.loads((tmp_path / "smoke" / "10_lora_rank_divergence.ipynb").read_text())
    printed = "".join("".join(o["text"]) for c in nb["cells"] for o in c.get("outputs", []) if o.get("name") == "stdout")
    assert "- B-step x9.8: diverged" in printed


def test_quant_probe_tables(workbook: Path) -> None:
    s = pd.read_csv(workbook / "20_quant_probe.csv")
    assert set(zip(s["arch"], s["qat"])) == {("shared", "off"), ("shared", "on"), ("hybrid", "off"), ("hybrid", "on")}
    assert set(s["scheme"]) == {"baseline", "rowmax"} and finite(s["dloss_all"]) and finite(s["rel_error_first"])
    steps = pd.read_csv(workbook / "20_quant_probe_steps.csv")
    assert len(steps) == sum(len(g) for _, g in steps.groupby(["arm", "scheme"]))
    assert (steps["rel_error"] > 0).all()


def test_published_results_name_no_machines_folders() -> None:
    """Tables, executed notebooks and workbook.json under results/ hold project-relative paths to run
    folders, results and notebooks, never a machine's absolute ones."""
    import re
    import subprocess
    tracked = subprocess.run(["git", "ls-files", "results"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    absolute = re.compile(r'(^|[",\s])/[\w./+-]*/(runs|results|notebooks)/')
    bad = [f for f in tracked if f.endswith((".csv", ".json", ".ipynb")) and absolute.search((ROOT / f).read_text())]
    assert not bad, bad


def test_the_loop_budget_design_runs_and_decides(tiny_data: Path, tmp_path: Path) -> None:
    report = run_workbook("smoke", ("30_loop_scaling",), str(tmp_path), {
        "overrides": {"data.root": str(tiny_data), "model.vocab_size": TINY_VOCAB}, "design": "budgets",
        "loops": [1, 2], "budgets": [1024, 2048], "sampled_loops": 2, "eval_loops_max": 3, "seeds": [0], "flat_control": True,
        "runs_dir": str(tmp_path / "runs"), "parallel": 2}, html=False)
    assert report[0]["status"] == "ok", report[0]["error"]
    t = pd.read_csv(tmp_path / "smoke" / "30_loop_scaling.csv")
    assert set(t["mode"]) == {"compute", "params", "flat", "sampled"} and finite(t["final_val_bpb"])
    comp = t[t["mode"] == "compute"]
    assert sorted(comp[comp["loops"] == 1]["steps"]) == [2, 4]  # the budgets over 512-token steps
    d = pd.read_csv(tmp_path / "smoke" / "30_loop_scaling_depth.csv")
    assert sorted(d["eval_loops"].unique()) == [1, 2, 3] and set(d["loop_sampling"]) == {"fixed", "poisson_lognormal"}
    nb = json.loads((tmp_path / "smoke" / "30_loop_scaling.ipynb").read_text())
    printed = "".join("".join(o["text"]) for c in nb["cells"] for o in c.get("outputs", []) if o.get("name") == "stdout")
    assert "- L1 from 1,024 to 2,048 tokens" in printed
    assert "flat - looped" in printed and "3 - 2 loops" in printed  # the depth-or-sharing and extrapolation verdicts


def test_the_quant_loops_design_with_lengths_and_a_second_seed(tiny_data: Path, tmp_path: Path) -> None:
    """The published cpu design at smoke size: gap against loop count, a second seed at one L, and the
    gap against training length."""
    report = run_workbook("smoke", ("20_quant_gap_hybrid",), str(tmp_path), {
        "overrides": {"data.root": str(tiny_data), "model.vocab_size": TINY_VOCAB}, "design": "loops",
        "loops": [1, 2], "extra_seed_loops": [2], "length_loops": 1, "lengths": [2, 4], "seeds": [0],
        "bits": [8, 4], "probe_bits": [4], "probe_schemes": ["baseline"],
        "runs_dir": str(tmp_path / "runs"), "parallel": 2}, html=False)
    assert report[0]["status"] == "ok", report[0]["error"]
    t = pd.read_csv(tmp_path / "smoke" / "20_quant_gap_hybrid.csv")
    lengths = t[t["length"].notna()]
    assert sorted(lengths["length"].unique()) == [2, 4] and set(lengths["arch"]) == {"shared", "hybrid"}
    assert sorted(t[(t["loops"] == 2) & t["length"].isna()]["seed"].unique()) == [0, 1]
    nb = json.loads((tmp_path / "smoke" / "20_quant_gap_hybrid.ipynb").read_text())
    printed = "".join("".join(o["text"]) for c in nb["cells"] for o in c.get("outputs", []) if o.get("name") == "stdout")
    assert "- shared: int4 gap 2 steps" in printed and "gap per application, L = 2 minus L = 1" in printed
    figures = {c.get("id"): sum("image/png" in o.get("data", {}) for o in c.get("outputs", [])) for c in nb["cells"]}
    assert figures["gap-vs-loops"] == 2  # the gap against loop count and against training length
