"""Named presets: dotted overrides on top of the baseline defaults in `config.py`.

    Config.from_name("seed-1096-quick")        # a seed's shape at the quick preset's size
    recur config show --preset seed-1096       # every field: ours, the PR's, where the PR writes it

`PRESETS` maps a name to (base preset or None, overrides). A seed preset "seed-N" is what PR #N's own
train_gpt.py ran, read at the head commit in `SEEDS`: its facts, one value per config field with the
file:line where it is written, are in reference/seeds/<N>.json, and `DEVIATIONS` names every field where
the preset differs from them, with the reason. tests/test_seed_facts.py compares every seed preset with
its facts field by field and fails on any difference no deviation names (`seed_facts.unexplained`).
"seed-N-smoke|quick|cpu" are the same shapes scaled down for CPU (`_scaled_seed`), with the seed's
step-count constants turned into fractions of its own full run (from its train logs), so a 250-step
run goes through the same phases (momentum warmup, warmdown, EMA horizon) as the seed's thousands.
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
class Seed:
    """A public Parameter Golf submission this project starts from."""
    pr: int
    claim: str       # the PR's headline claim, in one line (with what its code shows, where they differ)
    preset: str      # our preset of what its code ran
    head: str        # the PR head commit its facts file (reference/seeds/<pr>.json) was read at
    run_steps: int   # optimizer steps of its full run: the mean over its train logs (facts: run_steps)

    @property
    def url(self) -> str:
        return PR_URL.format(self.pr)


SEEDS = (
    Seed(927, "4 shared blocks cycled over 7 layers at d 1024 with VE, int6 QAT and score-first TTT: val_bpb 1.1696 "
              "(3-seed mean), 15.85 MB", "seed-927", "64490b14a165c0f0df67d0b5c59cbe5453fdfd13", 5965),
    Seed(1406, "11 layers with blocks 4-5 run again after the stack, discriminative pre-quant TTT: val_bpb 1.0887 "
               "(3-seed mean); not valid for records (it adapts on validation tokens before scoring them: "
               "`seed-1406-legal` is the rest of its stack)", "seed-1406", "dd52bdd22704aafd079fc34af03091e122dffc2d",
         6157),
    Seed(341, "unique first and last layers around a shared core remove the int8 gap of pure recurrence "
              "(+0.40 -> -0.004 bpb)", "seed-341", "c821a8c4d174b0ae69ef75a42c7d1a4a40c12f18", 954),
    Seed(1096, "rank-1 per-loop deltas on AdamW: val_bpb 1.3342; rank-8 deltas on Muon diverged", "seed-1096",
         "35488484b1cc58291c0c8eedeb890d4957fefb7c", 4769),
)
# The leaderboard's loop since April 2026 (#1855, #2135: layers 3-5 three times, switched on at 35% of the
# training time), read from #2135's code: the facts pg-miniloop is checked against.
MINILOOP_PR, MINILOOP_HEAD = 2135, "ff905226136eb2506fe9505feff87f58eb6dc4ff"

# Our presets size CPU runs (their values are ours); the seed presets are their PRs' code (facts files).
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
    # The baseline with the leaderboard's middle-layer loop (#2135, #1855): blocks 3-5 run three times in place,
    # from 35% of the training time (of the steps when there is no wall-clock cap). Nothing else of those
    # records' stacks (reference/seeds/2135.json "stack_not_included": SP8192, 11 layers, GPTQ, TTT, ...).
    "pg-miniloop": ("pg-baseline", {
        "schedule.kind": "repeat", "schedule.repeat_layers": (3, 4, 5), "schedule.n_loops": 3,
        "schedule.repeat_start_frac": 0.35, "schedule.repeat_start_unit": "clock",
    }),
    # PR #927 (records/.../2026-03-26_RecursiveTransformer_4B7L_VE_QAT_TTT): 4 shared blocks applied 7 times in
    # all (0 1 2 3 0 1 2) at d 1024, per-application scales and mixes, partial RoPE, XSA everywhere, VE on the
    # last 2 applications, int6 QAT (row max) from step 0, int6 export (the baseline's rule), SWA below LR
    # scale 0.2, score-first TTT.
    "seed-927": ("pg-baseline", {
        "model.dim": 1024, "model.n_heads": 32, "model.n_kv_heads": 8,
        "schedule.kind": "cyclic", "schedule.n_core": 4, "schedule.n_loops": 7,
        "model.step_controls": ("attn_scale", "mlp_scale", "resid_mix"),
        "model.rope_dims": 16, "model.rope_base": 100.0, "model.unet_encoder_steps": 3,
        "model.xsa_last_n": 7, "model.ve_last_n": 2, "model.use_smear_gate": True, "model.bigram_buckets": 10240,
        "train.seq_len": 2048, "train.warmup_steps": 100, "train.warmdown_iters": 3500, "train.grad_clip": 0.3,
        "train.swa_below_lr_scale": 0.2,
        "optim.matrix_lr": 0.02, "optim.scalar_lr": 0.01, "optim.tied_embed_lr": 0.02, "optim.muon_momentum": 0.99,
        "optim.weight_decay": 0.04, "optim.embed_weight_decay": 0.04, "optim.scalar_weight_decay": 0.04,
        "quant.qat_bits": 6, "quant.qat_scheme": "rowmax", "quant.qat_clip_percentile": 100.0,
        "quant.export_bits": 6, "quant.gptq_lite": True,
        "eval.seq_len": 2048, "eval.stride": 64, "eval.ttt": "score_first", "eval.ttt_lr_schedule": "cosine",
        "eval.ttt_freeze_blocks": 1, "eval.ttt_grad_clip": 1.0,
    }),
    # PR #1406 (records/.../2026-04-06_DepthRecurrence_PreQuantTTT_11L_8xH100): 11 blocks, then blocks 4-5 once
    # more after the stack; XSA and VE on the last blocks by index; EMA exported; pre-quant TTT on the
    # validation text, which makes it invalid for records (seed-1406-legal leaves it out).
    "seed-1406": ("pg-baseline", {
        "schedule.kind": "repeat", "schedule.n_layers": 11, "schedule.repeat_layers": (4, 5), "schedule.n_loops": 2,
        "schedule.repeat_at": "after",
        "model.qk_gain_init": 5.0, "model.mlp_mult": 3.0, "model.mlp_act": "leaky_relu2", "model.rope_dims": 16,
        "model.rope_base": 10000 * 2 ** (16 / 14),  # its RoPE rescales base 10000 for length 2048 (NTK), always
        "model.ln_scale": True, "model.unet_encoder_steps": 5, "model.last_n_unit": "blocks",
        "model.xsa_last_n": 4, "model.ve_last_n": 2, "model.use_smear_gate": True, "model.bigram_buckets": 1536,
        "train.iterations": 9000, "train.batch_tokens": 786432, "train.seq_len": 2048, "train.max_wallclock_s": 599.0,
        "train.warmdown_iters": 3500, "train.grad_clip": 0.3, "train.ema_decay": 0.997,
        "train.swa_below_lr_scale": 0.2, "train.eval_weights": "ema",  # SWA is collected, then not used
        "optim.matrix_lr": 0.025, "optim.scalar_lr": 0.025, "optim.tied_embed_lr": 0.035,
        "optim.muon_momentum": 0.99, "optim.muon_momentum_warmup_start": 0.92, "optim.muon_momentum_warmup_steps": 1500,
        "optim.weight_decay": 0.04, "optim.embed_weight_decay": 0.04, "optim.scalar_weight_decay": 0.04,
        "quant.export_bits": 6, "quant.gptq_lite": True,
        "eval.seq_len": 2048, "eval.stride": 64, "eval.ttt": "pre_quant", "eval.ttt_lr": 0.0005, "eval.ttt_epochs": 10,
        "eval.ttt_optimizer": "adamw", "eval.ttt_block_lr_min": 0.3, "eval.ttt_lr_schedule": "cosine",
        "eval.ttt_grad_clip": 1.0,
    }),
    # seed-1406 without what the maintainers ruled out: no pre-quant TTT on the validation tokens.
    "seed-1406-legal": ("seed-1406", {"eval.ttt": "off"}),
    # PR #341 (records/.../2026-03-21_HybridDepthRecurrent): 1 unique + 4 shared x 5 loops + 1 unique at d 768,
    # every control tensor per effective layer, the baseline's int8 export with tok_emb kept in fp16; 954 steps
    # on 2xH100.
    "seed-341": ("pg-baseline", {
        "model.dim": 768, "model.n_heads": 12, "model.n_kv_heads": 4,
        "schedule.kind": "hybrid", "schedule.n_prelude": 1, "schedule.n_core": 4, "schedule.n_loops": 5,
        "schedule.n_coda": 1, "model.step_controls": ("attn_scale", "mlp_scale", "resid_mix", "q_gain"),
        "train.warmdown_iters": 2500,
        "optim.matrix_lr": 0.03, "optim.scalar_lr": 0.03, "optim.tied_embed_lr": 0.04, "optim.weight_decay": 0.02,
        "optim.embed_weight_decay": 0.01, "optim.scalar_weight_decay": 0.01,
        "quant.export_bits": 8, "quant.embed_bits": 16, "eval.stride": 64,
    }),
    # PR #1096 (the PR's records/.../2026-03-30_UT_Rank1LoRA_OutputLN_Birkhoff): 1 + 4 shared x 3 + 1 at d 640 with
    # Output-LN, Birkhoff mixing and clamped per-step scales; rank-1 per-loop deltas in the scalar AdamW group;
    # int6 noise on the shared blocks; EMA exported; scored by a stride-64 window at length 2,048, no TTT.
    "seed-1096": ("pg-baseline", {
        "model.dim": 640, "model.n_heads": 10, "model.n_kv_heads": 5, "model.mlp_mult": 3.0,
        "model.mlp_act": "leaky_relu2", "model.output_norm": "core", "model.birkhoff_mix": "core",
        "model.use_step_scales": True, "model.step_scale_clamp": 4.0, "model.xsa_last_n": 13,
        "model.rope_dims": 16, "model.ln_scale": True, "model.bigram_buckets": 3072, "model.use_smear_gate": True,
        "model.ve_steps": (9, 10), "model.use_unet_skips": False,
        "schedule.kind": "hybrid", "schedule.n_prelude": 1, "schedule.n_core": 4, "schedule.n_loops": 3,
        "schedule.n_coda": 1,
        "model.loop_lora_rank": 1, "model.loop_lora_form": "vectors", "model.loop_lora_targets": ("q", "v", "fc", "proj"),
        "optim.lora_optimizer": "adamw", "optim.lora_lr": 0.025, "optim.lora_weight_decay": 0.04,
        "train.seq_len": 2048, "train.warmdown_iters": 3000, "train.grad_clip": 0.3, "train.ema_decay": 0.997,
        "train.swa_below_lr_scale": 0.2, "train.eval_weights": "ema",  # SWA is collected, then not used
        "optim.matrix_lr": 0.010, "optim.scalar_lr": 0.025, "optim.tied_embed_lr": 0.035, "optim.weight_decay": 0.04,
        "optim.embed_weight_decay": 0.04, "optim.scalar_weight_decay": 0.04,
        "optim.muon_momentum": 0.99, "optim.muon_momentum_warmup_start": 0.92, "optim.muon_momentum_warmup_steps": 1500,
        "quant.noisy_qat_bits": 6, "quant.qat_scheme": "rowmax", "quant.qat_clip_percentile": 100.0,
        "quant.qat_start_frac": 1.0, "quant.qat_below_lr_scale": 0.5,  # its late QAT reaches no block matrix
        "quant.export_bits": 6, "quant.embed_bits": 8, "quant.gptq_lite": True,
        "eval.seq_len": 2048, "eval.stride": 64,
        "eval.ttt_lr_schedule": "cosine", "eval.ttt_freeze_blocks": 2, "eval.ttt_grad_clip": 1.0,  # set; TTT is off
    }),
}

# Where a preset differs from the facts of the PR it follows, and why. The reason starts with one of
# seed_facts.REASONS: "not expressible" (our config has no exact form), "assumed" (the PR does not say),
# "PR text" (its text, where its code is silent), "compliance" (left out to follow the rules), "design"
# (the preset is by construction something else around the PR's part).
DEVIATIONS: dict[str, dict[str, str]] = {
    "seed-341": {
        "train.grad_accum_steps": "not expressible: its code splits a step into 8 // world_size micro-batches (4 in "
                                  "its 2xH100 run); ours are a number per preset, 1 for the 8xH100 the full presets "
                                  "target (the same global batch either way)",
    },
    "seed-1406-legal": {
        "eval.ttt": "compliance: the pre-quant TTT adapts on the validation tokens before scoring them, the cluster the "
                    "maintainers ruled invalid for records (PG issue #677's meta-comment, #1017 condition 3, the "
                    "exclusions in #1902)",
    },
    "pg-miniloop": {
        "schedule.n_layers": "design: the baseline's 9-layer stack with #2135's band of blocks 3-5 (its stack has 11 "
                             "layers, among the parts left out)",
    },
}
# The PR each preset that has a facts file follows.
FOLLOWS = {**{s.preset: s.pr for s in SEEDS}, "seed-1406-legal": 1406, "pg-miniloop": MINILOOP_PR}
PR_HEADS = {**{s.pr: s.head for s in SEEDS}, MINILOOP_PR: MINILOOP_HEAD}


def _scaled_seed(seed: str, size: str) -> dict[str, Any]:
    """A seed preset at the quick/cpu preset's size: same schedule and tricks, smaller width, the size
    preset's training/eval budget, the seed's ratio of query to KV heads, and the seed's step-count
    constants as fractions of its full run (so a short run passes through the same phases)."""
    seed_over = resolve_preset(seed)
    run_steps = next(s.run_steps for s in SEEDS if s.preset == seed)
    size_over = {k: v for k, v in resolve_preset(size).items()
                 if not k.startswith("schedule.") and k not in STEP_FRACTIONS.values()}
    heads = size_over["model.n_heads"]
    ratio = seed_over.get("model.n_heads", 8) // seed_over.get("model.n_kv_heads", 4)
    merged = {**seed_over, **size_over, "model.n_kv_heads": max(1, heads // ratio)}
    for key, frac_key in STEP_FRACTIONS.items():
        steps = seed_over.get(key, BASELINE_STEP_CONSTANTS[key])
        merged[frac_key] = steps / run_steps  # above 1 where the seed's phase outlasts its run (#341's warmdown)
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
    merged.update(overrides)
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
