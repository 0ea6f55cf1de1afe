"""Run the workbook: every notebook through papermill at one preset, executed copies and HTML renderings
written to results/local/<preset>/ (ignored by git), or for a published preset (cpu) to the tracked
results/<preset>/. A failing notebook is saved with papermill's error marker and reported; the others
still run.

    python -m recur_lib.cli workbook --preset quick          # what `make workbook` runs
    python -m recur_lib.cli workbook --preset cpu            # the published results (make workbook-cpu)
    python -m recur_lib.cli workbook --preset quick --param seeds=[0,1] --param 30_loop_scaling:loops=[1,2]

A parameter goes to every notebook that declares it; `notebook:name=value` to one notebook only.
While a notebook runs, the terminal shows what its cells print (the runner's line per run) and, on a
terminal, a bar of its cells.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from ..paths import PROJECT_ROOT, atomic_write, project_relative, resolve

NOTEBOOKS = ("00_quickstart", "10_lora_rank_divergence", "20_quant_gap_hybrid", "30_loop_scaling")

# What a preset's workbook passes to the notebooks unless the caller says otherwise ("*": every notebook
# declaring the name). cpu: two one-thread runs at a time, and per notebook the design that answers its
# question at a scale 2 cores afford.
PRESET_PARAMS: dict[str, dict[str, dict[str, Any]]] = {
    "cpu": {"*": {"seeds": [0, 1, 2], "parallel": 2},
            # #1096's regime: its 1,500 steps with the momentum warmup ending at step 1,000; batches of 2,048
            # tokens (16 x 128), so that 16 arms and 4 boundary arms at a second seed take ~2 h on 2 cores.
            "10_lora_rank_divergence": {"design": "regime", "iterations": 1500, "seeds": [0], "boundary_seeds": [1],
                                        "boundary_arms": 4,
                                        "overrides": {"train.batch_tokens": 2048, "train.val_every": 500}},
            # Quantization through loops at 1,000 steps (4 x the quick length), a second data-order seed at L = 3
            # and 6, and the gap against training length at L = 3.
            "20_quant_gap_hybrid": {"design": "loops", "loops": [1, 2, 3, 4, 6], "iterations": 1000, "seeds": [0],
                                    "extra_seed_loops": [3, 6], "length_loops": 3, "lengths": [250, 1000, 4000],
                                    "bits": [8, 6, 4], "probe_bits": [8, 4]},
            # Compute-matched loops at 1M and 4M L1-token-equivalents, 3 data-order seeds (with 2, a t interval
            # has one degree of freedom and reaches 12.7 standard errors on each side).
            "30_loop_scaling": {"design": "budgets", "loops": [1, 2, 3, 4, 6], "seeds": [0, 1, 2],
                                "budgets": [1_000_000, 4_000_000], "flat_control": True, "sampled_loops": 3,
                                "eval_loops_max": 8}},
}


def declared_parameters(name: str) -> set[str]:
    """The names a notebook's `parameters` cell declares."""
    import papermill as pm
    return set(pm.inspect_notebook(str(PROJECT_ROOT / "notebooks" / f"{name}.ipynb")))


# Config fields the notebooks (through runs.sweep) set for every run, and what to use instead.
NOTEBOOK_SET = {"run.seed": "choose seeds with --seeds (the notebooks' `seeds` parameter)",
                "run.name": "the runner names each run by its arm and config",
                "run.out_dir": "runs go to the notebooks' `runs_dir` parameter (--param runs_dir=...)"}


def notebook_parameters(preset: str, notebooks: tuple[str, ...], parameters: dict[str, Any] | None = None
                        ) -> dict[str, dict[str, Any]]:
    """Per notebook, the parameters it receives: the preset's defaults, then `parameters` ("name" for
    every notebook declaring it, "notebook:name" for one). A name no notebook declares is an error
    before anything runs, so a typo never silently runs the defaults for hours."""
    declared = {nb: declared_parameters(nb) for nb in notebooks}
    given = [(key, *key.rpartition(":")[::2], value) for key, value in (parameters or {}).items()]  # key, nb, name
    for key, _, name, value in given:
        if name == "overrides" and isinstance(value, dict):
            if clash := sorted(set(value) & set(NOTEBOOK_SET)):
                raise ValueError(f"overrides {clash}: the notebooks set these themselves for every run, so the "
                                 "override would be recorded and not used; "
                                 + "; ".join(f"{k}: {NOTEBOOK_SET[k]}" for k in clash))
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


def _cell_error(e: Exception) -> str:
    """The failing cell's own exception (papermill keeps its name, value and execution count), whole."""
    ename, evalue = getattr(e, "ename", None), getattr(e, "evalue", None)
    if ename:
        return f"cell [{getattr(e, 'exec_count', '?')}] raised {ename}: {evalue}"
    return f"{type(e).__name__}: {e}"


def run_notebook(name: str, preset: str, results_dir: Path, parameters: dict[str, Any], html: bool = True) -> dict[str, Any]:
    """Execute one notebook into a staging folder; only a successful run moves its notebook, HTML and
    tables into results_dir, so a failure never replaces published results. A failed execution is kept
    as <name>.failed.ipynb beside them, showing the failing cell. What the cells print is echoed to
    this process's stdout and stderr as it comes."""
    import papermill as pm
    src = PROJECT_ROOT / "notebooks" / f"{name}.ipynb"
    stage = results_dir / f".staging-{name}"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    staged = stage / f"{name}.ipynb"
    params = {"preset": preset, "results_dir": project_relative(stage), **parameters}
    t0 = time.time()
    status, error = "ok", None
    out_echo, err_echo = _Echo(sys.stdout), _Echo(sys.stderr)
    # A bar of cells on a terminal only: in a log or a test it would be a line of control characters.
    bar = ({"desc": f"   {name}", "leave": False, "file": sys.stderr, "dynamic_ncols": True,
            "bar_format": "{desc}: cell {n_fmt}/{total_fmt} |{bar:24}| {elapsed}"} if sys.stderr.isatty() else False)
    with tempfile.TemporaryDirectory(prefix="recur-kernel-") as kernel_dir:
        kernel = _kernel_kwargs(Path(kernel_dir))
        try:
            pm.execute_notebook(str(src), str(staged), parameters=params, cwd=str(PROJECT_ROOT / "notebooks"),
                                kernel_name="python3", progress_bar=bar, request_save_on_cell_execute=True,
                                stdout_file=out_echo, stderr_file=err_echo, **kernel)
        except Exception as e:  # PapermillExecutionError, a dead kernel...: recorded, the next notebook runs
            status, error = "failed", _cell_error(e)
        finally:
            _shutdown(kernel.get("km"))
            out_echo.close()
            err_echo.close()
    seconds = round(time.time() - t0, 1)
    out = results_dir / f"{name}.ipynb"
    if status == "ok":
        _publish_paths(staged, stage, results_dir)
        if html:
            subprocess.run([sys.executable, "-m", "nbconvert", "--to", "html", str(staged), "--output-dir", str(stage)],
                           capture_output=True, text=True)
        for f in stage.iterdir():  # notebook, HTML, tables: each replaces its published version whole
            os.replace(f, results_dir / f.name)
        (results_dir / f"{name}.failed.ipynb").unlink(missing_ok=True)
    elif staged.exists():
        out = results_dir / f"{name}.failed.ipynb"
        os.replace(staged, out)
    shutil.rmtree(stage, ignore_errors=True)
    return {"notebook": name, "status": status, "seconds": seconds, "output": project_relative(out), "error": error}


def _publish_paths(notebook: Path, stage: Path, results_dir: Path) -> None:
    """The executed notebook names the staging folder in its parameters: name the published one. Paths
    inside the project (papermill's input and output paths, run folders in displayed tables) become
    project-relative, so a published notebook names no machine's folders."""
    text = re.sub(r"(?<![\w./-])" + re.escape(str(PROJECT_ROOT) + os.sep), "", notebook.read_text())
    notebook.write_text(text.replace(project_relative(stage), project_relative(results_dir)))


class _Echo:
    """Where papermill writes what the notebook's cells print, as they print it: whole lines, indented
    under the notebook's header, written above the cell bar when there is one."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._partial = ""

    def write(self, text: str) -> int:
        from tqdm import tqdm
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            shown = line.rsplit("\r", 1)[-1]  # a line rewritten in place: its last state, as a terminal shows it
            tqdm.write(f"   {shown}", file=self._stream)
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def close(self) -> None:
        if self._partial:
            self.write("\n")


def _kernel_kwargs(folder: Path) -> dict[str, Any]:
    """The kernel talks to papermill over Unix sockets in `folder` rather than TCP on localhost: no port
    another local user could connect to, and no "Kernel is running over TCP without encryption"
    warning from ipykernel on every notebook. Elsewhere (Windows) the default TCP kernel."""
    if os.name != "posix":
        return {}
    from jupyter_client.manager import AsyncKernelManager
    return {"km": AsyncKernelManager(kernel_name="python3", transport="ipc", connection_file=str(folder / "kernel.json"),
                                     ip=str(folder / "kernel"))}


def _shutdown(km: Any) -> None:
    """nbclient leaves a kernel manager it was handed to its owner: without this the kernel lingers
    until it notices its parent is gone, and says so on the terminal."""
    if km is not None and km.has_kernel:
        from jupyter_client.utils import run_sync
        run_sync(km.shutdown_kernel)(now=False)


# The sizes every notebook runs at: the seeds' full-size shapes train on a GPU (`recur train --preset seed-927`).
WORKBOOK_PRESETS = ("smoke", "quick", "cpu")
# Only these presets' results are published (tracked by git, under results/<preset>/); every other
# preset writes under LOCAL_RESULTS, which .gitignore names, so running the workbook changes no
# tracked file.
PUBLISHED_PRESETS = ("cpu",)
LOCAL_RESULTS = "results/local"


def default_results_root(preset: str) -> str:
    """Where a preset's workbook goes when the caller names no folder (relative to the project)."""
    return "results" if preset in PUBLISHED_PRESETS else LOCAL_RESULTS


def run_workbook(preset: str = "quick", notebooks: tuple[str, ...] = NOTEBOOKS, results_root: str | None = None,
                 parameters: dict[str, Any] | None = None, html: bool = True) -> list[dict[str, Any]]:
    """Execute `notebooks` at `preset` into <results_root>/<preset>/ (default: `default_results_root`);
    returns one report per notebook (status, seconds, output, error) and merges it into workbook.json."""
    if preset not in WORKBOOK_PRESETS:
        raise ValueError(f"the workbook runs at {', '.join(WORKBOOK_PRESETS)}, not {preset!r}: its notebooks size "
                         "every arm from these presets. Full-size seed presets train one at a time on a GPU, "
                         "e.g. `recur train --preset seed-927`")
    per_notebook = notebook_parameters(preset, notebooks, parameters)
    results_dir = resolve(results_root or default_results_root(preset)) / preset
    results_dir.mkdir(parents=True, exist_ok=True)
    report = []
    for name in notebooks:
        print(f"== {name} ({preset}) {per_notebook[name]}", flush=True)
        r = run_notebook(name, preset, results_dir, per_notebook[name], html)
        print(f"   {r['status']} in {r['seconds']} s -> {r['output']}" + (f"\n   {r['error']}" if r["error"] else ""),
              flush=True)
        report.append(r)
    # One entry per notebook: its published (successful) execution, and the latest failure if one came after.
    path = results_dir / "workbook.json"
    merged = {r["notebook"]: r for r in (json.loads(path.read_text()) if path.exists() else [])}
    for r in report:
        if r["status"] == "ok":
            merged[r["notebook"]] = r
        else:
            merged[r["notebook"]] = {**merged.get(r["notebook"], {"notebook": r["notebook"], "status": "unpublished"}),
                                     "last_failure": r}
    atomic_write(path, json.dumps([merged[n] for n in NOTEBOOKS if n in merged], indent=2) + "\n")
    return report
