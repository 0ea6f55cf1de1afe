"""A Parameter Golf records folder from a configuration and its runs (`recur submit`).

The challenge scores one self-contained `train_gpt.py` per submission: its bytes count against the
16,000,000-byte budget beside the compressed model. We generate that file from recur_lib itself:
the modules that training, export and evaluation import (found by reading their import statements,
function-level ones included) are embedded verbatim, each under its own module name, and a small
importer serves them from the file. So the script computes exactly what `recur train` + `recur eval`
compute, bitwise (tested), rather than being a second implementation to keep in step; it imports
nothing from an installed recur_lib, and outside the standard library only torch, numpy,
sentencepiece and zstandard. `strip=True` embeds each module without comments and docstrings (the
code re-printed by `ast.unparse`: the same statements, fewer bytes).

The folder: train_gpt.py, submission.json (the challenge's fields, filled from the given runs),
README.md (the config's describe(), the seed table and the results), requirements.txt and each run's
training log as train_seed<N>.log.
"""
from __future__ import annotations

import ast
import json
import math
import shutil
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config
from .version import __version__

PACKAGE = Path(__file__).resolve().parent
# What the script calls: training, then export + reload + evaluation of the artifact.
ENTRY_MODULES = ("train", "evaluate", "export")
BUNDLE = "recur_bundle"  # the embedded package's name, so it can never be mistaken for an installed recur_lib
ALLOWED_IMPORTS = frozenset({"torch", "numpy", "sentencepiece", "zstandard"})
BUDGET_BYTES = 16_000_000


class SubmitError(ValueError):
    """A records folder that cannot be written as asked (over budget, a run that is not finished...)."""


def _module_file(name: str) -> Path:
    p = PACKAGE.joinpath(*name.split(".")) if name else PACKAGE
    return p.with_suffix(".py") if p.with_suffix(".py").is_file() else p / "__init__.py"


def _imports(name: str) -> tuple[set[str], set[str]]:
    """recur_lib modules and top-level outside packages that module `name` imports anywhere in it."""
    f = _module_file(name)
    pkg = name.split(".") if f.name == "__init__.py" else name.split(".")[:-1]
    pkg = [p for p in pkg if p]
    inner, outer = set(), set()
    for node in ast.walk(ast.parse(f.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = pkg[: len(pkg) - node.level + 1] + (node.module.split(".") if node.module else [])
            for alias in node.names:
                sub = ".".join(base + [alias.name])
                inner.add(sub if _module_file(sub).is_file() and sub != ".".join(base) else ".".join(base))
        elif isinstance(node, ast.ImportFrom):
            outer.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            outer.update(a.name.split(".")[0] for a in node.names)
    parts = name.split(".") if name else []
    inner.update(".".join(parts[:i]) for i in range(len(parts)))  # a module's packages load before it
    return inner, outer - {"__future__"}


def bundled_modules(entries: tuple[str, ...] = ENTRY_MODULES) -> dict[str, str]:
    """Module name (relative to the package, "" for the package itself) -> source, for every module the
    entries import transitively; in a stable order (packages before their modules)."""
    seen: set[str] = set()
    todo = list(entries) + [""]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(_imports(m)[0] - seen)
    return {m: _module_file(m).read_text() for m in sorted(seen, key=lambda m: (m.count("."), m))}


def outside_imports(modules: dict[str, str]) -> set[str]:
    """Top-level packages outside the standard library that the bundled modules import."""
    return {o for m in modules for o in _imports(m)[1]} - set(sys.stdlib_module_names)


def strip_source(src: str) -> str:
    """The module without comments and docstrings: its AST re-printed, docstrings removed."""
    tree = ast.parse(src)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree) + "\n"


_LOADER = '''
class _Bundle(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the modules embedded in this file under the package name BUNDLE."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != BUNDLE and not fullname.startswith(BUNDLE + "."):
            return None
        name = fullname[len(BUNDLE) + 1:]
        if name not in MODULES:
            return None
        package = name == "" or any(m.startswith(name + ".") for m in MODULES)
        spec = importlib.machinery.ModuleSpec(fullname, self, is_package=package)
        spec.origin = str(HERE / BUNDLE / (name.replace(".", "/") + ("/__init__.py" if package else ".py")))
        spec.has_location = True
        return spec

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        name = module.__name__[len(BUNDLE) + 1:]
        module.__file__ = module.__spec__.origin
        code = compile(MODULES[name], f"{__file__}:{module.__name__}", "exec", dont_inherit=True)
        exec(code, module.__dict__)


sys.meta_path.insert(0, _Bundle())
'''

_MAIN = '''
def _env_config():
    """The baked-in configuration with the challenge's environment overrides."""
    config = import_module(BUNDLE + ".config")
    env = os.environ
    over = {}
    if env.get("DATA_PATH"):
        over["data.root"] = os.path.abspath(env["DATA_PATH"])
        if not os.path.exists(os.path.join(env["DATA_PATH"], "manifest.json")):
            over["data.trust_unmanifested"] = True  # official shards: the tokenizer is checked by re-encoding
    if env.get("TOKENIZER_PATH"):
        over["data.tokenizer"] = os.path.abspath(env["TOKENIZER_PATH"])
    if env.get("SEED"):
        over["run.seed"] = int(env["SEED"])
    if env.get("MAX_WALLCLOCK_SECONDS"):
        over["train.max_wallclock_s"] = float(env["MAX_WALLCLOCK_SECONDS"])
    if env.get("ITERATIONS"):
        over["train.iterations"] = int(env["ITERATIONS"])
    over["run.nproc"] = int(env.get("WORLD_SIZE", "1"))
    return config.Config.from_dict(CONFIG).override(over)


def main():
    cfg = _env_config()
    train = import_module(BUNDLE + ".train")
    export = import_module(BUNDLE + ".export")
    evaluate = import_module(BUNDLE + ".evaluate")
    device = import_module(BUNDLE + ".device")
    export.code_bytes = lambda: os.path.getsize(__file__)  # the code of this submission is this file
    train._progress = lambda *a, **k: None  # plain log lines, never a progress bar
    run_id = os.environ.get("RUN_ID") or f"seed{cfg.run.seed}"
    run_dir = os.path.join("runs", run_id)
    main_rank = os.environ.get("RANK", "0") == "0"
    scored = False
    try:
        result = train.train(cfg, run_dir)
        if result.status != "finished":
            raise SystemExit(f"training ended {result.status}; no artifact was scored")
        out = evaluate.evaluate_run(run_dir, cfg)
        scored = True
    finally:
        device.teardown(barrier=scored)
    if main_rank:
        a, q = out["artifact"], out["quantized"]
        final = q.get("ttt") or q.get("sliding") or q["plain"]
        tag = f"int{cfg.quant.export_bits}_zstd"
        print(f"Code size: {a['code_bytes']} bytes")
        print(f"Serialized model {tag}: {a['model_bytes']} bytes")
        print(f"Total submission size {tag}: {a['total_bytes']} bytes")
        print(f"pre_quant val_loss:{out['float']['plain']['val_loss']:.8f} val_bpb:{out['float']['plain']['val_bpb']:.8f}")
        for kind in ("plain", "sliding", "ttt"):
            if kind in q:
                print(f"final_{tag}_roundtrip_{kind} val_loss:{q[kind]['val_loss']:.8f} val_bpb:{q[kind]['val_bpb']:.8f} "
                      f"eval_time:{q[kind]['seconds'] * 1000:.0f}ms")
        print(f"final_{tag}_roundtrip_exact val_loss:{final['val_loss']:.8f} val_bpb:{final['val_bpb']:.8f}")


if __name__ == "__main__":
    main()
'''


def describe(cfg: Config) -> str:
    """The model's `describe()`, built on the meta device (shapes and counts only): a full-size preset
    costs no memory. `recur model describe` prints it; the records folder's header and README quote it."""
    import torch

    from .model import build_model
    with torch.device("meta"):
        return build_model(cfg).describe()


def _shape(description: str) -> str:
    """The schedule line of a description: "hybrid: P0 | 1 2 | C3"."""
    return description.splitlines()[0].split(None, 1)[1]


def render_script(cfg: Config, strip: bool = False, description: str | None = None) -> str:
    """The self-contained train_gpt.py for `cfg`: header, configuration, embedded modules, importer, main."""
    modules = bundled_modules()
    outside = outside_imports(modules) - {"tqdm"}  # tqdm: only for a terminal's progress bar, switched off below
    if not outside <= ALLOWED_IMPORTS:
        raise SubmitError(f"the bundled modules import {sorted(outside - ALLOWED_IMPORTS)}, outside what a "
                          f"submission may use ({', '.join(sorted(ALLOWED_IMPORTS))} and the standard library)")
    if strip:
        modules = {m: strip_source(s) for m, s in modules.items()}
    # where the run that tested it lived is no part of the submission (the script's run folder is runs/$RUN_ID)
    cfg = cfg.override({"run.name": "run", "run.out_dir": "runs"})
    shape = _shape(description or describe(cfg))
    head = (f'"""Parameter Golf submission: a recur-golf model, d {cfg.model.dim}, schedule {shape}.\n'
            f"Generated by recur-golf {__version__} (`recur submit`) from recur_lib's own modules, embedded below.\n"
            "Run: torchrun --standalone --nproc_per_node=8 train_gpt.py\n"
            "Environment: DATA_PATH, TOKENIZER_PATH, SEED, RUN_ID, MAX_WALLCLOCK_SECONDS (and ITERATIONS).\n"
            '"""\n')
    body = ["import importlib.abc", "import importlib.machinery", "import json", "import os", "import sys",
            "from importlib import import_module", "from pathlib import Path", "",
            f"BUNDLE = {BUNDLE!r}", "HERE = Path(__file__).resolve().parent",
            f"CONFIG = json.loads({_literal(json.dumps(cfg.to_dict(), indent=1))})", "", "MODULES = {}"]
    for name, src in modules.items():
        body.append(f"MODULES[{name!r}] = {_literal(src)}")
    return head + "\n".join(body) + "\n" + _LOADER + _MAIN


def _literal(src: str) -> str:
    """A Python literal for the source text: a raw triple-quoted string where it can be one, else repr."""
    if "'''" not in src and not src.endswith("\\") and "\\\n" not in src and "\r" not in src:
        return "r'''" + src + "'''"
    return repr(src)


@dataclass
class Budget:
    code_bytes: int
    model_bytes: int
    budget_bytes: int = BUDGET_BYTES

    @property
    def total_bytes(self) -> int:
        return self.code_bytes + self.model_bytes

    @property
    def over_by(self) -> int:
        return self.total_bytes - self.budget_bytes

    def check(self) -> None:
        if self.over_by > 0:
            raise SubmitError(
                f"code {self.code_bytes:,} + model {self.model_bytes:,} = {self.total_bytes:,} bytes, over the "
                f"{self.budget_bytes:,}-byte budget by {self.over_by:,}: the model alone is "
                f"{self.model_bytes / self.budget_bytes:.1%} of it and the code {self.code_bytes / self.budget_bytes:.1%}. "
                "Try --strip for the code; for the model lower quant.export_bits or model.dim. Nothing was written.")


def estimate_model_bytes(cfg: Config) -> int:
    """The compressed model of `cfg` at random init (trained weights compress differently: an estimate)."""
    import torch

    from .export import export_artifact
    from .model import build_model
    torch.manual_seed(cfg.run.seed)
    return export_artifact(build_model(cfg), cfg, None, report_only=True).model_bytes


def _run_results(run_dirs: list[Path], cfg: Config) -> list[dict[str, Any]]:
    """Per run: seed, scores and bytes from its eval.json; every run must be a finished, evaluated run
    of this configuration (up to its seed and data paths)."""
    out = []
    for rd in run_dirs:
        ev_path, summ_path = rd / "eval.json", rd / "summary.json"
        if not ev_path.is_file() or not summ_path.is_file():
            raise SubmitError(f"{rd}: not an evaluated run (no eval.json / summary.json); `recur eval {rd}` first")
        summ, ev = json.loads(summ_path.read_text()), json.loads(ev_path.read_text())
        if summ.get("status") != "finished":
            raise SubmitError(f"{rd}: the run is {summ.get('status')}, not finished")
        run_cfg = Config.from_dict(ev["config"])
        differs = [k for k in cfg.diff(run_cfg) if not k.startswith(("run.seed", "run.name", "run.out_dir", "data.",
                                                                        "run.nproc"))]
        if differs:
            raise SubmitError(f"{rd}: its config differs from the submission's in {differs}")
        q = ev["quantized"]
        final = q.get("ttt") or q.get("sliding") or q["plain"]
        out.append({"run_dir": rd, "seed": run_cfg.run.seed, "val_bpb": final["val_bpb"], "val_loss": final["val_loss"],
                    "pre_quant_val_bpb": ev["float"]["plain"]["val_bpb"], "model_bytes": ev["artifact"]["model_bytes"],
                    "steps": summ.get("steps"), "train_seconds": summ.get("train_seconds")})
    return out


def write_submission(cfg: Config, out: str | Path, runs: list[str | Path] = (), strip: bool = False,
                     name: str = "", author: str = "", github_id: str = "", overwrite: bool = False) -> dict[str, Any]:
    """Write the records folder for `cfg` (and its runs, if any) into `out`; returns submission.json.
    Refuses, writing nothing, when code + model exceed the budget (the model: the largest run's
    artifact, else an estimate at random init) or when `out` exists and is not empty (unless overwrite)."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise SubmitError(f"{out} exists and is not empty; choose another --out or pass --overwrite")
    description = describe(cfg)
    script = render_script(cfg, strip, description)
    full = render_script(cfg, False, description) if strip else script
    results = _run_results([Path(r) for r in runs], cfg)
    model_bytes = max((r["model_bytes"] for r in results), default=None) or estimate_model_bytes(cfg)
    budget = Budget(len(script.encode()), model_bytes)
    budget.check()
    stage = out.with_name(f".{out.name}.partial")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    (stage / "train_gpt.py").write_text(script)
    (stage / "requirements.txt").write_text("torch\nnumpy\nsentencepiece\nzstandard\n")
    bpbs = [r["val_bpb"] for r in results]
    sub: dict[str, Any] = {
        "author": author, "github_id": github_id, "name": name or f"recur-golf {cfg.schedule.kind}",
        "blurb": f"d {cfg.model.dim}, {_shape(description)}", "date": __import__("datetime").date.today().isoformat(),
        "track": "10min_16mb", "val_bpb": statistics.mean(bpbs) if bpbs else None,
        "val_bpb_std": statistics.stdev(bpbs) if len(bpbs) > 1 else None,
        "val_loss": statistics.mean(r["val_loss"] for r in results) if results else None,
        "seeds": [r["seed"] for r in results],
        "seed_results": {str(r["seed"]): {"val_bpb": r["val_bpb"], "val_loss": r["val_loss"],
                                          "pre_quant_val_bpb": r["pre_quant_val_bpb"],
                                          "artifact_bytes": r["model_bytes"] + budget.code_bytes, "steps": r["steps"]}
                         for r in results},
        "bytes_code": budget.code_bytes, "bytes_model": model_bytes, "bytes_total": budget.total_bytes,
        "bytes_model_estimated": not results, "bytes_code_stripped_saved": len(full.encode()) - len(script.encode()),
        "generated_by": f"recur-golf {__version__}",
    }
    (stage / "submission.json").write_text(json.dumps(sub, indent=2) + "\n")
    for r in results:
        log = r["run_dir"] / "train.log"
        if log.is_file():
            shutil.copyfile(log, stage / f"train_seed{r['seed']}.log")
    (stage / "README.md").write_text(_readme(description, sub, results))
    if out.exists():
        shutil.rmtree(out)
    stage.rename(out)
    return sub


def _readme(description: str, sub: dict[str, Any], results: list[dict[str, Any]]) -> str:
    lines = [f"# {sub['name']}", "", "Generated by `recur submit` (recur-golf). Reproduce one seed:", "",
             "```bash", "SEED=1337 RUN_ID=seed1337 DATA_PATH=./data/datasets/fineweb10B_sp1024 \\",
             "  TOKENIZER_PATH=./data/tokenizers/fineweb_1024_bpe.model \\",
             "  torchrun --standalone --nproc_per_node=8 train_gpt.py", "```", "", "## Model", "", "```",
             description, "```", "",
             f"## Bytes", "", f"| part | bytes |", "|---|---:|", f"| code (train_gpt.py) | {sub['bytes_code']:,} |",
             f"| model ({'estimate at random init' if sub['bytes_model_estimated'] else 'largest run'}) | {sub['bytes_model']:,} |",
             f"| total (budget {BUDGET_BYTES:,}) | {sub['bytes_total']:,} |", ""]
    if results:
        lines += ["## Results", "", "| seed | val_bpb (scored) | pre-quant val_bpb | steps | artifact bytes |",
                  "|---:|---:|---:|---:|---:|"]
        for r in results:
            lines.append(f"| {r['seed']} | {r['val_bpb']:.4f} | {r['pre_quant_val_bpb']:.4f} | {r['steps']} | "
                         f"{r['model_bytes'] + sub['bytes_code']:,} |")
        std = f" ± {sub['val_bpb_std']:.4f} (std)" if sub["val_bpb_std"] is not None else ""
        lines += ["", f"Mean over {len(results)} seed(s): {sub['val_bpb']:.4f}{std}.", ""]
    else:
        lines += ["No runs were given: no results, and the model's bytes are an estimate.", ""]
    return "\n".join(lines)
