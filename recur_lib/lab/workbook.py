"""Run the workbook: every notebook through papermill at one preset, executed copies and HTML renderings
written to results/<preset>/. A failing notebook is saved with papermill's error marker and reported;
the others still run.

    python -m recur_lib.cli workbook --preset quick          # what `make workbook` runs
    python -m recur_lib.cli workbook --preset cpu            # the published results (make workbook-cpu)
    python -m recur_lib.cli workbook --preset quick --param seeds=[0,1] --param 30_loop_scaling:loops=[1,2]

A parameter goes to every notebook that declares it; `notebook:name=value` to one notebook only.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..paths import PROJECT_ROOT, atomic_write, resolve

NOTEBOOKS = ("00_quickstart", "10_lora_rank_divergence", "20_quant_gap_hybrid", "30_loop_scaling")

# What a preset's workbook passes to the notebooks unless the caller says otherwise ("*": every notebook
# declaring the name). The published cpu results: 3 seeds, two one-thread runs at a time, loops 1, 2, 4, 8.
PRESET_PARAMS: dict[str, dict[str, dict[str, Any]]] = {
    "cpu": {"*": {"seeds": [0, 1, 2], "parallel": 2},
            "30_loop_scaling": {"loops": [1, 2, 4, 8]}},
}


def declared_parameters(name: str) -> set[str]:
    """The names a notebook's `parameters` cell declares."""
    import papermill as pm
    return set(pm.inspect_notebook(str(PROJECT_ROOT / "notebooks" / f"{name}.ipynb")))


def notebook_parameters(preset: str, notebooks: tuple[str, ...], parameters: dict[str, Any] | None = None
                        ) -> dict[str, dict[str, Any]]:
    """Per notebook, the parameters it receives: the preset's defaults, then `parameters` ("name" for
    every notebook declaring it, "notebook:name" for one). A name no notebook declares is an error
    before anything runs, so a typo never silently runs the defaults for hours."""
    declared = {nb: declared_parameters(nb) for nb in notebooks}
    given = [(key, *key.rpartition(":")[::2], value) for key, value in (parameters or {}).items()]  # key, nb, name
    for key, nb, name, _ in given:
        if nb and nb not in notebooks:
            raise ValueError(f"parameter {key!r}: no notebook {nb!r} in this workbook ({', '.join(notebooks)})")
        if not any(name in declared[n] for n in ([nb] if nb else notebooks)):
            raise ValueError(f"parameter {key!r}: not declared by {nb or 'any notebook'}; the parameters cells "
                             f"declare {sorted(set().union(*declared.values()))}")
    defaults = PRESET_PARAMS.get(preset, {})
    out: dict[str, dict[str, Any]] = {}
    for nb in notebooks:
        merged = {**defaults.get("*", {}), **defaults.get(nb, {})}
        merged.update({name: v for _, scope, name, v in given if not scope})
        merged.update({name: v for _, scope, name, v in given if scope == nb})
        out[nb] = {k: v for k, v in merged.items() if k in declared[nb]}
    return out


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
    per_notebook = notebook_parameters(preset, notebooks, parameters)
    results_dir = resolve(results_root) / preset
    results_dir.mkdir(parents=True, exist_ok=True)
    report = []
    for name in notebooks:
        print(f"== {name} ({preset}) {per_notebook[name]}", flush=True)
        r = run_notebook(name, preset, results_dir, per_notebook[name], html)
        print(f"   {r['status']} in {r['seconds']} s -> {r['output']}" + (f"\n   {r['error']}" if r["error"] else ""),
              flush=True)
        report.append(r)
    import json
    path = results_dir / "workbook.json"  # one entry per notebook, the latest execution of each
    previous = json.loads(path.read_text()) if path.exists() else []
    merged = {r["notebook"]: r for r in previous + report}
    atomic_write(path, json.dumps([merged[n] for n in NOTEBOOKS if n in merged], indent=2) + "\n")
    return report
