"""Run folders found, listed and compared: the view over many runs, for the shell and for notebooks.

    df = list_runs("runs")                                  # a row per run folder under runs/ (recursive)
    diff, metrics = compare_runs(["runs/a", "runs/b"])      # differing config keys; metrics, a row per run
    plot_runs(["runs/a", "runs/b"])                         # train loss and val bpb by step
    print(format_runs(df)); print(format_compare(diff, metrics))   # what `recur runs ls|compare` print

A run folder is one holding config.json and at least one of summary.json, ckpt.pt or metrics.jsonl
(what `rundir.py` writes; a job killed before its first checkpoint has only the last). Its status is
summary.json's (finished, diverged, interrupted, failed), `running` while a live process holds its
train.lock (read from /proc/locks, so listing never takes the lock a starting trainer needs; Linux
only), and `unfinished` when no summary was written (the process was killed, or is starting).

A config is shown against the preset it is nearest to (fewest differing keys, ties to the earlier
preset; the baseline defaults are `pg-baseline`): its schedule shape and the keys that differ from that
preset, each by its last name unless another group has the same one (`eval.seq_len`).
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from ..config import Config, all_keys
from ..paths import resolve
from ..presets import preset_names
from ..rundir import LOCK_NAME, read_eval, read_json, read_summary
from .runs import eval_row, load_metrics, metric_by_step

RUN_MARKERS = ("summary.json", "ckpt.pt", "metrics.jsonl")
# Where a run lives, not what it is: left out of config differences (the folder names the run).
WHERE = ("run.name", "run.out_dir")
# The columns `recur runs ls` prints, in order.
TABLE_COLUMNS = ("run", "status", "base", "shape", "changes", "steps", "val_bpb", "artifact_bytes", "age")
LIST_COLUMNS = ("run", "status", "base", "shape", "changes", "steps", "val_bpb", "quant_bpb", "artifact_bytes",
                "tokens_per_s", "age", "modified", "name", "path", "changed")
METRIC_ROWS = ("status", "steps", "final_val_bpb", "float_bpb", "quant_bpb", "quant_gap", "artifact_bytes",
               "tokens_per_s", "train_time_s", "reason")
AXIS_LABELS = {"train_loss": "train loss (nats/token)", "val_bpb": "val bpb (bits/byte)", "lr_scale": "lr scale"}

PathLike = str | Path


def as_path(path: PathLike) -> Path:
    """A path as the shell means it when it exists from the current folder, else as the project does
    (relative to the project root, where runs/ lives), so notebooks in notebooks/ find runs/ too."""
    p = Path(path).expanduser()
    return p if p.is_absolute() or p.exists() else resolve(p)


def is_run_dir(path: Path) -> bool:
    return (path / "config.json").is_file() and any((path / m).exists() for m in RUN_MARKERS)


def find_runs(root: PathLike = "runs") -> list[Path]:
    """Every run folder at or under root; nothing inside a run folder is searched (its tensorboard/)."""
    root = as_path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder of runs")
    found = []
    for here, dirs, _ in os.walk(root):
        if is_run_dir(Path(here)):
            found.append(Path(here))
            dirs[:] = []
        else:
            dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")))
    return found


def find_run(ref: PathLike, root: PathLike = "runs") -> Path:
    """A run folder from its path, or from its folder name (or the start of it) under root."""
    p = as_path(ref)
    if p.is_dir():
        if not is_run_dir(p):
            raise FileNotFoundError(f"{p}: not a run folder (it needs config.json and one of {', '.join(RUN_MARKERS)})")
        return p
    name = Path(ref).name
    hits = [r for r in find_runs(root) if r.name.startswith(name)] if as_path(root).is_dir() else []
    exact = [r for r in hits if r.name == name]
    if len(exact) == 1 or len(hits) == 1:
        return (exact or hits)[0]
    if not hits:
        raise FileNotFoundError(f"{ref}: no such run folder, and no run under {as_path(root)} is named so")
    raise FileNotFoundError(f"{ref}: {len(hits)} runs under {as_path(root)} start so: "
                            + ", ".join(r.name for r in hits[:8]) + ("..." if len(hits) > 8 else ""))


def _lock_held(lock: Path) -> bool:
    """Whether a process holds the trainer's flock on `lock`, as /proc/locks lists it (by device and
    inode); False where there is no /proc/locks."""
    try:
        st = lock.stat()
        table = Path("/proc/locks").read_text()
    except OSError:
        return False
    want = (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
    for m in re.finditer(r"\bFLOCK\b.*?\s([0-9a-f]+):([0-9a-f]+):(\d+)\s", table):
        if (int(m.group(1), 16), int(m.group(2), 16), int(m.group(3))) == want:
            return True
    return False


def run_status(run_dir: PathLike) -> str:
    run_dir = Path(run_dir)
    if _lock_held(run_dir / LOCK_NAME):
        return "running"  # before summary.json: a resumed run still has its last summary
    summary = read_summary(run_dir)
    return str(summary.get("status", "unfinished")) if summary else "unfinished"


def _last_step(run_dir: Path) -> int | None:
    """The step of metrics.jsonl's last whole record, read from the end of the file."""
    path = run_dir / "metrics.jsonl"
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - (1 << 16)))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a torn last line, or the cut first one
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            return rec["step"]
    return None


def _steps(run_dir: Path, status: str, summary: dict[str, Any]) -> int | None:
    """Steps trained: the summary's, unless a process trains there now (its summary is a past one) or
    none was written."""
    steps = summary.get("steps") if status != "running" else None
    return steps if steps is not None else _last_step(run_dir)


def _flat(cfg: Any) -> dict[str, Any]:
    """A config (as config.json holds it) as dotted keys, values as JSON gives them back (lists)."""
    if not isinstance(cfg, dict):
        return {}
    return {f"{g}.{k}": json.loads(json.dumps(v)) for g, sub in cfg.items() if isinstance(sub, dict)
            for k, v in sub.items()}


def run_config(run_dir: PathLike) -> dict[str, Any]:
    """The run's config as dotted keys: config.json, else the copy in summary.json ({} when neither).
    Keys an older config lacks take the baseline defaults, as Config.load gives them."""
    run_dir = Path(run_dir)
    saved = read_json(run_dir / "config.json")
    if not isinstance(saved, dict):
        saved = (read_summary(run_dir) or {}).get("config")
    flat = _flat(saved)
    return {**_preset_configs()["pg-baseline"], **flat} if flat else {}


@lru_cache(maxsize=1)
def _preset_configs() -> dict[str, dict[str, Any]]:
    return {name: _flat(Config.from_name(name).to_dict()) for name in preset_names()}


def _differences(flat: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    return {k: flat.get(k) for k in sorted(set(flat) | set(base), key=_key_order)
            if k not in WHERE and flat.get(k) != base.get(k)}


@lru_cache(maxsize=1)
def _key_positions() -> dict[str, int]:
    return {k: i for i, k in enumerate(all_keys())}


def _key_order(key: str) -> tuple[int, str]:
    return _key_positions().get(key, len(_key_positions())), key


def nearest_preset(flat: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(preset name, the keys where the config differs from it) for the preset it differs least from."""
    best: tuple[str, dict[str, Any]] | None = None
    for name, base in _preset_configs().items():
        diff = _differences(flat, base)
        if best is None or len(diff) < len(best[1]):
            best = (name, diff)
    assert best is not None
    return best


@lru_cache(maxsize=1)
def _shared_leaves() -> frozenset[str]:
    leaves = [k.split(".", 1)[1] for k in all_keys()]
    return frozenset(x for x in leaves if leaves.count(x) > 1)


def short_key(key: str) -> str:
    leaf = key.split(".", 1)[-1]
    return key if leaf in _shared_leaves() else leaf


def short_value(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(short_value(v) for v in value) or "()"
    if isinstance(value, str) and "/" in value:
        return Path(value).name or value  # a data path: its last part names it
    return "-" if value is None else str(value)


def shape(flat: dict[str, Any]) -> str:
    """The schedule as `kind` and its counts, with the width: hybrid 1+4x3+1 d640, looped 4x7 d1024."""
    c = {**_preset_configs()["pg-baseline"], **flat}
    kind = c["schedule.kind"]
    if kind == "looped":
        s = f"{c['schedule.n_core']}x{c['schedule.n_loops']}"
    elif kind == "hybrid":
        s = f"{c['schedule.n_prelude']}+{c['schedule.n_core']}x{c['schedule.n_loops']}+{c['schedule.n_coda']}"
    elif kind == "repeat" and c["schedule.repeat_layers"]:
        seg = c["schedule.repeat_layers"]
        s = f"{c['schedule.n_layers']} ({seg[0]}-{seg[-1]})x{c['schedule.n_loops']}"
    else:
        s = str(c["schedule.n_layers"])
    return f"{kind} {s} d{c['model.dim']}"


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"


def _eval_numbers(run_dir: Path) -> dict[str, Any]:
    ev = read_eval(run_dir)
    try:
        return eval_row(ev) if ev else {}
    except (KeyError, TypeError):  # an eval.json of another format: its numbers are not shown
        return {}


def run_row(run_dir: PathLike, root: Path | None = None) -> dict[str, Any]:
    """One run folder as a table row (what list_runs returns a row of)."""
    run_dir = Path(run_dir)
    summary = read_summary(run_dir) or {}
    status = run_status(run_dir)
    flat = run_config(run_dir)
    base, changed = nearest_preset(flat) if flat else ("?", {})
    stamps = [p.stat().st_mtime for p in (run_dir / n for n in (*RUN_MARKERS, "eval.json", "train.log", "config.json"))
              if p.exists()]
    modified = max(stamps)
    ev = _eval_numbers(run_dir)
    return {
        "run": run_dir.relative_to(root).as_posix() if root is not None and run_dir != root else run_dir.name,
        "name": flat.get("run.name"), "status": status, "base": base, "shape": shape(flat) if flat else "?",
        "changes": " ".join(f"{short_key(k)}={short_value(v)}" for k, v in changed.items()),
        "steps": _steps(run_dir, status, summary), "val_bpb": summary.get("final_val_bpb") if status != "running" else None,
        "quant_bpb": ev.get("quant_bpb"), "artifact_bytes": ev.get("artifact_bytes"),
        "tokens_per_s": summary.get("tokens_per_s"), "age": _age(time.time() - modified),
        "modified": pd.Timestamp(modified, unit="s"), "path": str(run_dir), "changed": changed,
    }


def list_runs(root: PathLike | Sequence[PathLike] = "runs", sort: str = "time") -> pd.DataFrame:
    """A row per run folder under root (or each of several roots), sorted by `sort`: time (oldest
    first), val_bpb (best first) or run. Columns: run, name, status, base (the nearest preset), shape,
    changes (from base), steps, val_bpb, quant_bpb, artifact_bytes (eval.json), tokens_per_s, age,
    modified, path, changed (the differing keys as a dict)."""
    roots = [as_path(r) for r in ([root] if isinstance(root, (str, Path)) else root)]
    rows = []
    for r in roots:
        for run_dir in find_runs(r):
            row = run_row(run_dir, r)
            if len(roots) > 1:
                row["run"] = f"{r.name}/{row['run']}"
            rows.append(row)
    df = pd.DataFrame(rows, columns=LIST_COLUMNS)
    by = {"time": ["modified"], "val_bpb": ["val_bpb", "modified"], "run": ["run"]}.get(sort)
    if by is None:
        raise ValueError(f"sort={sort!r}: one of time, val_bpb, run")
    return df.sort_values(by, na_position="last", kind="stable").reset_index(drop=True)


def run_labels(paths: Sequence[Path]) -> list[str]:
    """Column labels for runs: the folder names, with their parent's name where two are the same."""
    names = [p.name for p in paths]
    labels = [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]
    return [f"{lab}#{i}" if labels.count(lab) > 1 else lab for i, lab in enumerate(labels)]


def compare_runs(paths: Sequence[PathLike], root: PathLike = "runs") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(config_diff, metrics) for runs given by path or folder name. config_diff: a row per dotted key
    whose value differs between the runs (run.name and run.out_dir left out), a column per run.
    metrics: a row per run with status, steps, final_val_bpb, float_bpb / quant_bpb / quant_gap /
    artifact_bytes (eval.json), tokens_per_s, train_time_s, reason (why it stopped, or its error)."""
    dirs = [find_run(p, root) for p in paths]
    labels = run_labels(dirs)
    flats = [run_config(d) for d in dirs]
    keys = sorted({k for f in flats for k in f} - set(WHERE), key=_key_order)
    differing = [k for k in keys if any(f.get(k) != flats[0].get(k) for f in flats[1:])]
    diff = pd.DataFrame({lab: [f.get(k) for k in differing] for lab, f in zip(labels, flats)},
                        index=pd.Index(differing, name="key"), dtype=object)
    rows = []
    for d in dirs:
        s = read_summary(d) or {}
        ev = _eval_numbers(d)
        status = run_status(d)
        rows.append({"status": status, "steps": _steps(d, status, s),
                     "final_val_bpb": s.get("final_val_bpb") if status != "running" else None, "float_bpb": ev.get("float_bpb"),
                     "quant_bpb": ev.get("quant_bpb"), "quant_gap": ev.get("quant_gap"),
                     "artifact_bytes": ev.get("artifact_bytes"), "tokens_per_s": s.get("tokens_per_s"),
                     "train_time_s": s.get("train_time_s"), "reason": s.get("error") or s.get("reason"),
                     "path": str(d)})
    metrics = pd.DataFrame(rows, index=pd.Index(labels, name="run"))
    return diff, metrics


def plot_runs(paths: Sequence[PathLike], ax: Any = None, metrics: Sequence[str] = ("train_loss", "val_bpb"),
              root: PathLike = "runs") -> list[Any]:
    """Curves by step from each run's metrics.jsonl, one axes per metric (default: train loss and val
    bpb; the val curve ends with the final evaluation of the weights the run keeps), a colour per run.
    ax: None (a new figure), or one axes per metric. Returns the axes."""
    import matplotlib.pyplot as plt

    dirs = [find_run(p, root) for p in paths]
    if ax is None:
        fig, grid = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
        axes = list(grid[0])
    else:
        axes = list(ax) if isinstance(ax, Iterable) else [ax]
        if len(axes) != len(metrics):
            raise ValueError(f"plot_runs: {len(axes)} axes for {len(metrics)} metrics {list(metrics)}")
    for i, (d, label) in enumerate(zip(dirs, run_labels(dirs))):
        table = load_metrics(d)
        for a, metric in zip(axes, metrics):
            curve = metric_by_step(table, metric)
            if curve is None:
                continue
            a.plot(curve.index, curve.to_numpy(), color=f"C{i % 10}", label=label, lw=1.2,
                   marker="o" if len(curve) <= 50 else None, ms=3)
    for a, metric in zip(axes, metrics):
        a.set_xlabel("step")
        a.set_ylabel(AXIS_LABELS.get(metric, metric))
        a.set_title(metric)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8)
    return axes


def _text_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: set[int] | None = None) -> str:
    right = right or set()
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    out = []
    for row in [header, *rows]:
        cells = [str(x).rjust(w) if i in right else str(x).ljust(w) for i, (x, w) in enumerate(zip(row, widths))]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def _cell(value: Any, column: str) -> str:
    """A value as a table prints it; column "config" is a config value (short_value's form)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if column == "config":
        return short_value(value)
    if isinstance(value, str):
        return value if len(value) <= 60 else value[:57] + "..."
    if column in ("artifact_bytes", "tokens_per_s", "steps"):
        return f"{value:,.0f}"
    if column == "quant_gap":
        return f"{value:+.4f}"
    if column == "train_time_s":
        return f"{value:,.1f}"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def format_runs(df: pd.DataFrame, width: int | None = 60) -> str:
    """list_runs' table as `recur runs ls` prints it; `changes` cut to `width` characters (None: whole)."""
    if df.empty:
        return "no run folders"
    rows = []
    for _, r in df.iterrows():
        changes = r["changes"] if width is None or len(r["changes"]) <= width else r["changes"][: width - 3] + "..."
        rows.append([_cell(r[c], c) if c != "changes" else (changes or "-") for c in TABLE_COLUMNS])
    header = [c if c != "artifact_bytes" else "artifact" for c in TABLE_COLUMNS]
    return _text_table(header, rows, right={TABLE_COLUMNS.index(c) for c in ("steps", "val_bpb", "artifact_bytes", "age")})


def format_compare(diff: pd.DataFrame, metrics: pd.DataFrame) -> str:
    """compare_runs' two tables as `recur runs compare` prints them, the runs side by side."""
    labels = list(metrics.index)
    if diff.empty:
        config = "config: the same in every key (apart from where the runs live)"
    else:
        config = "config (keys that differ)\n" + _text_table(
            ["key", *labels], [[k, *(_cell(v, "config") for v in diff.loc[k])] for k in diff.index])
    shown = [m for m in METRIC_ROWS if m in metrics and metrics[m].notna().any()]
    table = _text_table(["metric", *labels], [[m, *(_cell(v, m) for v in metrics[m])] for m in shown],
                        right=set(range(1, len(labels) + 1)))
    return f"{config}\n\nmetrics\n{table}"
