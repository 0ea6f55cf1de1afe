"""Named presets: dotted overrides on top of the baseline defaults in `config.py`.

    Config.from_name("seed-1096-quick")        # a seed's shape at the quick preset's size
    preset_sources("seed-1096")                # where each of its values comes from

`PRESETS` maps a name to (base preset or None, overrides). The seed presets ("seed-N") follow the
public pull requests in `SEEDS` (read from their code, logs and texts on GitHub); each
of their values says where it comes from: the PR's code (or its training log), the PR's text, or
assumed where the PR is silent; a key the seed does not set keeps the baseline's value, as its PR
did. "seed-N-smoke|quick|cpu" are the same shapes scaled down for CPU (`_scaled_seed`), with the
seed's step-count constants turned into fractions of its own full run, so a 250-step run goes
through the same phases (momentum warmup, warmdown, EMA horizon) as the seed's few thousand steps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PR_URL = "https://github.com/openai/parameter-golf/pull/{}"

# The baseline record's run: 13,780 steps in 600 s on 8xH100 (its train log), the full run that the
# baseline's step constants (warmdown 1200, momentum warmup 500) were set for.
BASELINE_RUN_STEPS = 13780
# The baseline defaults of the step constants the scaled presets turn into fractions (a test keeps
# them equal to config.py's defaults).
BASELINE_STEP_CONSTANTS = {"train.warmdown_iters": 1200, "optim.muon_momentum_warmup_steps": 500,
                           "train.lr_warmup_steps": 0, "optim.lora_warmup_steps": 0}
STEP_FRACTIONS = {"train.warmdown_iters": "train.warmdown_frac",
                  "optim.muon_momentum_warmup_steps": "optim.muon_momentum_warmup_frac",
                  "train.lr_warmup_steps": "train.lr_warmup_frac", "optim.lora_warmup_steps": "optim.lora_warmup_frac"}


@dataclass(frozen=True)
class Sourced:
    """A preset value and where it comes from: "PR code", "PR text" or "assumed"."""
    value: Any
    source: str


def code(value: Any) -> Sourced:
    return Sourced(value, "PR code")


def text(value: Any) -> Sourced:
    return Sourced(value, "PR text")


def assumed(value: Any) -> Sourced:
    return Sourced(value, "assumed")


@dataclass(frozen=True)
class Seed:
    """A public Parameter Golf submission this project starts from."""
    pr: int
    claim: str       # the PR's headline claim, in one line
    preset: str      # our preset of its configuration
    run_steps: Sourced  # optimizer steps of the PR's full 600 s run

    @property
    def url(self) -> str:
        return PR_URL.format(self.pr)


SEEDS = (
    Seed(927, "4 shared blocks x 7 loops at d 1024 with VE, int6 QAT and score-first TTT: val_bpb 1.1696 "
              "(3-seed mean), 15.85 MB", "seed-927", assumed(3500)),
    Seed(1406, "11 layers with blocks 4-5 repeated, discriminative pre-quant TTT: val_bpb 1.0887 (3-seed mean)",
         "seed-1406", assumed(4900)),
    Seed(341, "unique first and last layers around a shared core remove the int8 gap of pure recurrence "
              "(+0.40 -> -0.004 bpb)", "seed-341", text(954)),
    Seed(1096, "rank-1 per-loop deltas on AdamW: val_bpb 1.3342; rank-8 deltas on Muon diverged", "seed-1096",
         code(4769)),
)

# Our presets size CPU runs (their values are ours: no source); the seeds' carry one per value.
PRESETS: dict[str, tuple[str | None, dict[str, Any]]] = {
    # The parameter-golf baseline train_gpt.py: every default.
    "pg-baseline": (None, {}),
    # Tests: a forward/backward pass in well under a second on one CPU core.
    "smoke": ("pg-baseline", {
        "model.dim": 32, "model.n_heads": 2, "model.n_kv_heads": 1,
        "schedule.kind": "hybrid", "schedule.n_prelude": 1, "schedule.n_core": 1, "schedule.n_loops": 2,
        "schedule.n_coda": 1,
        "train.iterations": 4, "train.batch_tokens": 512, "train.seq_len": 64, "train.warmup_steps": 0,
        "train.lr_warmup_steps": 1,
        "train.warmdown_iters": 2, "train.max_wallclock_s": 0.0, "train.log_every": 1,
        "eval.seq_len": 64, "eval.batch_tokens": 4096, "data.val_max_tokens": 8192,
        "eval.ttt_chunk_tokens": 512, "quant.keep_float_max_numel": 256,
        "run.device": "cpu", "run.dtype": "float32",
    }),
    # The default workbook: every notebook together well under 30 minutes on 2 CPU cores (about 0.2 s
    # per step for this shape on our 2-core machines). The baseline's phases as fractions of its
    # 13,780-step record run; no priming (nothing to compile on CPU) and, as the baseline, no LR warmup.
    "quick": ("pg-baseline", {
        "model.dim": 64, "model.n_heads": 4, "model.n_kv_heads": 2,
        "schedule.kind": "hybrid", "schedule.n_prelude": 1, "schedule.n_core": 2, "schedule.n_loops": 3,
        "schedule.n_coda": 1,
        "train.iterations": 150, "train.batch_tokens": 4096, "train.seq_len": 128, "train.warmup_steps": 0,
        "train.warmdown_frac": 1200 / BASELINE_RUN_STEPS, "optim.muon_momentum_warmup_frac": 500 / BASELINE_RUN_STEPS,
        "train.max_wallclock_s": 0.0, "train.log_every": 10, "train.val_every": 50,
        "eval.seq_len": 128, "eval.batch_tokens": 16384, "data.val_max_tokens": 65536,
        "eval.ttt_chunk_tokens": 2048, "quant.keep_float_max_numel": 1024,  # small models: quantize their blocks
        "data.seed_offset": True,  # each seed reads another part of the train stream: seeds vary the data too
        "run.device": "cpu", "run.dtype": "float32",
    }),
    # Published CPU results (`make workbook-cpu`: every notebook, 3 seeds). The quick model trained 5/3 as
    # long on twice the validation tokens: the 2-core budget buys seeds and arms rather than width (dim
    # 256 at seq 512 measured ~1.7k tok/s, about 10 h per run).
    "cpu": ("quick", {
        "train.iterations": 250, "train.val_every": 125, "data.val_max_tokens": 131072,
    }),
    # PR #927: 4 shared blocks x 7 loops at dim 1024, int6 QAT from step 0, GPTQ-lite int8, score-first TTT.
    "seed-927": ("pg-baseline", {
        "model.dim": text(1024), "model.n_heads": text(32), "model.n_kv_heads": text(8),
        "schedule.kind": text("looped"), "schedule.n_core": text(4), "schedule.n_loops": text(7),
        "model.unet_encoder_steps": text(12),  # 3 encoder loops x 4 blocks
        "model.last_n_unit": text("loops"), "model.xsa_last_n": text(4), "model.ve_last_n": text(2),
        "model.ve_dim": text(128), "model.use_smear_gate": text(True),
        "model.bigram_buckets": text(10240), "model.bigram_dim": text(128),
        "train.seq_len": text(2048), "train.warmup_steps": text(100), "train.warmdown_iters": text(3500),
        "train.grad_clip": text(0.3), "train.swa_start_frac": text(0.2), "train.swa_every": text(50),
        "optim.matrix_lr": text(0.02), "optim.scalar_lr": text(0.01), "optim.tied_embed_lr": text(0.02),
        "optim.muon_momentum": text(0.99), "optim.weight_decay": text(0.04),
        "quant.qat_bits": text(6), "quant.export_bits": text(8), "quant.gptq_lite": text(True),
        "quant.scheme": assumed("baseline"),  # its script is the baseline's; the export code was not checked
        # Its train_gpt.py (records/track_10min_16mb/2026-03-26_RecursiveTransformer_4B7L_VE_QAT_TTT, PR head
        # 64490b1) scores at the training length (no eval length of its own) with SLIDING_WINDOW_STRIDE=64, and
        # runs TTT with SGD at momentum 0.9 over 32,768-token chunks, a cosine lr over the chunks, its first
        # shared block frozen and the gradient norm clipped at 1.0, each chunk split over the ranks.
        "eval.seq_len": code(2048), "eval.stride": code(64), "eval.ttt": code("score_first"),
        "eval.ttt_lr": code(0.002), "eval.ttt_epochs": code(3), "eval.ttt_chunk_tokens": code(32768),
        "eval.ttt_optimizer": code("sgd"), "eval.ttt_momentum": code(0.9), "eval.ttt_lr_schedule": code("cosine"),
        "eval.ttt_freeze_blocks": code(1), "eval.ttt_grad_clip": code(1.0),
    }),
    # PR #1406 and its records lineage (2026-04-03_MuonEqR_DepthRecurrence_WD090_AllInt6): 11 blocks,
    # 4-5 run twice, MuonEq-R, late QAT, EMA + SWA, discriminative pre-quant TTT.
    "seed-1406": ("pg-baseline", {
        "schedule.kind": text("repeat"), "schedule.n_layers": text(11), "schedule.repeat_layers": text((4, 5)),
        "schedule.n_loops": text(2),
        "model.qk_gain_init": text(5.0), "model.xsa_last_n": text(4), "model.ve_last_n": text(2),
        "model.bigram_buckets": text(1536), "model.mlp_mult": text(3.0), "model.rope_dims": text(16),
        "model.ln_scale": text(True),
        "train.seq_len": text(2048), "train.warmdown_iters": text(3500), "train.grad_clip": text(0.3),
        "train.ema_decay": assumed(0.997), "train.swa_start_frac": assumed(0.2), "train.swa_every": assumed(50),
        "optim.matrix_lr": text(0.025), "optim.weight_decay": text(0.04), "optim.muon_row_normalize": text(True),
        "optim.muon_momentum": text(0.99), "optim.muon_momentum_warmup_start": text(0.92),
        "optim.muon_momentum_warmup_steps": text(1500),
        "quant.qat_bits": text(6), "quant.qat_start_frac": text(1.0), "quant.qat_below_lr_scale": text(0.15),
        "quant.export_bits": text(6), "quant.embed_bits": assumed(8), "quant.gptq_lite": assumed(True),
        "quant.scheme": assumed("rowmax"),  # "AllInt6" GPTQ-style export, not the baseline's int8 rule
        "eval.stride": text(64), "eval.ttt": text("pre_quant"), "eval.ttt_lr": text(0.0005),
        "eval.ttt_epochs": text(10), "eval.ttt_optimizer": text("adamw"), "eval.ttt_block_lr_min": text(0.3),
    }),
    # PR #341 (its records folder's train_gpt.py): 1 unique + 4 shared x 5 loops + 1 unique at d 768,
    # the baseline's int8 export with tok_emb kept in fp16; 954 steps on 2xH100.
    "seed-341": ("pg-baseline", {
        "model.dim": code(768), "model.n_heads": code(12), "model.n_kv_heads": code(4),
        "schedule.kind": code("hybrid"), "schedule.n_prelude": code(1), "schedule.n_core": code(4),
        "schedule.n_loops": code(5), "schedule.n_coda": code(1),
        "model.use_step_scales": assumed(True), "model.step_scale_clamp": assumed(1e6),  # "per-virtual-layer scalars"
        "optim.matrix_lr": code(0.03), "optim.weight_decay": code(0.02), "train.warmdown_iters": code(2500),
        "quant.scheme": code("baseline"), "quant.export_bits": code(8), "quant.embed_bits": code(16),
        "eval.stride": text(64),
    }),
    # PR #1096 (the author's branch, records/.../2026-03-30_UT_Rank1LoRA_OutputLN_Birkhoff: README,
    # train_gpt.py, train log): 1 + 4 shared x 3 + 1 at d 640 with Output-LN, Birkhoff mixing and
    # clamped per-step scales; rank-1 per-loop deltas on AdamW; noisy int6 QAT on the shared blocks.
    "seed-1096": ("pg-baseline", {
        "model.dim": code(640), "model.n_heads": code(10), "model.n_kv_heads": code(5), "model.mlp_mult": code(3.0),
        "model.mlp_act": code("leaky_relu2"), "model.output_norm": code("core"), "model.birkhoff_mix": code("core"),
        "model.use_step_scales": code(True), "model.step_scale_clamp": code(4.0),
        "model.xsa_last_n": code(13),  # every step but the prelude (its log: active_blocks [1..5])
        "model.rope_dims": code(16), "model.ln_scale": code(True),  # the code's defaults; the log does not print them
        "model.bigram_buckets": code(3072), "model.bigram_dim": assumed(128),
        # not expressible here: value embeddings at steps 9-10 only, with per-layer scales (its code)
        "schedule.kind": code("hybrid"), "schedule.n_prelude": code(1), "schedule.n_core": code(4),
        "schedule.n_loops": code(3), "schedule.n_coda": code(1),
        "model.loop_lora_rank": code(1), "model.loop_lora_form": code("vectors"),
        "model.loop_lora_targets": code(("q", "v", "fc", "proj")),
        "optim.lora_optimizer": code("adamw"), "optim.lora_lr": code(0.025),
        "train.seq_len": code(2048), "train.grad_clip": code(0.3), "train.ema_decay": code(0.997),
        "train.swa_start_frac": assumed(0.2), "train.swa_every": assumed(50),
        "optim.matrix_lr": code(0.010), "optim.scalar_lr": code(0.025), "optim.weight_decay": code(0.04),
        "optim.muon_momentum": code(0.99), "optim.muon_momentum_warmup_start": code(0.92),
        "optim.muon_momentum_warmup_steps": code(1500),
        "quant.noisy_qat_bits": code(6), "quant.qat_bits": code(6), "quant.qat_start_frac": code(1.0),
        "quant.qat_below_lr_scale": code(0.5),
        # Its export: attention and MLP matrices int6 per row with the scale floored at 1/31 (the baseline
        # rule at 6 bits, also its QAT's), the embedding by the baseline's int8 rule. Not expressible here:
        # full GPTQ with Hessians and a per-tensor clip search over 5 percentiles, and lzma (preset 6)
        # where we use zstd-22.
        "quant.export_bits": code(6), "quant.embed_bits": code(8), "quant.scheme": code("baseline"),
        "eval.ttt": code("score_first"),
    }),
}


def preset_sources(name: str) -> dict[str, str]:
    """Where each value a seed preset sets comes from ("PR code", "PR text", "assumed"); keys it does not
    set keep the baseline's value. Empty for our own presets."""
    base_name = SCALED_SEEDS[name][0] if name in SCALED_SEEDS else name
    _, overrides = PRESETS[base_name]
    return {k: v.source for k, v in overrides.items() if isinstance(v, Sourced)}


def sources_markdown() -> str:
    """The README's per-seed provenance list: every value each seed preset sets, by source."""
    lines = []
    for seed in SEEDS:
        src = preset_sources(seed.preset)
        values = _plain(PRESETS[seed.preset][1])
        lines.append(f"- **{seed.preset}** (#{seed.pr}, full run {seed.run_steps.value} steps: "
                     f"{seed.run_steps.source})")
        for source in ("PR code", "PR text", "assumed"):
            keys = [k for k in values if src.get(k) == source]
            if keys:
                lines.append(f"  - {source}: " + ", ".join(f"`{k}={values[k]!r}`" for k in keys))
    return "\n".join(lines)


def _plain(overrides: dict[str, Any]) -> dict[str, Any]:
    return {k: v.value if isinstance(v, Sourced) else v for k, v in overrides.items()}


def _scaled_seed(seed: str, size: str) -> dict[str, Any]:
    """A seed preset at the quick/cpu preset's size: same schedule and tricks, smaller width, the size
    preset's training/eval budget, the seed's ratio of query to KV heads, and the seed's step-count
    constants as fractions of its full run (so a short run passes through the same phases)."""
    seed_over = resolve_preset(seed)
    run_steps = next(s.run_steps.value for s in SEEDS if s.preset == seed)
    size_over = {k: v for k, v in resolve_preset(size).items()
                 if not k.startswith("schedule.") and k not in STEP_FRACTIONS.values()}
    heads = size_over["model.n_heads"]
    ratio = seed_over.get("model.n_heads", 8) // seed_over.get("model.n_kv_heads", 4)
    merged = {**seed_over, **size_over, "model.n_kv_heads": max(1, heads // ratio)}
    for key, frac_key in STEP_FRACTIONS.items():
        steps = seed_over.get(key, BASELINE_STEP_CONSTANTS[key])
        merged[frac_key] = min(1.0, steps / run_steps)
    if seed_over.get("train.ema_decay"):
        merged["train.ema_horizon_frac"] = min(1.0, 1.0 / (1.0 - seed_over["train.ema_decay"]) / run_steps)
    merged["train.warmup_steps"] = 0  # priming compiles kernels: nothing to compile on CPU
    small = size_over["model.dim"] // 4
    if merged.get("model.bigram_buckets"):
        merged["model.bigram_buckets"] = min(merged["model.bigram_buckets"], 2048)
        merged["model.bigram_dim"] = small
    merged["model.ve_dim"] = small
    return merged


def resolve_preset(name: str) -> dict[str, Any]:
    """A preset's dotted overrides on top of the baseline defaults, its base presets' included."""
    if name in SCALED_SEEDS:
        return _scaled_seed(*SCALED_SEEDS[name])
    base, overrides = PRESETS[name]
    merged = resolve_preset(base) if base else {}
    merged.update(_plain(overrides))
    return merged


# Scaled-down seeds for CPU: "seed-927-quick", "seed-927-cpu", ...
SCALED_SEEDS = {f"{seed}-{size}": (seed, size) for seed in ("seed-927", "seed-1406", "seed-341", "seed-1096")
                for size in ("smoke", "quick", "cpu")}


def seed_preset(seed: str, size: str) -> str:
    """The preset of a seed's shape at a size: ("seed-1096", "quick") -> "seed-1096-quick";
    size "full" (GPU) -> the seed itself."""
    name = seed if size == "full" else f"{seed}-{size}"
    if name not in PRESETS:
        raise ValueError(f"no preset {name!r}: size must be one of smoke, quick, cpu, full")
    return name
PRESETS.update({name: (None, {}) for name in SCALED_SEEDS})  # resolved by _scaled_seed


def preset_names() -> list[str]:
    return list(PRESETS)
