"""recur_lib: depth-recurrent transformers under the Parameter Golf rules.

What a researcher calls, from a notebook or a shell:

    from recur_lib import Config, launch, sweep, ablations, plots
    cfg = Config.from_name("quick", model__dim=128)
    print(build_model(cfg).describe())
    rec = launch(cfg)                                        # train + evaluate in a run folder
    df = sweep(cfg, {"schedule.n_loops": [1, 2, 4]}, seeds=[0, 1, 2])
    runs = list_runs("runs")                                 # every run folder: status, config, bpb, age
    diff, metrics = compare_runs(runs["path"].tail(2))       # config differences, metrics side by side

The layers, bottom up: `config`/`presets`; `data` (shards, tokenizer, loader, bpb) and `model`;
`optim`, `quant`, `export`, `evaluate`; `train` and `rundir`; `lab` (runs, ablations, plots, workbook:
what notebooks import); `cli`. The notebook layer loads on first use, so a training job never
imports pandas or matplotlib.
"""
from importlib import import_module
from typing import Any

from .config import Config, ConfigError
from .data import open_data
from .model import build_model
from .presets import PRESETS, preset_names
from .version import __version__

# name -> (module, attribute or None for the module itself), imported on first access
_LAB = {
    "runs": ("recur_lib.lab.runs", None), "ablations": ("recur_lib.lab.ablations", None),
    "plots": ("recur_lib.lab.plots", None), "workbook": ("recur_lib.lab.workbook", None),
    "stats": ("recur_lib.lab.stats", None), "probes": ("recur_lib.lab.probes", None),
    "launch": ("recur_lib.lab.runs", "launch"), "sweep": ("recur_lib.lab.runs", "sweep"),
    "Arm": ("recur_lib.lab.runs", "Arm"), "runlist": ("recur_lib.lab.runlist", None),
    "list_runs": ("recur_lib.lab.runlist", "list_runs"), "compare_runs": ("recur_lib.lab.runlist", "compare_runs"),
    "plot_runs": ("recur_lib.lab.runlist", "plot_runs"),
}

__all__ = ["__version__", "Config", "ConfigError", "PRESETS", "preset_names", "build_model", "open_data", *_LAB]


def __getattr__(name: str) -> Any:
    if name not in _LAB:
        raise AttributeError(f"module 'recur_lib' has no attribute {name!r}")
    module, attr = _LAB[name]
    value = import_module(module)
    return value if attr is None else getattr(value, attr)
