"""`recur` command line: every parser and command of the project.

    recur data build                         # the default corpus -> data/default/ (make data)
    recur data audit --preset quick
    recur config show --preset seed-927 --set model.dim=768
    recur model describe --preset seed-1096
    recur train --preset quick --set train.iterations=20                  # -> runs/quick-<id>/
    recur eval --preset quick --set train.iterations=20 --set eval.stride=64   # that run, evaluated
    recur config show --preset quick --set train.iterations=20 --json > cfg.json
    torchrun --nproc_per_node 2 -m recur_lib.cli train --config cfg.json  # one job, 2 processes -> runs/cfg-<id>/
    recur workbook --preset quick            # the notebooks -> results/local/quick/ (make workbook)

A run's folder is <run.out_dir>/<preset, or --config file name>-<id>, where the id hashes the config
and the code that computes it (as the notebooks' runner names its runs): another config trains in
another folder, and `recur eval` with the same --preset/--config/--set finds the run. `--set
run.name=NAME` (runs/NAME) or `--run-dir DIR` choose the folder instead.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import Config, ConfigError, describe_fields
from .presets import FOLLOWS, preset_names


def parse_sets(items: list[str] | None) -> dict[str, str]:
    """--set key=value items as a dict of overrides (values parsed later, by the field's type)."""
    overrides = {}
    for item in items or []:
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set model.dim=256")
        overrides[key.strip()] = value
    return overrides


def config_from_args(args: argparse.Namespace) -> Config:
    strict = getattr(args, "strict_config", False)
    base = Config.load(args.config, strict=strict) if args.config else Config.from_name(args.preset)
    return base.override(parse_sets(args.set))


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="quick", choices=preset_names(), help="named preset (default: quick)")
    p.add_argument("--config", help="a config JSON file (instead of --preset); fields it leaves out take the "
                   "baseline defaults, with a warning naming them")
    p.add_argument("--strict-config", action="store_true", help="refuse a --config file that leaves fields out")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field, e.g. model.dim=256")


def add_train_args(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument("--run-dir", help="run folder (default: run.out_dir/run.name)")
    p.add_argument("--resume", action="store_true", help="continue the run in the folder from its checkpoint")
    p.add_argument("--force", action="store_true", help="move an existing run aside and train again")
    p.add_argument("--reuse", action="store_true",
                   help="a finished run in the folder is reported instead of retrained; an unfinished one resumes")


def _default_run(cfg: Config, args: argparse.Namespace) -> tuple[Config, Path]:
    """The run folder of a command given no --run-dir: run.name when the config sets one, else
    `<preset or config file name>-<id>` with the runner's content address (config + code version), so
    every config trains in a folder of its own and the same arguments find it again. The name goes into
    the config, so the run's config.json says where it lives."""
    from .rundir import run_dir_for
    if cfg.run.name == Config().run.name:
        from .lab.runs import run_id
        cfg = cfg.override({"run.name": f"{_run_prefix(args)}-{run_id(cfg)}"})
    return cfg, run_dir_for(cfg)


def _run_prefix(args: argparse.Namespace) -> str:
    return Path(args.config).stem if args.config else args.preset


def _find_run(cfg: Config, args: argparse.Namespace) -> tuple[Config, Path]:
    """`recur eval` without RUN_DIR: the folder `recur train` with the same arguments used. Settings that
    only evaluation reads (--set eval.stride=64, quant.export_bits=6) change the id, so failing the
    exact folder, the one run under the same name prefix, trained by this code, whose config differs
    from this one only in eval and quant settings."""
    import re
    import warnings

    from .lab.runs import run_id
    named, run_dir = _default_run(cfg, args)
    if cfg.run.name != Config().run.name or run_dir.exists():
        return named, run_dir  # a name the config gives, or the exact folder

    def trained(c: Config) -> dict:
        d = c.to_dict()
        for group in ("eval", "quant"):
            d.pop(group)
        d["run"] = {k: v for k, v in d["run"].items() if k not in ("name", "out_dir")}
        return d

    prefix, found = _run_prefix(args), []
    for d in sorted(run_dir.parent.glob(f"{prefix}-*")):
        if not re.fullmatch(re.escape(prefix) + r"-[0-9a-f]{10}", d.name):
            continue  # e.g. a run moved aside by --force
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                saved = Config.load(d / "config.json")
        except (OSError, ConfigError):
            continue
        if trained(saved) == trained(cfg) and run_id(saved) == d.name.rpartition("-")[2]:
            found.append(d)
    if len(found) == 1:
        return named.override({"run.name": found[0].name}), found[0]
    if found:
        raise ConfigError(f"{len(found)} runs match this config except in eval/quant settings: "
                          f"{', '.join(_shown(f) for f in found)}; name one: recur eval RUN_DIR ...")
    raise ConfigError(f"no run of this config: {_shown(run_dir)} does not exist. Train it with `recur train` and the "
                      "same --preset/--config/--set, or name a run folder: recur eval RUN_DIR ...")


def _shown(path: Path) -> str:
    """A path as the user can type it from here: relative to the current folder when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def cmd_train(args: argparse.Namespace) -> int:
    import os

    from . import device
    from .rundir import FINAL_STATUSES, RunExistsError, RunLockedError, die_with_parent, read_summary
    from .train import train
    die_with_parent()  # a torchrun worker of a runner's job follows torchrun (a no-op outside the runner)
    trained = False
    try:
        cfg = config_from_args(args)
        if args.run_dir:
            run_dir = Path(args.run_dir)
        else:
            cfg, run_dir = _default_run(cfg, args)
        if os.environ.get("RANK", "0") == "0":
            print(f"run folder {_shown(run_dir)}", flush=True)
        resume = args.resume
        if args.reuse and not args.force:
            done = read_summary(run_dir)
            if done and done.get("status") in FINAL_STATUSES:
                print(f"{run_dir}: reusing the {done['status']} run (val_bpb {done.get('final_val_bpb')}); "
                      "--force to train again")
                return 0
            resume = resume or (run_dir / "ckpt.pt").exists()
        result = train(cfg, run_dir, resume=resume, force=args.force)
        trained = True
    except (ConfigError, RunExistsError, RunLockedError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        device.teardown(barrier=trained)
    if result.status == "interrupted":  # as a shell reports a process ended by the signal
        return 143 if result.summary.get("reason") == "SIGTERM" else 130
    return {"finished": 0, "diverged": 0}.get(result.status, 1)


def cmd_data_build(args: argparse.Namespace) -> int:
    from .data.corpus import BuildOptions, build
    from .paths import resolve
    opts = BuildOptions(out=resolve(args.out), text_dir=Path(args.text_dir).resolve() if args.text_dir else None,
                        vocab_size=args.vocab_size, val_permille=args.val_permille,
                        shard_tokens=args.shard_tokens, tokenizer_max_bytes=args.tokenizer_max_bytes,
                        force=args.force)
    from .data.corpus.build import skipped_summary
    m = build(opts)
    tr, va = m["splits"]["train"], m["splits"]["val"]
    print(f"{opts.out}: train {tr['docs']} docs {tr['bytes'] / 1e6:.1f} MB {tr['tokens']} tokens in "
          f"{len(tr['shards'])} shards; val {va['docs']} docs {va['bytes'] / 1e6:.2f} MB {va['tokens']} tokens; "
          f"{m['bytes_per_token']['val']:.3f} bytes/token (val)")
    skipped = skipped_summary(m.get("skipped", {}))
    if skipped:  # repeated here: a resumed build reuses the documents stage, which printed it the first time
        print(f"{opts.out}: {skipped}")
    return 0


def cmd_data_audit(args: argparse.Namespace) -> int:
    from .data import open_data
    from .data.bpb import audit_tokens, roundtrip_tokens
    from .data.loader import load_tokens
    cfg = config_from_args(args)
    data = open_data(cfg)  # refuses an unfinished build, and a tokenizer other than the manifest's
    files = data.val_files if args.split == "val" else data.train_files
    tokens = load_tokens(files, cfg.model.vocab_size)
    ok = True
    if data.manifest is not None:
        print(data.check)
    else:
        # The byte audit below counts and decodes with the same tokenizer, so it cannot see a wrong one.
        rt = roundtrip_tokens(tokens, data.tokenizer)
        print(f"no manifest: {rt.summary()} ({args.split} split, tokenizer {cfg.data.tokenizer})")
        if not rt.ok:
            ok = False
            print(f"  FAILED: {rt.n_docs - rt.n_same} of {rt.n_docs} documents come back as other ids, so "
                  "data.tokenizer is not the tokenizer these shards were made with and val_bpb would be wrong; set "
                  "data.tokenizer to theirs (official FineWeb sp1024: fineweb_1024_bpe.model)")
    report = audit_tokens(tokens, data.tokenizer, data.tables)
    print(report.summary())
    for doc, c, d in report.mismatches:
        print(f"  doc {doc}: counted {c} bytes, decoded {d} bytes")
    if not report.ok:
        print(f"  {args.split} shards: {', '.join(str(f) for f in files)}")
    return 0 if ok and report.ok else 1


def cmd_data_info(args: argparse.Namespace) -> int:
    from .data.dataset import DataError, verify_build
    from .paths import resolve
    out = resolve(args.out)
    man = out / "manifest.json"
    if man.exists():
        print(man.read_text())
    try:
        verify_build(out)
    except DataError as e:
        print(f"not a finished build: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_config_show(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if args.json:
        print(cfg.to_json())
    else:
        if args.preset in FOLLOWS and not args.config:  # a seed: every field beside the PR's, with its line
            from .seed_facts import format_comparison, load_facts
            print(format_comparison(args.preset, cfg))
            covered = load_facts(FOLLOWS[args.preset]).fields
            for k, v in cfg.diff(Config.from_name(args.preset)).items():
                if k not in covered:  # --set fields the facts do not cover (run, data, operational)
                    print(f"{k} = {v!r}  # --set")
        else:
            for k, v in cfg.diff().items():
                print(f"{k} = {v!r}")
        print(f"# effective layers {cfg.effective_layers}, unique blocks {cfg.unique_blocks}")
        print("# phases (steps of " + f"{cfg.train.iterations}): " + ", ".join(f"{k} {v}" for k, v in cfg.phases().items()))
        for w in cfg.schedule_warnings():
            print(f"# warning: {w}")
    return 0


def cmd_model_describe(args: argparse.Namespace) -> int:
    from .submit import describe
    cfg = config_from_args(args)
    print(describe(cfg))
    if args.preset in FOLLOWS and not args.config and not args.set:  # a seed at full size: its PR's own count
        from .seed_facts import load_facts
        facts = load_facts(FOLLOWS[args.preset])
        if facts.scope == "full":
            print(f"params    #{facts.pr}'s count {facts.params.value:>12,}  ({facts.params.where})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import evaluate_run
    cfg = None
    run_dir = Path(args.run_dir) if args.run_dir else None
    if run_dir is None:
        cfg, run_dir = _find_run(config_from_args(args), args)
        print(f"run folder {_shown(run_dir)}", flush=True)
    elif args.set:
        cfg = Config.load(run_dir / "config.json").override(parse_sets(args.set))
    out = evaluate_run(run_dir, cfg, artifact=args.artifact, report_only=args.report_only, out_name=args.name,
                       overwrite_artifact=args.overwrite_artifact)
    a = out["artifact"]
    print(f"quant gap {out['quant_gap_bpb']:+.4f} bpb; artifact {a['total_bytes']:,} bytes "
          f"(model {a['model_bytes']:,} + code {a['code_bytes']:,}) -> {_shown(run_dir / (args.name + '.json'))}")
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from .submit import write_submission
    cfg = config_from_args(args)
    sub = write_submission(cfg, args.out, args.runs or [], strip=args.strip, name=args.name or "", author=args.author or "",
                           github_id=args.github_id or "", overwrite=args.overwrite)
    model = "estimated at random init" if sub["bytes_model_estimated"] else "the largest run's"
    print(f"{_shown(Path(args.out))}: train_gpt.py {sub['bytes_code']:,} bytes"
          + (f" (stripped: {sub['bytes_code_stripped_saved']:,} saved)" if args.strip else "")
          + f" + model {sub['bytes_model']:,} ({model}) = {sub['bytes_total']:,} of 16,000,000")
    if sub["seeds"]:
        print(f"val_bpb {sub['val_bpb']:.4f} over seeds {sub['seeds']}")
    return 0


def cmd_workbook(args: argparse.Namespace) -> int:
    import ast

    from .lab.workbook import NOTEBOOKS, run_workbook
    params: dict = {}
    if args.seeds:
        params["seeds"] = args.seeds
    for item in args.param or []:
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"--param {item!r}: expected name=value, e.g. --param loops=[1,2,4]")
        try:
            params[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            params[key] = value
    if args.set:
        params["overrides"] = parse_sets(args.set)
    report = run_workbook(args.preset, tuple(args.notebooks or NOTEBOOKS), args.results, params, html=not args.no_html)
    failed = [r for r in report if r["status"] != "ok"]
    if failed:
        print(f"error: notebooks failed: {[r['notebook'] for r in failed]}; the results of their last successful "
              f"execution were left as they were; the failing cells are in {', '.join(r['output'] for r in failed)}",
              file=sys.stderr)
        return 1
    return 0


def cmd_config_fields(args: argparse.Namespace) -> int:
    print(describe_fields())
    return 0


def cmd_runs_ls(args: argparse.Namespace) -> int:
    from .lab.runlist import format_runs, list_runs
    df = list_runs(args.roots or ["runs"], sort=args.sort)
    if args.status:
        df = df[df["status"].isin(args.status)]
    print(format_runs(df, width=None if args.wide else 60))
    return 0


def cmd_runs_compare(args: argparse.Namespace) -> int:
    from .lab.runlist import compare_runs, format_compare
    diff, metrics = compare_runs(args.runs, root=args.root)
    print(format_compare(diff, metrics))
    if args.out != "-":
        import matplotlib
        matplotlib.use("Agg")  # a file, never a window: this may run over ssh or in CI

        from .lab.runlist import plot_runs
        axes = plot_runs(args.runs, root=args.root)
        fig = axes[0].figure
        fig.tight_layout()
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=120)
        print(f"\nfigure: {out.resolve()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="recur", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="group", required=True)

    data = sub.add_parser("data", help="build, audit and inspect token data").add_subparsers(dest="cmd", required=True)
    b = data.add_parser("build", help="build the default corpus (or --text-dir) into shards + tokenizer")
    b.add_argument("--out", default="data/default", help="data folder (default: data/default)")
    b.add_argument("--text-dir", help="build from every *.txt under this folder instead of Debian's archive")
    b.add_argument("--vocab-size", type=int, default=1024)
    b.add_argument("--val-permille", type=int, default=50, help="share of documents in val, per mille")
    b.add_argument("--shard-tokens", type=int, default=10_000_000, help="tokens per shard (official: 10^8)")
    b.add_argument("--tokenizer-max-bytes", type=int, default=0, help="train the tokenizer on the first N bytes of train")
    b.add_argument("--force", action="store_true", help="rebuild every stage")
    b.set_defaults(func=cmd_data_build)
    a = data.add_parser("audit", help="check bpb byte accounting against decoded text on a split")
    add_config_args(a)
    a.add_argument("--split", choices=["val", "train"], default="val")
    a.set_defaults(func=cmd_data_audit)
    i = data.add_parser("info", help="print a build's manifest")
    i.add_argument("--out", default="data/default")
    i.set_defaults(func=cmd_data_info)

    tr = sub.add_parser("train", help="train one job (under torchrun: one job over N processes)",
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""examples:
  recur train --preset smoke                          # -> runs/smoke-<id>/ (id: config + code)
  recur train --preset smoke --reuse                  # that run again: reported when finished, else resumed
  recur train --preset smoke --set run.name=try1      # -> runs/try1/""")
    add_train_args(tr)
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="export a run's artifact and evaluate float and quantized weights -> eval.json",
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""examples:
  recur train --preset smoke
  recur eval --preset smoke                           # the run `recur train --preset smoke` made
  recur eval --preset smoke --set eval.stride=16 --name sliding   # the same run, sliding windows -> sliding.json""")
    ev.add_argument("run_dir", nargs="?", help="run folder (default: the folder `recur train` gives the same "
                    "--preset/--config/--set; eval and quant settings may differ from the training's)")
    add_config_args(ev)
    ev.add_argument("--artifact", help="artifact path (default: RUN_DIR/model.rgolf)")
    ev.add_argument("--report-only", action="store_true", help="measure an over-budget artifact instead of failing")
    ev.add_argument("--overwrite-artifact", action="store_true",
                    help="replace a file at the artifact path even if it is not an artifact (never needed to "
                    "replace an earlier artifact)")
    ev.add_argument("--name", default="eval", help="results go to RUN_DIR/NAME.json (and NAME.rgolf); "
                    "a variant evaluation of the same run takes its own name (default: eval)")
    ev.set_defaults(func=cmd_eval)

    wb = sub.add_parser("workbook", help="execute the notebooks with papermill into results/local/<preset>/ "
                        "(the cpu preset: the published results/cpu/)",
                        formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""examples:
  recur workbook --preset quick                       # make workbook -> results/local/quick/ (ignored by git)
  recur workbook --preset cpu                         # make workbook-cpu -> results/cpu/ (published)
  recur workbook --preset smoke --notebooks 00_quickstart --no-html""")
    wb.add_argument("--preset", default="quick", help="smoke | quick | cpu (default: quick)")
    wb.add_argument("--seeds", type=int, nargs="+", help="training seeds (default: each notebook's)")
    wb.add_argument("--notebooks", nargs="+", help="names without .ipynb (default: all four)")
    wb.add_argument("--results", help="results root; the notebooks write to RESULTS/<preset>/ (default: results "
                    "for the published cpu preset, else results/local, which git ignores)")
    wb.add_argument("--param", action="append", metavar="NAME=VALUE", help="a notebook parameter, e.g. loops=[1,2,4]")
    wb.add_argument("--set", action="append", metavar="KEY=VALUE", help="a config override for every run")
    wb.add_argument("--no-html", action="store_true", help="skip the nbconvert HTML renderings")
    wb.set_defaults(func=cmd_workbook)

    sm = sub.add_parser("submit", help="a Parameter Golf records folder: self-contained train_gpt.py, submission.json, "
                        "README, logs", formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""examples:
  recur submit --preset smoke --out submissions/smoke-stripped --strip   # no runs: model bytes estimated
  recur submit --preset seed-927 --runs <RUN_DIR> ... --out submissions/927 --strip  # from its evaluated runs""")
    add_config_args(sm)
    sm.add_argument("--runs", nargs="+", help="evaluated run folders of this config (one per seed)")
    sm.add_argument("--out", required=True, help="the records folder to write (refused if it holds files)")
    sm.add_argument("--strip", action="store_true", help="embed the code without comments and docstrings")
    sm.add_argument("--name", help="submission name")
    sm.add_argument("--author", help="author's name")
    sm.add_argument("--github-id", help="author's GitHub id")
    sm.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    sm.set_defaults(func=cmd_submit)

    runs = sub.add_parser("runs", help="find, list and compare run folders").add_subparsers(dest="cmd", required=True)
    ls = runs.add_parser("ls", help="a table of the run folders under ROOT (default: runs/), searched recursively",
                         formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""examples:
  recur runs ls                                       # every run under runs/, oldest first
  recur runs ls runs --sort val_bpb --status finished""")
    ls.add_argument("roots", nargs="*", metavar="ROOT", help="folders to search (default: runs)")
    ls.add_argument("--sort", choices=["time", "val_bpb", "run"], default="time",
                    help="time: oldest first (default); val_bpb: best first; run: by folder")
    ls.add_argument("--status", action="append", help="only runs of this status (repeatable): finished, diverged, "
                    "interrupted, failed, running, unfinished")
    ls.add_argument("--wide", action="store_true", help="print the config changes whole")
    ls.set_defaults(func=cmd_runs_ls)
    cmp = runs.add_parser("compare", help="config differences, metrics side by side, and curves of two or more runs",
                          formatter_class=argparse.RawDescriptionHelpFormatter, epilog="""examples:
  recur train --preset smoke --set run.name=try2 --set optim.matrix_lr=0.03
  recur runs compare try1 try2 --out cmp.png          # names under runs/ (or their start), or folder paths""")
    cmp.add_argument("runs", nargs="+", metavar="RUN", help="run folders, or folder names (or their start) under --root")
    cmp.add_argument("--root", default="runs", help="where RUN names are looked up (default: runs)")
    cmp.add_argument("--out", default="runs-compare.png",
                     help="the curves' figure (PNG; default: runs-compare.png in the current folder; - for none)")
    cmp.set_defaults(func=cmd_runs_compare)

    model = sub.add_parser("model", help="inspect model shapes").add_subparsers(dest="cmd", required=True)
    md = model.add_parser("describe", help="schedule, effective depth and parameter counts of a preset")
    add_config_args(md)
    md.set_defaults(func=cmd_model_describe)

    conf = sub.add_parser("config", help="show configs and fields").add_subparsers(dest="cmd", required=True)
    s = conf.add_parser("show", help="the resolved config (differences from the baseline, or --json)")
    add_config_args(s)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_config_show)
    conf.add_parser("fields", help="every field with type, default, range and help").set_defaults(func=cmd_config_fields)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        sys.stdout.flush()  # inside the try: a reader gone away is met here, not at interpreter exit
        return code
    except BrokenPipeError:
        # The reader stopped reading (`recur config fields | head`): what is left has nowhere to go. Point
        # stdout at devnull so that the flush at exit does not raise again, and end as a shell reports SIGPIPE.
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (ConfigError, ValueError, RuntimeError, OSError) as e:  # ArtifactError, ShardError... are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
