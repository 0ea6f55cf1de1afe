"""Run the workbook: every notebook through papermill at one preset, executed copies and HTML renderings
written to results/<preset>/. A failing notebook is saved with papermill's error marker and reported;
the others still run.

    python -m recur_lib.cli workbook --preset quick          # what `make workbook` runs
    python -m recur_lib.cli workbook --preset cpu --seeds 0 1 2   # the published results (hours)
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .paths import PROJECT_ROOT, resolve

NOTEBOOKS = ("00_quickstart", "10_lora_rank_divergence", "20_quant_gap_hybrid", "30_loop_scaling")


def run_notebook(name: str, preset: str, results_dir: Path, parameters: dict[str, Any], html: bool = True) -> dict[str, Any]:
    import papermill as pm
    src = PROJECT_ROOT / "notebooks" / f"{name}.ipynb"
    out = results_dir / f"{name}.ipynb"
    params = {"preset": preset, "results_dir": str(results_dir), **parameters}
    t0 = time.time()
    status, error = "ok", None
    try:
        pm.execute_notebook(str(src), str(out), parameters=params, cwd=str(PROJECT_ROOT / "notebooks"),
                            kernel_name="python3", progress_bar=False, request_save_on_cell_execute=True)
    except Exception as e:  # PapermillExecutionError, a dead kernel...: recorded, the next notebook runs
        status, error = "failed", f"{type(e).__name__}: {str(e)[:2000]}"
    seconds = round(time.time() - t0, 1)
    if html and out.exists():
        subprocess.run([sys.executable, "-m", "nbconvert", "--to", "html", str(out), "--output-dir", str(results_dir)],
                       capture_output=True, text=True)
    return {"notebook": name, "status": status, "seconds": seconds, "output": str(out), "error": error}


def run_workbook(preset: str = "quick", notebooks: tuple[str, ...] = NOTEBOOKS, results_root: str = "results",
                 parameters: dict[str, Any] | None = None, html: bool = True) -> list[dict[str, Any]]:
    results_dir = resolve(results_root) / preset
    results_dir.mkdir(parents=True, exist_ok=True)
    report = []
    for name in notebooks:
        print(f"== {name} ({preset})", flush=True)
        r = run_notebook(name, preset, results_dir, dict(parameters or {}), html)
        print(f"   {r['status']} in {r['seconds']} s -> {r['output']}" + (f"\n   {r['error']}" if r["error"] else ""),
              flush=True)
        report.append(r)
    import json
    path = results_dir / "workbook.json"  # one entry per notebook, the latest execution of each
    previous = json.loads(path.read_text()) if path.exists() else []
    merged = {r["notebook"]: r for r in previous + report}
    path.write_text(json.dumps([merged[n] for n in NOTEBOOKS if n in merged], indent=2) + "\n")
    return report
