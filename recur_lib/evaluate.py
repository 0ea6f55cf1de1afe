"""Evaluation: exact val bpb, sliding windows, depth extrapolation, legal score-first TTT.

Everything scores *targets*: target k is token k+1 predicted from tokens 0..k. `window_plan` lays
windows of length L over a target range so that each target is scored exactly once, by the first
window that reaches it, with up to L - stride tokens of context (stride = L: plain non-overlapping
windows). Scores are per-target NLLs in nats; bpb sums them and the official byte counts over all
targets and divides once, after an exact reduction over ranks (float64 NLL, int64 bytes).

Score-first TTT (the legal pattern of parameter-golf #402/#677/#1017, used by #927): the targets are
split into consecutive chunks; each chunk is scored under `torch.inference_mode()` with the current
weights, its scores are final, and only then does the model adapt on that chunk. A target's score
therefore depends only on tokens before it. `pre_quant_ttt` (#1406) instead adapts on the whole val
text before export: it is switchable and every result made with it says so.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import Config, check_name
from .data.bpb import ByteTables, count_bytes_torch
from .device import Runtime, all_reduce_sum, autocast
from .paths import atomic_write


# -- windows ----------------------------------------------------------------------------------------


def window_plan(a: int, b: int, n_targets: int, L: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows (start, lo, hi) scoring targets [a, b) once each: a window covers targets
    start..start+L-1 and scores its offsets [lo, hi). stride 0 means L."""
    s = stride or L
    if n_targets < L:
        raise ValueError(f"{n_targets} targets are fewer than one window of {L}; lower eval.seq_len")
    out = []
    pos = a
    while pos < b:
        start = max(0, pos + s - L)
        end = min(start + L, b)            # = pos + s, except the first window, which scores all it sees
        if start + L > n_targets:          # the tail: slide back so the window fits
            start = n_targets - L
        out.append((start, pos - start, end - start))
        pos = end
    return out


@torch.no_grad()
def score_windows(model: torch.nn.Module, tokens: torch.Tensor, plan: list[tuple[int, int, int]], L: int,
                  batch_tokens: int, rt: Runtime, n_loops: int | None = None) -> list[torch.Tensor]:
    """Per-window NLL of the scored offsets, in plan order (float64 on CPU)."""
    out: list[torch.Tensor] = []
    per_batch = max(1, batch_tokens // L)
    for i in range(0, len(plan), per_batch):
        group = plan[i:i + per_batch]
        x = torch.stack([tokens[s:s + L] for s, _, _ in group]).to(rt.device)
        y = torch.stack([tokens[s + 1:s + L + 1] for s, _, _ in group]).to(rt.device)
        with autocast(rt):
            nll = model(x, y, n_loops=n_loops, reduction="none")
        for row, (_, lo, hi) in zip(nll.double().cpu(), group):
            out.append(row[lo:hi])
    return out


def _target_bytes(tokens: torch.Tensor, a: int, b: int, tables: ByteTables) -> torch.Tensor:
    """The UTF-8 bytes of each target a..b-1 (the bpb denominator, per token)."""
    return count_bytes_torch(tokens[a:b], tokens[a + 1:b + 1], tables.to_torch())


@dataclass
class Scores:
    nll: float            # summed nats
    n_bytes: int
    n_targets: int
    seconds: float
    # per window of this rank, in plan order: summed nats and target bytes (the blocks of a bootstrap)
    window_nll: np.ndarray | None = None
    window_bytes: np.ndarray | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"val_bpb": self.nll / math.log(2) / self.n_bytes, "val_loss": self.nll / self.n_targets,
                "val_tokens": self.n_targets, "val_bytes": self.n_bytes, "seconds": round(self.seconds, 2)}


def _share(items: list, rt: Runtime) -> list:
    """This rank's contiguous slice of `items`: the ranks' slices cover them in order, sizes within one."""
    return items[len(items) * rt.rank // rt.world_size: len(items) * (rt.rank + 1) // rt.world_size]


def eval_windows(model: torch.nn.Module, tokens: np.ndarray, tables: ByteTables, L: int, stride: int,
                 batch_tokens: int, rt: Runtime, n_loops: int | None = None) -> Scores:
    """All targets of `tokens`, by windows of L with the given stride, split over ranks."""
    t0 = time.perf_counter()
    toks = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    n = len(toks) - 1
    plan = window_plan(0, n, n, L, stride)
    mine = _share(plan, rt)
    was = model.training
    model.eval()
    per_window = [float(v.sum()) for v in score_windows(model, toks, mine, L, batch_tokens, rt, n_loops)]
    nll = sum(per_window, 0.0)
    model.train(was)
    # the plan scores one contiguous run of targets in order, so this rank's share is [first, last)
    first, last = (mine[0][0] + mine[0][1], mine[-1][0] + mine[-1][2]) if mine else (0, 0)
    target_bytes = _target_bytes(toks, first, last, tables) if mine else torch.zeros(0, dtype=torch.long)
    n_bytes = int(target_bytes.sum())
    ends = np.cumsum([hi - lo for _, lo, hi in mine])
    window_bytes = np.add.reduceat(target_bytes.numpy(), np.r_[0, ends[:-1]]) if mine else np.zeros(0)
    n_tgt = last - first
    sums = torch.tensor([nll, float(n_bytes), float(n_tgt)], dtype=torch.float64, device=rt.device)
    all_reduce_sum(sums, rt)
    return Scores(float(sums[0]), int(sums[1]), int(sums[2]), time.perf_counter() - t0,
                  np.asarray(per_window), window_bytes)


def gap_bootstrap(nll_float: np.ndarray, nll_quant: np.ndarray, nbytes: np.ndarray, n_boot: int = 2000,
                  level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """A bpb gap (quantized - float) and its paired bootstrap interval (gap, lo, hi) over blocks of scored
    tokens (windows): each block's summed nats under both weight sets and its target bytes; the same
    blocks are resampled for both, and each resample's gap is a ratio, sum(nll_q - nll_f) / ln 2 /
    sum(bytes). One block gives no interval (NaN)."""
    f, q, b = (np.asarray(v, dtype=float) for v in (nll_float, nll_quant, nbytes))
    if not (len(f) == len(q) == len(b)) or len(f) == 0:
        raise ValueError(f"gap_bootstrap: {len(f)}, {len(q)} and {len(b)} blocks; give the same blocks, at least one")
    diff = q - f
    gap = float(diff.sum() / math.log(2) / b.sum())
    if len(f) < 2:
        return gap, math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, len(f), size=(n_boot, len(f)))
    boots = diff[idx].sum(axis=1) / math.log(2) / b[idx].sum(axis=1)
    lo, hi = np.quantile(boots, [0.5 - level / 2, 0.5 + level / 2])
    return gap, float(lo), float(hi)


def eval_bpb(model: torch.nn.Module, tokens: np.ndarray, tables: ByteTables, seq_len: int, batch_tokens: int,
             rt: Runtime, n_loops: int | None = None) -> dict[str, float]:
    """Plain val bpb (non-overlapping windows), as the training loop reports it."""
    return eval_windows(model, tokens, tables, seq_len, 0, batch_tokens, rt, n_loops).as_dict()


# -- test-time training ---------------------------------------------------------------------------------


def _ttt_param_groups(model: torch.nn.Module, cfg: Config) -> list[dict[str, Any]]:
    """Parameters TTT adapts, with #1406's per-block lr multipliers (first block lo -> last block 1.0).
    The rest stop requiring gradients on this (working) copy, so they neither cost a weight gradient nor
    hold one across steps."""
    e = cfg.eval
    n_blocks = len(model.blocks)
    groups: dict[float, list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        block = int(name.split(".")[1]) if name.startswith("blocks.") else None
        if ((e.ttt_params == "lora" and not name.startswith("loop_lora."))
                or (e.ttt_params == "blocks" and block is None)
                or (block is not None and block < e.ttt_freeze_blocks)):  # #927 keeps its first shared block fixed
            p.requires_grad_(False)
            continue
        mult = 1.0
        if block is not None and n_blocks > 1:
            mult = e.ttt_block_lr_min + (1 - e.ttt_block_lr_min) * block / (n_blocks - 1)
        groups.setdefault(mult, []).append(p)
    if not groups:
        raise ValueError(f"eval.ttt_params = {e.ttt_params!r} with eval.ttt_freeze_blocks = {e.ttt_freeze_blocks} "
                         "selects no parameter of this model (no per-loop LoRA, or every block frozen?); use 'all' "
                         "or 'blocks', or freeze fewer blocks")
    return [{"params": ps, "lr": e.ttt_lr * m, "base_lr": e.ttt_lr * m} for m, ps in sorted(groups.items())]


def make_ttt_optimizer(model: torch.nn.Module, cfg: Config) -> list[torch.optim.Optimizer]:
    from .optim import Muon
    e = cfg.eval
    groups = _ttt_param_groups(model, cfg)
    if e.ttt_optimizer == "adamw":
        return [torch.optim.AdamW(groups, betas=(cfg.optim.beta1, cfg.optim.beta2), weight_decay=0.0)]
    if e.ttt_optimizer == "sgd":
        return [torch.optim.SGD(groups, momentum=e.ttt_momentum)]
    mats = [{**g, "params": [p for p in g["params"] if p.ndim == 2]} for g in groups]
    rest = [{**g, "params": [p for p in g["params"] if p.ndim != 2]} for g in groups]
    opts: list[torch.optim.Optimizer] = []
    if any(g["params"] for g in mats):
        opts.append(Muon([p for g in mats for p in g["params"]], lr=e.ttt_lr, momentum=e.ttt_momentum))
    if any(g["params"] for g in rest):
        opts.append(torch.optim.SGD([g for g in rest if g["params"]], momentum=e.ttt_momentum))
    return opts


def _adapt(model: torch.nn.Module, opts: list[torch.optim.Optimizer], toks: torch.Tensor, a: int, b: int,
           cfg: Config, rt: Runtime, epochs: int, lr_at: Any = None) -> None:
    """Train on targets [a, b) (inputs toks[a:b], labels toks[a+1:b+1]) for `epochs` passes. Each batch of
    sequences is split over the ranks, and the gradients are summed with each rank's loss weighted by its
    share of the batch: every rank takes the step one process would take on the whole batch."""
    L = cfg.eval.seq_len
    starts = list(range(a, b, L))
    per_batch = max(1, cfg.eval.batch_tokens // L)
    params = [p for opt in opts for g in opt.param_groups for p in g["params"]]
    model.train()
    step = 0
    for _ in range(epochs):
        for i in range(0, len(starts), per_batch):
            batch = starts[i:i + per_batch]
            n = min(L, *(b - s for s in batch))
            mine = _share(batch, rt)
            if lr_at is not None:
                for opt in opts:
                    for g in opt.param_groups:
                        g["lr"] = g.get("base_lr", g["lr"]) * lr_at(step)
            if mine:
                x = torch.stack([toks[s:s + n] for s in mine]).to(rt.device)
                y = torch.stack([toks[s + 1:s + n + 1] for s in mine]).to(rt.device)
                with autocast(rt):
                    loss = model(x, y)
                (loss * (len(mine) / len(batch)) if rt.distributed else loss).backward()
            if rt.distributed:
                for p in params:
                    if p.grad is None:  # a rank without a sequence of this batch still adds its zeros
                        p.grad = torch.zeros_like(p)
                    all_reduce_sum(p.grad, rt)
            if cfg.eval.ttt_grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.eval.ttt_grad_clip)
            for opt in opts:
                opt.step()
                opt.zero_grad(set_to_none=True)
            step += 1
    model.eval()


def ttt_score_first(model: torch.nn.Module, tokens: np.ndarray, tables: ByteTables, cfg: Config, rt: Runtime,
                    adapt_before_scoring: bool = False) -> tuple[Scores, np.ndarray]:
    """Score-first TTT over all targets; returns the scores and the per-target NLLs (on every rank).

    Chunks run in order; within a chunk the ranks split the scoring windows and the training sequences
    (as #927 does), so every rank holds the same weights at every chunk. The last chunk is scored and not
    trained on: nothing is left to score with what it would teach. adapt_before_scoring=True is the
    *illegal* variant (adapt on a chunk, then score it); it exists only so the legality test can show that
    it catches leakage. The caller's model is not modified.
    """
    t0 = time.perf_counter()
    e = cfg.eval
    work = copy.deepcopy(model)
    initial = copy.deepcopy(work.state_dict()) if e.ttt_reset else None
    opts = make_ttt_optimizer(work, cfg)
    toks = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    n = len(toks) - 1
    nll = np.zeros(n, dtype=np.float64)
    chunks = list(range(0, n, e.ttt_chunk_tokens))
    work.eval()
    for ci, a in enumerate(chunks):
        b = min(a + e.ttt_chunk_tokens, n)
        if initial is not None:
            work.load_state_dict(initial)
            opts = make_ttt_optimizer(work, cfg)
        # #927's schedule: lr x (1 + cos(pi x chunk / (chunks - 1))) / 2, the same for every step of a chunk
        scale = 0.5 * (1 + math.cos(math.pi * ci / max(len(chunks) - 1, 1))) if e.ttt_lr_schedule == "cosine" else None
        lr_at = None if scale is None else (lambda _step, s=scale: s)
        if adapt_before_scoring:
            _adapt(work, opts, toks, a, b, cfg, rt, e.ttt_epochs, lr_at)
        with torch.inference_mode():
            plan = window_plan(a, b, n, e.seq_len, e.stride)
            mine = _share(plan, rt)
            for (s, lo, hi), v in zip(mine, score_windows(work, toks, mine, e.seq_len, e.batch_tokens, rt)):
                nll[s + lo:s + hi] = v.numpy()
        if rt.distributed:  # each target was scored on one rank; the others hold 0 there
            nll[a:b] = all_reduce_sum(torch.from_numpy(nll[a:b]).to(rt.device), rt).cpu().numpy()
        if not adapt_before_scoring and b < n:
            _adapt(work, opts, toks, a, b, cfg, rt, e.ttt_epochs, lr_at)
    n_bytes = int(_target_bytes(toks, 0, n, tables).sum())
    return Scores(float(nll.sum()), n_bytes, n, time.perf_counter() - t0), nll


def pre_quant_ttt(model: torch.nn.Module, tokens: np.ndarray, cfg: Config, rt: Runtime) -> torch.nn.Module:
    """#1406's discriminative pre-quant TTT: AdamW on the val text itself (ttt_epochs passes, per-block lr
    multipliers; eval.ttt_lr_schedule 'cosine': the lr falls to 0 over all its steps, where #1406's falls per
    epoch to 0.1 x lr), returning an adapted copy. It trains on the text it is then scored on:
    results made with it are labelled `pre_quant_ttt: true` and are not comparable to legal scores."""
    work = copy.deepcopy(model)
    opts = [torch.optim.AdamW(_ttt_param_groups(work, cfg), betas=(cfg.optim.beta1, cfg.optim.beta2), weight_decay=0.0)]
    toks = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
    n = len(toks) - 1
    L = cfg.eval.seq_len
    steps = cfg.eval.ttt_epochs * math.ceil(math.ceil(n / L) / max(1, cfg.eval.batch_tokens // L))
    cosine = (lambda i: 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps))) if cfg.eval.ttt_lr_schedule == "cosine" else None
    _adapt(work, opts, toks, 0, n, cfg, rt, cfg.eval.ttt_epochs, lr_at=cosine)
    return work


# -- one call: a run folder (or an artifact) -> eval.json ----------------------------------------------


def evaluate_run(run_dir: str | Path, cfg: Config | None = None, artifact: str | Path | None = None,
                 report_only: bool = False, out_name: str = "eval", overwrite_artifact: bool = False) -> dict[str, Any]:
    """Evaluate a finished run: float weights (model.pt) and the exported artifact, plain / sliding /
    score-first TTT per cfg.eval (default: the run's config); writes run_dir/<out_name>.json (and the
    artifact <out_name>.rgolf) and returns it. Both targets are checked before any work: a file at the
    artifact path that is not an artifact is replaced only with overwrite_artifact, and a
    <out_name>.json that is not an evaluation (config.json, summary.json...) never."""
    import json

    from . import device
    from .data import open_data
    from .data.loader import load_tokens, trim_for_eval
    from .export import check_artifact_target, export_artifact, load_artifact
    from .model import build_model

    run_dir = Path(run_dir)
    check_name(out_name, "the evaluation's name (--name)")
    art_path = Path(artifact) if artifact else run_dir / ("model.rgolf" if out_name == "eval" else f"{out_name}.rgolf")
    out_path = run_dir / f"{out_name}.json"
    check_artifact_target(art_path, overwrite_artifact)
    _check_eval_target(out_path)
    saved = Config.load(run_dir / "config.json")
    cfg = cfg or saved
    changed = [k for k in cfg.diff(saved) if k.split(".")[0] in ("model", "schedule")]
    if changed:
        raise ValueError(f"evaluate_run: {changed} differ from the trained model's config in {run_dir}; "
                         "only data, quant, eval and run settings can change at evaluation")
    rt = device.setup(cfg.run)

    def progress(line: str, since: float) -> float:
        """A line per finished step, with its seconds, as it completes (rank 0 only)."""
        now = time.perf_counter()
        if rt.is_main:
            print(f"{line}  {now - since:.1f} s", flush=True)
        return now

    data = open_data(cfg)
    val = load_tokens(data.val_files, cfg.model.vocab_size, cfg.data.val_max_tokens)
    e = cfg.eval
    t_start = time.perf_counter()
    model = build_model(cfg).to(rt.device)
    # a barrier: training writes model.pt on rank 0 alone, and a script that trains and then evaluates in one
    # process (the generated train_gpt.py) would otherwise let another rank read it before it exists
    all_reduce_sum(torch.zeros(1, device=rt.device), rt)
    model.load_state_dict(torch.load(run_dir / "model.pt", map_location=rt.device, weights_only=True))
    labels: dict[str, Any] = {"pre_quant_ttt": e.ttt == "pre_quant"}
    t = t_start
    if e.ttt == "pre_quant":
        model = pre_quant_ttt(model, val, cfg, rt)
        labels["note"] = "pre-quant TTT adapted the weights on the val text that is then scored (#1406)"
        t = progress(f"pre-quant TTT ({e.ttt_epochs} epochs)", t)
    # one writer: ranks sharing `<path>.tmp` would race each other's os.replace
    report = export_artifact(model.cpu(), cfg, art_path if rt.is_main else None, report_only=report_only,
                             overwrite=overwrite_artifact)
    model.to(rt.device)
    all_reduce_sum(torch.zeros(1, device=rt.device), rt)  # a barrier: read the artifact once rank 0 has written it
    quantized = load_artifact(art_path).to(rt.device)
    progress(f"artifact  {report.total_bytes:,} bytes (model {report.model_bytes:,} + code {report.code_bytes:,})", t)

    plain: dict[str, Scores] = {}

    def suite(m: torch.nn.Module, weights: str) -> dict[str, Any]:
        t = time.perf_counter()
        plain[weights] = eval_windows(m, trim_for_eval(val, e.seq_len), data.tables, e.seq_len, 0, e.batch_tokens,
                                      rt, e.eval_loops or None)
        res = {"plain": plain[weights].as_dict()}
        t = progress(f"{weights:<9} plain    val_bpb {res['plain']['val_bpb']:.4f}", t)
        if e.stride and e.stride < e.seq_len:
            res["sliding"] = {"stride": e.stride, **eval_windows(m, val, data.tables, e.seq_len, e.stride,
                                                                e.batch_tokens, rt, e.eval_loops or None).as_dict()}
            t = progress(f"{weights:<9} sliding  val_bpb {res['sliding']['val_bpb']:.4f} (stride {e.stride})", t)
        if e.ttt == "score_first":
            res["ttt"] = {"chunk_tokens": e.ttt_chunk_tokens, "epochs": e.ttt_epochs,
                          **ttt_score_first(m, val, data.tables, cfg, rt)[0].as_dict()}
            progress(f"{weights:<9} ttt      val_bpb {res['ttt']['val_bpb']:.4f} (score-first)", t)
        return res

    out = {"run_dir": str(run_dir), **labels, "float": suite(model, "float"), "quantized": suite(quantized, "quantized"),
           "artifact": {"path": str(art_path), **report.as_dict()}}
    out["quant_gap_bpb"] = out["quantized"]["plain"]["val_bpb"] - out["float"]["plain"]["val_bpb"]
    if rt.world_size == 1:  # every window is on this rank: the gap's paired bootstrap over windows
        f, q = plain["float"], plain["quantized"]
        _, lo, hi = gap_bootstrap(f.window_nll, q.window_nll, f.window_bytes)
        out["quant_gap_ci"] = {"lo": lo, "hi": hi, "level": 0.95, "windows": len(f.window_nll),
                               "method": "paired bootstrap over the plain eval windows, 2,000 resamples"}
    out["eval_loops"] = e.eval_loops or cfg.schedule.n_loops
    out["eval_seconds"] = round(time.perf_counter() - t_start, 2)
    out["config"] = cfg.to_dict()
    if rt.is_main:
        atomic_write(out_path, json.dumps(out, indent=2) + "\n")
    return out


def _check_eval_target(path: Path) -> None:
    """Refuse to write results over a JSON file that holds something else: `--name config` would
    otherwise replace the run's config.json with an evaluation."""
    import json
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        old = None
    if not (isinstance(old, dict) and "quant_gap_bpb" in old):
        raise ValueError(f"{path} exists and is not an evaluation result (no quant_gap_bpb); refusing to overwrite "
                         "it. Choose another --name (out_name) for this evaluation.")
