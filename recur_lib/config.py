"""One config tree, the single source of truth for every hyperparameter.

`Config` groups frozen dataclasses (data, model, schedule, train, optim, quant, eval, run). Every field
carries its help text and allowed range in its metadata, is validated on construction, and round-trips
through JSON losslessly. Defaults reproduce the Parameter Golf baseline (`train_gpt.py`, 9x512);
named presets (`presets.PRESETS`) are dotted overrides on top of them:

    cfg = Config.from_name("quick", {"model.dim": 256})      # or Config.from_name("quick", model__dim=256)
    cfg = cfg.override({"train.iterations": "500"})         # strings are parsed by the field's type (CLI)
    Config.from_json(cfg.to_json()) == cfg                  # lossless

An unknown key, a wrong type or a value out of range raises `ConfigError` naming the field, what it
got and what it accepts. Nothing reads environment variables.
"""
from __future__ import annotations

import difflib
import json
import math
import typing
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Mapping

from .paths import atomic_write
from .presets import PRESETS, resolve_preset


class ConfigError(ValueError):
    """A config value is unknown, of the wrong type, or out of its allowed range."""


class ConfigWarning(UserWarning):
    """A config file left fields unset, and they took the baseline defaults."""


def _f(default: Any, help: str, lo: float | None = None, hi: float | None = None) -> Any:
    """A field with its help text and inclusive range (None = unbounded)."""
    return field(default=default, metadata={"help": help, "lo": lo, "hi": hi})


# --------------------------------------------------------------------------------------------------
# Groups


class _Group:
    """Base of the groups: each validates itself on construction, naming its fields `group.field`."""

    def __post_init__(self) -> None:
        _validate_group(self, _GROUP_NAMES[type(self)])


@dataclass(frozen=True)
class DataConfig(_Group):
    root: str = _f("data/default", "folder holding the token shards, tokenizer and manifest; "
                   "relative paths resolve against the project root")
    train_glob: str = _f("*train_*.bin", "shard file pattern of the training split (official: fineweb_train_*.bin)")
    val_glob: str = _f("*val_*.bin", "shard file pattern of the validation split (official: fineweb_val_*.bin)")
    tokenizer: str = _f("tokenizer.model", "SentencePiece model, relative to root unless absolute "
                        "(official: fineweb_1024_bpe.model)")
    val_max_tokens: int = _f(0, "evaluate on the first N val tokens only (0 = the whole split, as scored)", 0)
    seed_offset: bool = _f(False, "start reading train at a token derived from run.seed (sha256 of the seed mod the "
                           "train tokens), so seeds also differ in the data they see; off = the official start at 0")
    trust_unmanifested: bool = _f(False, "accept a data folder without a manifest.json of `recur data build` (official "
                                  "FineWeb shards): the tokenizer is then checked by decoding and re-encoding val "
                                  "documents instead of by the manifest's sha256; never applies to an unfinished build")


@dataclass(frozen=True)
class ModelConfig(_Group):
    vocab_size: int = _f(1024, "token vocabulary; must equal the tokenizer's", 2, 65536)
    dim: int = _f(512, "residual width", 8, 16384)
    n_heads: int = _f(8, "query heads", 1, 256)
    n_kv_heads: int = _f(4, "key/value heads (GQA); must divide n_heads", 1, 256)
    mlp_mult: float = _f(2.0, "MLP hidden width = mlp_mult * dim (relu^2)", 0.25, 16.0)
    rope_base: float = _f(10000.0, "RoPE base frequency", 1.0, None)
    logit_softcap: float = _f(30.0, "tanh soft cap on logits (0 = off)", 0.0, None)
    tie_embeddings: bool = _f(True, "share the input embedding with the output head")
    tied_embed_init_std: float = _f(0.005, "init std of the tied embedding", 0.0, 1.0)
    qk_gain_init: float = _f(1.5, "init of the per-head query gain (baseline 1.5; #1406 uses 5.0)", 0.0, 100.0)
    use_unet_skips: bool = _f(True, "U-Net skips from the first half of schedule steps to the mirrored second half")
    unet_encoder_steps: int = _f(0, "schedule steps on the encoder side of the U-Net, 0 = half (#927: 3 of its 7; "
                                 "#1406: 5 of 13)", 0, 4096)
    xsa_last_n: int = _f(0, "exclusive self-attention in the last N schedule steps (#927: all 7)", 0, 1024)
    ve_last_n: int = _f(0, "value embedding added to attention values in the last N steps (#927: 2)", 0, 1024)
    ve_steps: tuple[int, ...] = _f((), "schedule steps that add the value embedding, instead of the last ve_last_n "
                                   "(#1096: VE_LAYERS 9,10 of its 14 steps); needs ve_last_n = 0")
    ve_dim: int = _f(128, "value-embedding table width (#927: 128)", 1, 4096)
    use_smear_gate: bool = _f(False, "SmearGate: learned per-dim blend with the previous token (#927)")
    bigram_buckets: int = _f(0, "BigramHash buckets, 0 = off (#927: 10240, #1406: 1536)", 0, 1 << 22)
    bigram_dim: int = _f(128, "BigramHash embedding width (#927: 128)", 1, 4096)
    loop_lora_rank: int = _f(0, "per-loop LoRA rank on shared blocks, 0 = off (#1096: 1)", 0, 256)
    loop_lora_form: Literal["vectors", "matrices"] = _f(
        "vectors", "rank-1 delta stored as two vectors (#1096) or as r-column matrices")
    loop_lora_targets: tuple[str, ...] = _f(("q", "k", "v", "o", "fc", "proj"),
                                            "projections of shared blocks that get per-loop LoRA")
    use_loop_embedding: bool = _f(False, "add a learned embedding of the loop index to the residual")
    use_loop_scales: bool = _f(False, "per-loop float gains on shared blocks' attn/mlp branches")
    last_n_unit: Literal["steps", "loops", "blocks"] = _f(
        "steps", "what xsa_last_n / ve_last_n count: schedule steps, unique blocks (the last N blocks by index, on "
        "every step that runs them: #1406's XSA on blocks 7-10), or passes of the looped core from the end "
        "(a pass counted by Step.loop), always with the steps after the core (coda)")
    mlp_act: Literal["relu2", "leaky_relu2"] = _f(
        "relu2", "MLP activation: relu(x)^2 (baseline) or leaky_relu(x, 0.5)^2 (#1096, #1406 lineage)")
    output_norm: Literal["off", "core", "all"] = _f(
        "off", "Output-LN (#1096 from #855): RMSNorm on the attn/MLP outputs instead of their inputs, in the "
        "looped core's blocks (#1096: core) or in all blocks")
    birkhoff_mix: Literal["off", "core", "all"] = _f(
        "off", "Birkhoff mixing (#1096 from #855): block input = s*x + (1-s)*x0, s = sigmoid(one learned logit, "
        "init 0), instead of resid_mix, in the looped core's blocks (#1096: core) or in all blocks")
    use_step_scales: bool = _f(False, "per-schedule-step (dim,) scales on the attn and MLP branches, clamped "
                               "to +-step_scale_clamp at use (#1096 timestep scales, #855)")
    step_scale_clamp: float = _f(4.0, "clamp of the step scales (#1096, #855: 4)", 1e-3, None)
    rope_dims: int = _f(0, "RoPE on the first N dims of each head, 0 = all (#1406 lineage: 16 of 64)", 0, 4096)
    step_controls: tuple[str, ...] = _f((), "control tensors each schedule step has its own copy of instead of its "
                                        "block's, from attn_scale, mlp_scale, resid_mix, q_gain, so a shared block's "
                                        "applications differ in them (#341: all four; #927: all but q_gain)")
    ln_scale: bool = _f(False, "multiply the normed attn/MLP inputs of block b by 1/sqrt(b + 1) (#1406 lineage)")


@dataclass(frozen=True)
class ScheduleConfig(_Group):
    """Which unique blocks the forward pass runs, in order (`model.schedule.build_schedule` makes the step list).

    flat:    n_layers unique blocks, each once (baseline 9x512).
    looped:  n_core shared blocks x n_loops passes.
    cyclic:  n_loops block applications cycling through n_core shared blocks, application i running
             block i % n_core (#927: 7 applications over 4 blocks, 0 1 2 3 0 1 2).
    hybrid:  n_prelude unique + n_core shared x n_loops + n_coda unique (#1096: 1 + 4x3 + 1).
    repeat:  n_layers unique blocks; the contiguous segment repeat_layers runs n_loops times
             (#1406: 11 blocks, (4, 5) x 2), in place or after the whole stack (repeat_at).
    """
    kind: Literal["flat", "looped", "cyclic", "hybrid", "repeat"] = _f("flat", "schedule family")
    n_layers: int = _f(9, "unique blocks of a flat or repeat schedule", 1, 1024)
    n_prelude: int = _f(0, "unique blocks before the shared core (hybrid)", 0, 1024)
    n_core: int = _f(4, "shared blocks in the looped core (looped, cyclic, hybrid)", 1, 1024)
    n_loops: int = _f(1, "times the core (looped, hybrid) or the repeat segment (repeat) runs; block applications "
                      "in all (cyclic)", 1, 1024)
    n_coda: int = _f(0, "unique blocks after the shared core (hybrid)", 0, 1024)
    repeat_layers: tuple[int, ...] = _f((), "contiguous block indices run n_loops times (repeat; #1406: (4, 5))")
    repeat_start_frac: float = _f(0.0, "fraction of training after which repeats switch on (repeat)", 0.0, 1.0)
    repeat_start_unit: Literal["steps", "clock"] = _f(
        "steps", "what repeat_start_frac is a fraction of: train.iterations, or the wall-clock cap train.max_wallclock_s "
        "(the records since #1855: ENABLE_LOOPING_AT of the training time; steps when there is no cap)")
    repeat_at: Literal["in_place", "after"] = _f(
        "in_place", "where a repeat schedule's extra passes run: in place (0..a-1, segment x n_loops, b+1..n-1) or "
        "after the whole stack (0..n-1, then the segment n_loops - 1 more times)")


@dataclass(frozen=True)
class TrainConfig(_Group):
    iterations: int = _f(20000, "optimizer steps (upper bound when a wall-clock cap is set)", 1, None)
    batch_tokens: int = _f(524288, "tokens per step over all ranks", 1, None)
    seq_len: int = _f(1024, "training sequence length", 2, 1 << 20)
    warmup_steps: int = _f(20, "priming steps, as the baseline means them: trained, then weights, optimizer state, "
                           "loader and RNG are restored (compiles the kernels; changes no number). Not an LR warmup",
                           0, None)
    lr_warmup_steps: int = _f(0, "linear LR warmup steps (the baseline has none: its LR multiplier is 1 from step 0)",
                              0, None)
    lr_warmup_frac: float = _f(0.0, "LR warmup as a fraction of train.iterations (> 0 overrides lr_warmup_steps)",
                               0.0, 100.0)
    warmdown_iters: int = _f(1200, "linear warmdown over the last N steps", 0, None)
    warmdown_frac: float = _f(0.0, "warmdown as a fraction of train.iterations (> 0 overrides warmdown_iters)",
                              0.0, 100.0)
    max_wallclock_s: float = _f(600.0, "wall-clock cap; warmdown follows it (0 = none)", 0.0, None)
    grad_clip: float = _f(0.0, "global grad-norm clip (0 = off; #927: 0.3)", 0.0, None)
    ema_decay: float = _f(0.0, "EMA of weights, 0 = off (#1406 uses EMA)", 0.0, 1.0)
    ema_horizon_frac: float = _f(0.0, "EMA horizon 1/(1 - decay) as a fraction of train.iterations (> 0 overrides "
                                 "ema_decay: 0.997 is a 333-step horizon, more than a 250-step run)", 0.0, 1.0)
    swa_start_frac: float = _f(0.0, "SWA from this fraction of training, 0 = off (#927's SWA_START_FRAC is an LR "
                               "threshold: swa_below_lr_scale)", 0.0, 1.0)
    swa_every: int = _f(50, "SWA snapshot interval in steps (#927: 50)", 1, None)
    swa_below_lr_scale: float = _f(0.0, "SWA snapshots only while the LR multiplier is below this, every swa_every "
                                   "steps (0 = off; the #927 and #1406 lineage: 0.2)", 0.0, 1.0)
    val_every: int = _f(0, "validate every N steps (0 = only at the end)", 0, None)
    log_every: int = _f(10, "log a metrics line (and per-group update norms) every N steps", 1, None)
    grad_accum_steps: int = _f(1, "micro-batches per step on each rank (same global batch, less memory)", 1, 1024)
    ckpt_every: int = _f(0, "write a resumable checkpoint every N steps; 0 = auto: whenever 5 minutes of training "
                         "time (validation excluded) have passed since the last one. Always at the end and on "
                         "Ctrl-C/SIGTERM; only after steps the divergence monitor finds good", 0, None)
    diverge_rel_nats: float = _f(1.0, "a smoothed train loss (EMA, ~10-step horizon) more than this many nats above its "
                                 "running minimum for diverge_patience steps ends the run as diverged (0 = off)",
                                 0.0, None)
    diverge_loss: float = _f(0.0, "a train loss above this for diverge_patience steps ends the run as diverged "
                             "(0 = off; NaN/inf always ends it)", 0.0, None)
    diverge_patience: int = _f(50, "consecutive bad steps (by diverge_rel_nats or diverge_loss) before the run counts "
                               "as diverged; capped at iterations/5 (at least 5) so a short run can diverge",
                               1, None)
    loop_sampling: Literal["fixed", "uniform", "poisson_lognormal"] = _f(
        "fixed", "loop count of each training step: fixed = schedule.n_loops; uniform on 1..loop_sampling_max; "
        "poisson_lognormal: Huginn's (Geiping et al. 2025), Poisson with a log-normal rate of mean "
        "schedule.n_loops (sigma 0.5), clipped to 1..loop_sampling_max. Drawn from (run.seed, step), so every "
        "rank and a resumed run draw the same counts")
    loop_sampling_max: int = _f(0, "largest sampled loop count (0 = 2 x schedule.n_loops)", 0, 1024)
    eval_weights: Literal["auto", "raw", "ema", "swa"] = _f(
        "auto", "weights for final eval/export: auto = SWA if it has snapshots, else EMA if on, else raw")


@dataclass(frozen=True)
class OptimConfig(_Group):
    matrix_lr: float = _f(0.04, "Muon lr for block matrices", 0.0, 10.0)
    scalar_lr: float = _f(0.04, "Adam lr for scalars and vectors", 0.0, 10.0)
    tied_embed_lr: float = _f(0.05, "Adam lr of the tied embedding", 0.0, 10.0)
    head_lr: float = _f(0.008, "Adam lr of an untied head", 0.0, 10.0)
    lora_lr: float = _f(0.01, "lr of per-loop LoRA factors", 0.0, 10.0)
    lora_optimizer: Literal["adamw", "muon"] = _f("adamw", "optimizer of LoRA matrices (#1096: AdamW)")
    lora_scale_rule: Literal["keller", "moonlight", "none"] = _f(
        "keller", "Muon update scale for LoRA factors when they are on Muon (the ablation varies it)")
    lora_weight_decay: float = _f(0.0, "decoupled weight decay on LoRA factors", 0.0, 1.0)
    lora_lr_a: float = _f(0.0, "lr of the LoRA A factors (0: optim.lora_lr)", 0.0, 10.0)
    lora_lr_b: float = _f(0.0, "lr of the LoRA B factors (0: optim.lora_lr)", 0.0, 10.0)
    lora_b_step_mult: float = _f(1.0, "multiplies the B factors' lr: on Muon with lora_scale_rule 'none', B's step "
                                 "relative to a base weight's (keller gives sqrt(d/r): 8.5 for #1096's 576x8, 2.8 "
                                 "for 64x8)", 0.0, 1000.0)
    muon_momentum: float = _f(0.95, "Muon momentum after warmup (#927: 0.99)", 0.0, 1.0)
    muon_momentum_warmup_start: float = _f(0.85, "Muon momentum at step 0", 0.0, 1.0)
    muon_momentum_warmup_steps: int = _f(500, "steps to warm Muon momentum up", 0, None)
    muon_momentum_warmup_frac: float = _f(0.0, "momentum warmup as a fraction of train.iterations (> 0 overrides "
                                          "muon_momentum_warmup_steps)", 0.0, 100.0)
    lora_warmup_steps: int = _f(0, "linear warmup of the LoRA factors' lr, on top of the LR schedule (#1096 v7: 2000)",
                                0, None)
    lora_warmup_frac: float = _f(0.0, "LoRA warmup as a fraction of train.iterations (> 0 overrides lora_warmup_steps)",
                                 0.0, 100.0)
    muon_ns_steps: int = _f(5, "Newton-Schulz iterations", 1, 20)
    muon_row_normalize: bool = _f(False, "MuonEq-R: rows of the block matrices' update scaled to unit norm before "
                                  "Newton-Schulz (#1217; #1406's README names it, its code does not)")
    muon_scale_rule: Literal["keller", "moonlight", "none"] = _f(
        "keller", "update scale: keller sqrt(max(1,r/c)), moonlight 0.2*sqrt(max(r,c)), none 1")
    weight_decay: float = _f(0.0, "decoupled weight decay on Muon matrices (#927: 0.04)", 0.0, 1.0)
    embed_weight_decay: float = _f(0.0, "decoupled (AdamW) weight decay on the embedding tables (the baseline's Adam "
                                   "has none)", 0.0, 1.0)
    scalar_weight_decay: float = _f(0.0, "decoupled (AdamW) weight decay on scalars and control vectors", 0.0, 1.0)
    beta1: float = _f(0.9, "Adam beta1", 0.0, 1.0)
    beta2: float = _f(0.95, "Adam beta2", 0.0, 1.0)
    adam_eps: float = _f(1e-8, "Adam epsilon", 0.0, 1.0)


@dataclass(frozen=True)
class QuantConfig(_Group):
    scheme: Literal["baseline", "rowmax"] = _f(
        "baseline", "per-row scale rule of QAT and export: the baseline's (clip at the clip_percentile quantile, "
        "scale floored at 1/qmax, non-matrix tensors per-tensor) or rowmax (scale = row max / qmax, no floor)")
    export_bits: Literal[3, 4, 5, 6, 8, 16] = _f(8, "per-row bits of exported matrices (16 = keep fp16)")
    qat_bits: Literal[0, 3, 4, 5, 6, 8] = _f(0, "STE fake-quant bits during training, 0 = off (#927: 6)")
    qat_start_frac: float = _f(0.0, "QAT switches on after this fraction of training (#927: 0, from the start)", 0.0, 1.0)
    qat_below_lr_scale: float = _f(0.0, "QAT also switches on once the LR multiplier drops below this "
                                   "(0 = off; #1096's 0.5 and #1406's 0.15 reach only their trick projections, not "
                                   "the blocks)", 0.0, 1.0)
    qat_scheme: Literal["export", "baseline", "rowmax"] = _f(
        "export", "per-row scale rule of QAT and the quantization noise in training: export = quant.scheme (the "
        "export's), or a rule of its own where a seed's QAT differs from its export (#927: rowmax in QAT, the "
        "baseline's rule at export)")
    qat_clip_percentile: float = _f(0.0, "per-row |w| percentile of the QAT rule, 0 = quant.clip_percentile", 0.0, 100.0)
    noisy_qat_bits: Literal[0, 3, 4, 5, 6, 8] = _f(
        0, "noise of one quantization step at these bits on the shared blocks' weights in training (#1096: 6)")
    clip_percentile: float = _f(99.99984, "per-row |w| percentile each row is clipped to before rounding "
                                "(baseline 99.99984; 100 = the row's max)", 50.0, 100.0)
    gptq_lite: bool = _f(False, "per-row clip search for least reconstruction error (#927)")
    embed_bits: Literal[3, 4, 5, 6, 8, 16] = _f(8, "per-row bits of embedding tables at export (16 = keep fp16)")
    keep_float_max_numel: int = _f(65536, "tensors with at most this many entries stay float at export "
                                   "(control tensors in fp32, others fp16), as the baseline", 0, None)
    zstd_level: int = _f(22, "zstandard level of the artifact", 1, 22)
    pack: Literal["auto", "dense", "bytes"] = _f(
        "auto", "int code layout: dense bit packing, one byte per code, or auto = whichever compresses smaller "
        "(measured: bytes won for the quick model's int6 matrices alone, dense won for whole artifacts)")
    budget_bytes: int = _f(16_000_000, "artifact budget: code + compressed weights (decimal bytes)", 1, None)

    def qat_rule(self) -> tuple[str, float]:
        """(scheme, clip percentile) of QAT and the training noise: the export's unless set apart."""
        scheme = self.scheme if self.qat_scheme == "export" else self.qat_scheme
        return scheme, self.qat_clip_percentile or self.clip_percentile


@dataclass(frozen=True)
class EvalConfig(_Group):
    seq_len: int = _f(1024, "evaluation window length", 2, 1 << 20)
    stride: int = _f(0, "sliding-window stride, 0 = non-overlapping windows (#927: 64)", 0, 1 << 20)
    batch_tokens: int = _f(524288, "tokens per eval batch", 1, None)
    eval_loops: int = _f(0, "loop count at eval, 0 = as trained (depth extrapolation)", 0, 1024)
    ttt: Literal["off", "score_first", "pre_quant"] = _f(
        "off", "test-time training: legal score-first chunks (#927) or pre-quant adaptation (#1406)")
    ttt_lr: float = _f(0.002, "TTT learning rate (#927: 0.002, #1406: 0.0005)", 0.0, 10.0)
    ttt_epochs: int = _f(3, "TTT epochs per chunk (#927: 3, #1406: 10)", 1, 1000)
    ttt_chunk_tokens: int = _f(32768, "TTT chunk length in tokens (#927: 32768)", 2, None)
    ttt_optimizer: Literal["sgd", "adamw", "muon"] = _f("sgd", "TTT optimizer (muon: Muon for matrices, SGD for the rest)")
    ttt_momentum: float = _f(0.9, "momentum of the SGD/Muon TTT optimizer", 0.0, 1.0)
    ttt_params: Literal["all", "blocks", "lora"] = _f("all", "which parameters TTT adapts")
    ttt_block_lr_min: float = _f(1.0, "lr multiplier of the first block, rising linearly to 1.0 at the last "
                                 "(#1406: 0.3)", 0.0, 1.0)
    ttt_reset: bool = _f(False, "reset the weights before each chunk (False: adaptation carries over)")
    ttt_lr_schedule: Literal["constant", "cosine"] = _f(
        "constant", "score-first TTT lr over the chunks: constant, or cosine from ttt_lr at the first chunk to 0 at "
        "the last (#927)")
    ttt_freeze_blocks: int = _f(0, "the first this many unique blocks stay fixed during TTT (#927: 1)", 0, 1024)
    ttt_grad_clip: float = _f(0.0, "TTT gradient-norm clip, 0 = off (#927: 1.0)", 0.0, None)


@dataclass(frozen=True)
class RunConfig(_Group):
    name: str = _f("run", "run name (folder under out_dir)")
    out_dir: str = _f("runs", "where run folders go (ignored by git)")
    seed: int = _f(1337, "global seed", 0, 2**32 - 1)
    device: Literal["auto", "cpu", "cuda"] = _f("auto", "auto = cuda when available")
    dtype: Literal["auto", "float32", "bfloat16"] = _f("auto", "autocast dtype; auto = bf16 on cuda, fp32 on cpu")
    compile: bool = _f(False, "torch.compile the model")
    fused_head: bool = _f(True, "training loss: softcap + cross-entropy as one fused autograd op (same math; "
                          "fewer passes over the logits, see recur_lib/model/fused.py)")
    nproc: int = _f(1, "torchrun processes per node", 1, 1024)
    tensorboard: bool = _f(False, "also write every metrics.jsonl record as TensorBoard scalars under "
                           "<run_dir>/tensorboard/ (needs pip install 'recur-golf[tensorboard]')")


LORA_TARGETS = ("q", "k", "v", "o", "fc", "proj")  # attention q/k/v/out, MLP in/out
STEP_CONTROLS = ("attn_scale", "mlp_scale", "resid_mix", "q_gain")  # a block's control tensors (model.step_controls)

_GROUPS = {
    "data": DataConfig, "model": ModelConfig, "schedule": ScheduleConfig, "train": TrainConfig,
    "optim": OptimConfig, "quant": QuantConfig, "eval": EvalConfig, "run": RunConfig,
}
_GROUP_NAMES = {cls: name for name, cls in _GROUPS.items()}


# --------------------------------------------------------------------------------------------------
# Validation and value parsing


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_value(path: str, value: Any, tp: Any, meta: Mapping[str, Any]) -> Any:
    """Type- and range-check one value; return it normalised (int -> float, list -> tuple)."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices or isinstance(value, bool) != isinstance(choices[0], bool):
            raise ConfigError(f"{path} = {value!r}: must be one of {list(choices)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            item = getattr(typing.get_args(tp)[0], "__name__", "value")
            raise ConfigError(f"{path} = {value!r}: must be a list of {item} values")
        item_tp = typing.get_args(tp)[0]
        return tuple(_check_value(f"{path}[{i}]", v, item_tp, {}) for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} = {value!r}: must be true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} = {value!r}: must be an integer")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} = {value!r}: must be a number")
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{path} = {value!r}: must be finite")
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} = {value!r}: must be a string")
        return value
    lo, hi = meta.get("lo"), meta.get("hi")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        rng = f"[{lo if lo is not None else '-inf'}, {hi if hi is not None else 'inf'}]"
        raise ConfigError(f"{path} = {value!r}: out of range, allowed {rng}")
    return value


def _validate_group(obj: Any, prefix: str) -> None:
    hints = _hints(type(obj))
    for f in fields(obj):
        v = _check_value(f"{prefix}.{f.name}", getattr(obj, f.name), hints[f.name], f.metadata)
        object.__setattr__(obj, f.name, v)


def parse_value(text: str, tp: Any) -> Any:
    """Parse a CLI/notebook string into the type of a field ("256" -> 256, "4,5" -> (4, 5))."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        for c in typing.get_args(tp):
            if str(c).lower() == text.strip().lower():
                return c
        return text
    if origin is tuple:
        t = text.strip().strip("[]()")
        items = [x.strip(" '\"") for x in t.replace(",", " ").split()] if t else []
        item_tp = typing.get_args(tp)[0]
        return tuple(parse_value(x, item_tp) for x in items)
    if tp is bool:
        low = text.strip().lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        return text
    try:
        if tp is int:
            return int(text.replace("_", ""))
        if tp is float:
            return float(text.replace("_", ""))
    except ValueError:
        return text  # the checker reports it with the field's name
    return text


# --------------------------------------------------------------------------------------------------
# The tree


def _group_field(cls: type) -> Any:
    return field(default_factory=cls)


@dataclass(frozen=True)
class Config:
    data: DataConfig = _group_field(DataConfig)
    model: ModelConfig = _group_field(ModelConfig)
    schedule: ScheduleConfig = _group_field(ScheduleConfig)
    train: TrainConfig = _group_field(TrainConfig)
    optim: OptimConfig = _group_field(OptimConfig)
    quant: QuantConfig = _group_field(QuantConfig)
    eval: EvalConfig = _group_field(EvalConfig)
    run: RunConfig = _group_field(RunConfig)

    def __post_init__(self) -> None:
        for name, cls in _GROUPS.items():
            group = getattr(self, name)
            if not isinstance(group, cls):
                raise ConfigError(f"{name}: expected a {cls.__name__}, got {type(group).__name__}")
        self._check_cross_fields()

    def _check_cross_fields(self) -> None:
        m, s, t, e = self.model, self.schedule, self.train, self.eval

        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(msg)

        check_name(self.run.name, "run.name")
        need(m.dim % m.n_heads == 0, f"model.dim = {m.dim} must be divisible by model.n_heads = {m.n_heads}")
        need((m.dim // m.n_heads) % 2 == 0, f"head dim model.dim/model.n_heads = {m.dim // m.n_heads} must be even (RoPE)")
        need(m.n_heads % m.n_kv_heads == 0,
             f"model.n_kv_heads = {m.n_kv_heads} must divide model.n_heads = {m.n_heads}")
        hd = m.dim // m.n_heads
        need(m.rope_dims % 2 == 0 and m.rope_dims <= hd,
             f"model.rope_dims = {m.rope_dims} must be even and <= the head dim model.dim/model.n_heads = {hd} "
             "(0 = all dims)")
        has_core = s.kind in ("looped", "cyclic", "hybrid") or (s.kind == "repeat" and bool(s.repeat_layers))
        for key, val in (("output_norm", m.output_norm), ("birkhoff_mix", m.birkhoff_mix)):
            need(val != "core" or has_core, f"model.{key} = 'core' needs a schedule with a looped core "
                 f"(schedule.kind = {s.kind!r} has none): use 'all' or 'off'")
        need(m.last_n_unit != "loops" or has_core or not (m.xsa_last_n or m.ve_last_n),
             f"model.last_n_unit = 'loops' needs a schedule with a looped core (schedule.kind = {s.kind!r} has "
             "none): use 'steps'")
        bad_controls = sorted(set(m.step_controls) - set(STEP_CONTROLS))
        need(not bad_controls, f"model.step_controls: unknown {bad_controls}; choose from {list(STEP_CONTROLS)}")
        need(len(set(m.step_controls)) == len(m.step_controls), f"model.step_controls = {list(m.step_controls)} "
             "names a control twice")
        need(not ("resid_mix" in m.step_controls and m.birkhoff_mix != "off"),
             f"model.step_controls keeps a resid_mix per step, which model.birkhoff_mix = {m.birkhoff_mix!r} replaces: "
             "drop resid_mix from one of them")
        need(not (m.ve_steps and m.ve_last_n), f"model.ve_steps = {list(m.ve_steps)} and model.ve_last_n = "
             f"{m.ve_last_n} both place the value embedding: set one of them")
        bad_steps = [i for i in m.ve_steps if i >= self.effective_layers]
        need(not bad_steps, f"model.ve_steps = {list(m.ve_steps)}: steps {bad_steps} are past the schedule's "
             f"{self.effective_layers} steps (0-based)")
        need(m.loop_lora_form == "matrices" or m.loop_lora_rank <= 1,
             f"model.loop_lora_rank = {m.loop_lora_rank} needs model.loop_lora_form = 'matrices' "
             "(the 'vectors' form is rank 1)")
        if s.kind in ("looped", "cyclic"):
            need(s.n_prelude == 0 and s.n_coda == 0,
                 f"schedule.kind = {s.kind!r} shares every block: set schedule.n_prelude = schedule.n_coda = 0 "
                 "or use schedule.kind = 'hybrid'")
        if s.kind == "cyclic":
            need(s.n_loops >= s.n_core, f"schedule.kind = 'cyclic' runs schedule.n_loops = {s.n_loops} applications "
                 f"over schedule.n_core = {s.n_core} blocks: fewer applications than blocks leaves blocks unused")
        bad_targets = sorted(set(m.loop_lora_targets) - set(LORA_TARGETS))
        need(not bad_targets, f"model.loop_lora_targets: unknown {bad_targets}; choose from {list(LORA_TARGETS)}")
        if s.kind == "repeat":
            r = sorted(s.repeat_layers)
            need(r == list(range(r[0], r[-1] + 1)) if r else True,
                 f"schedule.repeat_layers = {list(s.repeat_layers)} must be a contiguous range of blocks "
                 "(the segment runs twice, e.g. (4, 5))")
            bad = [i for i in s.repeat_layers if not 0 <= i < s.n_layers]
            need(not bad, f"schedule.repeat_layers = {list(s.repeat_layers)}: indices {bad} are outside "
                 f"[0, {s.n_layers - 1}] (schedule.n_layers = {s.n_layers})")
            need(len(set(s.repeat_layers)) == len(s.repeat_layers),
                 f"schedule.repeat_layers = {list(s.repeat_layers)} repeats an index")
        if t.loop_sampling != "fixed":
            need(has_core, f"train.loop_sampling = {t.loop_sampling!r} needs a schedule with a looped core "
                 f"(schedule.kind = {s.kind!r} has none)")
            per_loop = [k for k, on in (("model.loop_lora_rank", m.loop_lora_rank), ("model.use_loop_scales",
                        m.use_loop_scales), ("model.use_step_scales", m.use_step_scales),
                        ("model.step_controls", m.step_controls),
                        ("model.use_loop_embedding", m.use_loop_embedding)) if on]
            need(not per_loop, f"train.loop_sampling = {t.loop_sampling!r} needs a model without per-loop "
                 f"parameters (a step with fewer loops leaves them without gradient): turn off {per_loop}")
        need(t.batch_tokens % t.seq_len == 0,
             f"train.batch_tokens = {t.batch_tokens} must be a multiple of train.seq_len = {t.seq_len}")
        need(e.stride <= e.seq_len, f"eval.stride = {e.stride} must be <= eval.seq_len = {e.seq_len}")
        need(not (self.optim.lora_optimizer == "muon" and m.loop_lora_rank and m.loop_lora_form == "vectors"),
             "optim.lora_optimizer = 'muon' needs model.loop_lora_form = 'matrices': Muon orthogonalises "
             "matrices and the 'vectors' form stores 1-D tensors")
        need(t.batch_tokens % (t.seq_len * t.grad_accum_steps * self.run.nproc) == 0,
             f"train.batch_tokens = {t.batch_tokens} must split into whole sequences of train.seq_len = "
             f"{t.seq_len} over run.nproc = {self.run.nproc} ranks x train.grad_accum_steps = {t.grad_accum_steps}")

    # -- derived quantities, computed from the fields (never stored) --
    @property
    def effective_layers(self) -> int:
        s = self.schedule
        if s.kind == "flat":
            return s.n_layers
        if s.kind == "repeat":
            return s.n_layers + len(s.repeat_layers) * (s.n_loops - 1)
        if s.kind == "cyclic":
            return s.n_loops
        return s.n_prelude + s.n_core * s.n_loops + s.n_coda

    @property
    def unique_blocks(self) -> int:
        s = self.schedule
        if s.kind in ("flat", "repeat"):
            return s.n_layers
        return s.n_prelude + s.n_core + s.n_coda

    # -- serialisation --
    def phases(self) -> dict[str, Any]:
        """The run's step-count constants resolved to steps (a `*_frac` field > 0 wins over its step
        count), so a short run and a long one can go through the same phases: LR warmup and warmdown,
        Muon momentum warmup, LoRA warmup, the EMA decay, SWA, late QAT and #1406's repeats."""
        t, o, n = self.train, self.optim, self.train.iterations

        def steps(frac: float, count: int) -> int:
            return math.ceil(frac * n) if frac > 0 else count
        ema = 1.0 - 1.0 / max(self.train.ema_horizon_frac * n, 1.0) if t.ema_horizon_frac > 0 else t.ema_decay
        return {
            "priming_steps": t.warmup_steps,
            "lr_warmup_steps": steps(t.lr_warmup_frac, t.lr_warmup_steps),
            "warmdown_steps": steps(t.warmdown_frac, t.warmdown_iters),
            "muon_momentum_warmup_steps": steps(o.muon_momentum_warmup_frac, o.muon_momentum_warmup_steps),
            "lora_warmup_steps": steps(o.lora_warmup_frac, o.lora_warmup_steps),
            "ema_decay": ema,
            "swa_start_step": math.ceil(t.swa_start_frac * n) if t.swa_start_frac > 0 else None,
            "qat_start_step": math.ceil(self.quant.qat_start_frac * n) if self.quant.qat_bits else None,
            "repeat_start_step": math.ceil(self.schedule.repeat_start_frac * n),
        }

    def schedule_warnings(self) -> list[str]:
        """Phases that silently reshape the LR schedule: a warmdown as long as the run or longer, so the
        LR falls from step 0. With a wall-clock cap the warmdown follows the clock, so a run that fits
        fewer steps than the warmdown in its time is also in warmdown from the start; that depends on
        the pace and is not known here."""
        n, wd, cap = self.train.iterations, self.phases()["warmdown_steps"], self.train.max_wallclock_s
        if wd > n:
            msg = (f"the warmdown ({wd} steps) is longer than the run (train.iterations = {n}): the LR multiplier "
                   f"starts at {n / wd:.3g}, not 1, and falls from step 0")
            if cap > 0:
                msg += (f"; with train.max_wallclock_s = {cap:g} the steps after 0 follow the clock: the run is in "
                        f"warmdown throughout if fewer than {wd} steps fit in that time")
            return [msg]
        if wd == n:
            return [f"the warmdown covers the whole run ({wd} steps = train.iterations): the LR multiplier falls "
                    "from 1 at step 0, with no constant phase"]
        return []

    def to_dict(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name in _GROUPS:
            g = getattr(self, name)
            out[name] = {f.name: (list(v) if isinstance(v := getattr(g, f.name), tuple) else v) for f in fields(g)}
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Config":
        if not isinstance(d, Mapping):
            raise ConfigError(f"a config must be a mapping of groups, got {type(d).__name__}")
        groups = {}
        for name, sub in d.items():
            if name not in _GROUPS:
                raise ConfigError(f"unknown config group {name!r}{_suggest(name, _GROUPS)}; groups: {list(_GROUPS)}")
            if not isinstance(sub, Mapping):
                raise ConfigError(f"{name}: expected a mapping of fields, got {type(sub).__name__}")
            gcls = _GROUPS[name]
            names = {f.name for f in fields(gcls)}
            for k in sub:
                if k not in names:
                    raise ConfigError(f"unknown config key {name}.{k}{_suggest(k, names, name + '.')}")
            groups[name] = gcls(**sub)
        return cls(**groups)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_json(cls, text: str) -> "Config":
        return cls.from_dict(json.loads(text, object_pairs_hook=_unique_keys))

    def save(self, path: str | Path) -> None:
        atomic_write(path, self.to_json() + "\n")

    @classmethod
    def load(cls, path: str | Path, strict: bool = False) -> "Config":
        """A config from a JSON file. Fields the file does not set take the baseline defaults: named in a
        ConfigWarning, or refused with strict=True (a config written by an older version lacks newer
        fields, whose defaults may not be what it ran with)."""
        path = Path(path)
        try:
            d = json.loads(path.read_bytes().decode("utf-8"), object_pairs_hook=_unique_keys)
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason}); a config is a JSON file, as "
                              "Config.save or `recur config show --json` write it") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        cfg = cls.from_dict(d)
        missing = [k for k in all_keys() if k.split(".")[1] not in d.get(k.split(".")[0], {})]
        if missing and strict:
            raise ConfigError(f"{path}: {len(missing)} fields are not set ({', '.join(missing[:8])}"
                              f"{', ...' if len(missing) > 8 else ''}); set them (`recur config show --json` prints a "
                              "complete config) or load without strict to take the baseline defaults")
        if missing:
            warnings.warn(f"{path}: {len(missing)} fields not set take the baseline defaults: {', '.join(missing[:8])}"
                          f"{', ...' if len(missing) > 8 else ''}", ConfigWarning, stacklevel=2)
        return cfg

    # -- overrides --
    def override(self, overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> "Config":
        """A new Config with dotted overrides applied: {"model.dim": 256} or model__dim=256.

        String values are parsed by the field's type, so CLI `--set` strings and typed notebook
        parameters both work.
        """
        items = dict(overrides or {})
        items.update({k.replace("__", "."): v for k, v in kwargs.items()})
        d = self.to_dict()
        for key, value in items.items():
            group, _, name = key.partition(".")
            if group not in _GROUPS or not name:
                raise ConfigError(f"override key {key!r} must be 'group.field' with group in {list(_GROUPS)}"
                                  f"{_suggest(key, all_keys())}")
            hints = _hints(_GROUPS[group])
            if name not in hints:
                raise ConfigError(f"unknown config key {key}{_suggest(key, all_keys())}")
            d[group][name] = parse_value(value, hints[name]) if isinstance(value, str) else value
        return Config.from_dict(d)

    @classmethod
    def from_name(cls, name: str, overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> "Config":
        """A named preset (see PRESETS) with optional dotted overrides on top."""
        if name not in PRESETS:
            raise ConfigError(f"unknown preset {name!r}{_suggest(name, PRESETS)}; presets: {list(PRESETS)}")
        return cls().override(resolve_preset(name)).override(overrides, **kwargs)

    def diff(self, other: "Config | None" = None) -> dict[str, Any]:
        """Dotted keys whose values differ from `other` (default: the baseline defaults)."""
        a, b = self.to_dict(), (other or Config()).to_dict()
        return {f"{g}.{k}": v for g in a for k, v in a[g].items() if b[g][k] != v}


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads' object_pairs_hook for an object whose keys appear once: json would keep the last of two,
    silently (config files here; the seeds' facts files in seed_facts)."""
    keys = [k for k, _ in pairs]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        raise ConfigError(f"duplicate keys {dup}: key {dup[0]!r} appears twice in one JSON object; keep one")
    return dict(pairs)


def check_name(name: str, what: str) -> str:
    """A name that becomes one file or folder name (run.name, `recur eval --name`): not empty, no path
    separator, not '.' or '..', so nothing is written outside the folder meant for it."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        raise ConfigError(f"{what} = {name!r}: must be one folder or file name (not empty, '.' or '..', no '/' "
                          "or '\\'); use run.out_dir or --run-dir to choose where it goes")
    return name


def all_keys() -> list[str]:
    """Every dotted config key, for help and error suggestions."""
    return [f"{g}.{f.name}" for g, cls in _GROUPS.items() for f in fields(cls)]


def describe_fields() -> str:
    """Help text for every field: key, type, default, range."""
    lines = []
    for g, cls in _GROUPS.items():
        hints = _hints(cls)
        for f in fields(cls):
            lo, hi = f.metadata.get("lo"), f.metadata.get("hi")
            rng = f" [{lo}, {hi if hi is not None else 'inf'}]" if lo is not None else ""
            tp = hints[f.name]
            tname = getattr(tp, "__name__", str(tp).replace("typing.", ""))
            lines.append(f"{g}.{f.name} ({tname}{rng}) = {f.default!r}: {f.metadata.get('help', '')}")
    return "\n".join(lines)


def _suggest(word: str, options: Any, prefix: str = "") -> str:
    close = difflib.get_close_matches(word, [str(o) for o in options], n=1)
    return f" (did you mean {prefix}{close[0]!r}?)" if close else ""
