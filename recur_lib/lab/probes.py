"""How quantization error travels through a schedule: measurements on a trained model, evaluation only.

    t = quant_probe(model, cfg, val_tokens, bits=4)        # one row per schedule step
    t.attrs["superadditivity"]                             # all-steps effect / sum of single-step effects

For a model that reuses its blocks (#341's claim: errors compound on every loop), per schedule step:
* `rel_error`: ||h_q - h|| / ||h|| at the step's output, every step running quantized blocks;
* `dloss_single`: the loss change when only this step runs its block quantized (the others float);
* `next_gain`, `end_gain`: a finite-difference loop gain: a small perturbation added to this step's
  output, and how large it is after the next step, and after the last, relative to its own size;
  `next_gain_rel`, `end_gain_rel`: the same in relative terms (the perturbation's size against the
  hidden state's, there against here), on the scale of `rel_error`: the residual stream grows through
  the steps, so an absolute gain well above 1 can be a relative gain below 1 (the error damped).
The sum of the single-step effects against the effect of quantizing every step at once tells additive
error (ratio ~1) from compounding (well above 1). Only the blocks are quantized; the embedding and head
stay float, so the numbers are about the schedule, not the embedding's own rounding.

Blocks are swapped by forward hooks, so the model's own forward (skips, loop embedding, every trick)
runs unchanged; a test checks that quantizing every step through the hooks gives the loss of a model
loaded with the quantized blocks, bitwise.
"""
from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from ..config import Config
from ..export import quantized_state_dict
from ..paths import atomic_write
from .stats import ratio_bootstrap


def quantized_blocks(model: torch.nn.Module, cfg: Config, bits: int, scheme: str | None = None) -> torch.nn.ModuleList:
    """A copy of model.blocks whose weights are what an artifact at `bits` (and `scheme`) would hold."""
    q = cfg.quant
    qcfg = replace(cfg, quant=replace(q, export_bits=bits, scheme=scheme or q.scheme))
    state = quantized_state_dict(model, qcfg)
    blocks = copy.deepcopy(model.blocks)
    blocks.load_state_dict({k[len("blocks."):]: v for k, v in state.items() if k.startswith("blocks.")})
    return blocks


class _Steps:
    """Forward hooks on every block: count schedule steps as they run, record each step's output,
    and let a rule replace or perturb it."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.outputs, self.step = model, [], 0
        self.rule: Callable[[int, int, tuple, torch.Tensor], torch.Tensor | None] | None = None
        self._handles = [b.register_forward_hook(self._hook(i)) for i, b in enumerate(model.blocks)]

    def _hook(self, block: int) -> Callable:
        def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
            new = self.rule(self.step, block, args, output) if self.rule else None
            out = output if new is None else new
            self.outputs.append(out.detach())
            self.step += 1
            return new
        return hook

    def run(self, idx: torch.Tensor, targets: torch.Tensor, rule: Callable | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Per-token losses (n_seqs, seq_len) and every step's output."""
        self.outputs, self.step, self.rule = [], 0, rule
        loss = self.model(idx, targets, reduction="none").double()
        return loss, self.outputs

    def close(self) -> None:
        for h in self._handles:
            h.remove()


# Sequences the loss effects are averaged over. An int4 effect is ~0.03 nats; at 8 sequences of 128
# tokens its standard error was ~0.006 and the ratio of two such effects changed sign between runs; 128
# sequences bring the error to ~0.002 (measured on the cpu models).
N_SEQS = 128


def _batch(tokens: Any, seq_len: int, n_seqs: int) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.as_tensor(np.asarray(tokens), dtype=torch.long)
    n = min(n_seqs, (len(t) - 1) // seq_len)
    if n < 1:
        raise ValueError(f"quant_probe: {len(t)} tokens make no sequence of {seq_len} + 1")
    x = t[: n * seq_len + 1]
    return x[:-1].view(n, seq_len), x[1:].view(n, seq_len)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).float().norm() / b.float().norm().clamp_min(1e-30)).item()


@torch.no_grad()
def quant_probe(model: torch.nn.Module, cfg: Config, tokens: Any, bits: int, scheme: str | None = None,
                seq_len: int | None = None, n_seqs: int = N_SEQS, eps: float = 1e-3, seed: int = 0,
                twin: torch.nn.ModuleList | None = None, gain_seqs: int = 8) -> pd.DataFrame:
    """One row per schedule step (step, block, loop, role, rel_error, dloss_single, the gains and their
    relative forms); `attrs` hold the float loss (nats per token, over n_tokens), the all-steps effect
    and the sum of single-step effects with their standard errors over sequences, and their ratio
    (superadditivity) with a bootstrap interval over sequences (superadditivity_lo/_hi). The gains use the first
    `gain_seqs` sequences. `twin`: the blocks to swap in (default: quantized_blocks at bits/scheme)."""
    model.eval()
    twin = twin if twin is not None else quantized_blocks(model, cfg, bits, scheme)
    idx, targets = _batch(tokens, seq_len or cfg.eval.seq_len, n_seqs)
    steps = _Steps(model)
    try:
        base, h = steps.run(idx, targets)

        def quantize(only: int | None) -> Callable:
            def rule(i: int, block: int, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
                return twin[block](*args) if only is None or i == only else None
            return rule

        all_loss, hq = steps.run(idx, targets, quantize(None))
        # each effect per sequence (mean over its tokens), so the ratio can be bootstrapped over sequences
        all_seq = (all_loss - base).mean(1)
        single_seq = [(steps.run(idx, targets, quantize(k))[0] - base).mean(1) for k in range(len(h))]
        # the loop gain is a property of the weights, not of the text: a few sequences measure it, and
        # their own float pass is the reference (a smaller batch may round differently)
        gi, gt = idx[:gain_seqs], targets[:gain_seqs]
        _, hg = steps.run(gi, gt)
        gen = torch.Generator().manual_seed(seed)
        next_gain, end_gain = [], []
        norms = [x.float().norm().item() for x in hg]
        for k in range(len(hg)):
            delta = torch.randn(hg[k].shape, generator=gen)
            delta *= eps * hg[k].float().norm() / delta.norm()

            def perturb(i: int, block: int, args: tuple, out: torch.Tensor, k: int = k) -> torch.Tensor | None:
                return out + delta.to(out.dtype) if i == k else None

            _, hp = steps.run(gi, gt, perturb)
            size = delta.norm().item()
            next_gain.append((hp[k + 1] - hg[k + 1]).float().norm().item() / size if k + 1 < len(hg) else math.nan)
            end_gain.append((hp[-1] - hg[-1]).float().norm().item() / size)
    finally:
        steps.close()
    sched = model.schedule()
    t = pd.DataFrame({"step": range(len(h)), "block": [s.block for s in sched], "loop": [s.loop for s in sched],
                      "role": [s.role for s in sched], "rel_error": [_rel(a, b) for a, b in zip(hq, h)],
                      "dloss_single": [v.mean().item() for v in single_seq], "next_gain": next_gain,
                      "end_gain": end_gain})
    # relative in, relative out: gain x ||h_k|| / ||h_j||
    t["next_gain_rel"] = t["next_gain"] * pd.Series(norms[:-1]) / pd.Series(norms[1:])
    t["end_gain_rel"] = t["end_gain"] * pd.Series(norms) / norms[-1]
    parts_seq = torch.stack(single_seq).sum(0)
    total, parts = all_seq.mean().item(), parts_seq.mean().item()
    ratio = ratio_bootstrap(all_seq.numpy(), parts_seq.numpy(), seed=seed)
    t.attrs.update({"bits": bits, "scheme": scheme or cfg.quant.scheme, "float_loss": base.mean().item(),
                    "n_seqs": base.shape[0], "n_tokens": base.numel(), "dloss_all": total, "dloss_all_se": _se(all_seq),
                    "dloss_sum_single": parts, "dloss_sum_single_se": _se(parts_seq),
                    "superadditivity": total / parts if parts else math.nan,
                    "superadditivity_lo": ratio.lo, "superadditivity_hi": ratio.hi})
    return t


def _se(per_seq: torch.Tensor) -> float:
    """Standard error of a mean over sequences (NaN for one sequence)."""
    n = per_seq.numel()
    return per_seq.std().item() / math.sqrt(n) if n > 1 else math.nan


def probe_run(run_dir: str, bits: int, scheme: str | None = None, n_seqs: int = N_SEQS) -> pd.DataFrame:
    """quant_probe on a finished run's weights (model.pt) and the first val tokens of its data. The
    result is kept in the run folder (`probes/`) and reused while this module's code is unchanged: a
    run folder's name already fixes the weights and the quantizer's code (runs.COMPUTE_FILES)."""
    from ..data.dataset import open_data
    from ..data.loader import load_tokens
    from ..model import build_model
    from ..paths import resolve
    path = resolve(run_dir)
    cfg = Config.load(path / "config.json")
    scheme = scheme or cfg.quant.scheme
    kept = path / "probes" / f"int{bits}-{scheme}-n{n_seqs}.json"
    key = {"code": _probe_code(), "bits": bits, "scheme": scheme, "n_seqs": n_seqs}
    if (t := _load_probe(kept, key)) is not None:
        return t
    model = build_model(cfg)
    model.load_state_dict(torch.load(path / "model.pt", map_location="cpu", weights_only=True))
    data = open_data(cfg)
    tokens = load_tokens(data.val_files, cfg.model.vocab_size, n_seqs * cfg.eval.seq_len + 1)
    t = quant_probe(model, cfg, tokens, bits, scheme, n_seqs=n_seqs)
    kept.parent.mkdir(exist_ok=True)
    atomic_write(kept, json.dumps({**key, "rows": t.to_dict("list"), "attrs": t.attrs}))
    return t


_COLUMNS = ["step", "block", "loop", "role", "rel_error", "dloss_single", "next_gain", "end_gain", "next_gain_rel",
            "end_gain_rel"]
_ATTRS = {"bits", "scheme", "float_loss", "dloss_all", "dloss_sum_single", "superadditivity"}


def _probe_code() -> str:
    """This module's code without comments and docstrings (what changes a probe's numbers)."""
    from .runs import _code_only
    return hashlib.sha256(_code_only(Path(__file__).read_text()).encode()).hexdigest()[:12]


def _load_probe(path: Path, key: dict[str, Any]) -> pd.DataFrame | None:
    """A kept probe if it is whole and was made by this code with these settings; None otherwise (a
    damaged or stale file is measured again and replaced, with a line saying so)."""
    if not path.exists():
        return None
    try:
        kept = json.loads(path.read_text())
        if any(kept.get(k) != v for k, v in key.items()):
            return None  # older code or other settings: measure again
        rows, attrs = kept["rows"], kept["attrs"]
        if sorted(rows) != sorted(_COLUMNS) or len({len(v) for v in rows.values()}) != 1 or not rows["step"] \
                or not _ATTRS <= set(attrs):
            raise ValueError("columns or attributes missing")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        print(f"probe {path}: unreadable ({e}); measuring again", flush=True)
        return None
    t = pd.DataFrame(rows)[_COLUMNS]
    t.attrs.update(attrs)
    return t


def probe_table(runs: pd.DataFrame, bits: list[int], schemes: tuple[str | None, ...] = (None,),
                n_seqs: int = N_SEQS) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every finished run of a sweep table x bits x scheme: (per-step rows, one summary row per probe
    with the all-steps effect, the sum of single-step effects and their ratio). The sweep's columns
    (arm, seed and the arm's labels) are carried into both."""
    keep = [c for c in runs.columns if c not in ("status", "run_dir") and runs[c].map(
        lambda v: isinstance(v, (str, int, float, bool)) or v is None).all()]
    steps, summary, done = [], [], {}
    for _, r in runs[runs["status"] == "finished"].iterrows():
        for b in bits:
            for scheme in schemes:  # a run listed under two arms (one run, two designs) is probed once
                key = (str(r["run_dir"]), b, scheme)
                t = done[key] = done[key] if key in done else probe_run(r["run_dir"], b, scheme, n_seqs)
                tag = {**{c: r[c] for c in keep}, "bits": b, "scheme": t.attrs["scheme"]}
                steps.append(t.assign(**tag))
                summary.append({**tag, **{k: v for k, v in t.attrs.items() if k not in ("bits", "scheme")},
                                "rel_error_first": t["rel_error"].iloc[0], "rel_error_last": t["rel_error"].iloc[-1]})
    return (pd.concat(steps, ignore_index=True) if steps else pd.DataFrame()), pd.DataFrame(summary)
