"""Named presets: dotted overrides on top of the baseline defaults in `config.py`.

    Config.from_name("seed-1096-quick")        # a seed's shape at the quick preset's size

`PRESETS` maps a name to (base preset or None, overrides). The seed presets ("seed-N") follow the
public pull requests listed in `SEEDS` (facts in shared/reference/parameter-golf.md and
seed-claims.md); "seed-N-smoke|quick|cpu" are the same shapes scaled down for CPU (`_scaled_seed`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

PR_URL = "https://github.com/openai/parameter-golf/pull/{}"


@dataclass(frozen=True)
class Seed:
    """A public Parameter Golf submission this project starts from."""
    pr: int
    claim: str       # the PR's headline claim, in one line
    preset: str      # our preset of its configuration

    @property
    def url(self) -> str:
        return PR_URL.format(self.pr)


SEEDS = (
    Seed(927, "4 shared blocks x 7 loops at d 1024 with VE, int6 QAT and score-first TTT: val_bpb 1.1696 "
              "(3-seed mean), 15.85 MB", "seed-927"),
    Seed(1406, "11 layers with blocks 4-5 repeated, discriminative pre-quant TTT: val_bpb 1.0887 (3-seed mean)",
         "seed-1406"),
    Seed(341, "unique first and last layers around a shared core remove the int8 gap of pure recurrence "
              "(+0.40 -> -0.004 bpb)", "seed-341"),
    Seed(1096, "rank-1 per-loop deltas on AdamW: val_bpb 1.3342; rank-8 deltas on Muon diverged", "seed-1096"),
)

PRESETS: dict[str, tuple[str | None, dict[str, Any]]] = {
    # The parameter-golf baseline train_gpt.py: every default.
    "pg-baseline": (None, {}),
    # Tests: a forward/backward pass in well under a second on one CPU core.
    "smoke": ("pg-baseline", {
        "model.dim": 32, "model.n_heads": 2, "model.n_kv_heads": 1,
        "schedule.kind": "hybrid", "schedule.n_prelude": 1, "schedule.n_core": 1, "schedule.n_loops": 2,
        "schedule.n_coda": 1,
        "train.iterations": 4, "train.batch_tokens": 512, "train.seq_len": 64, "train.warmup_steps": 1,
        "train.warmdown_iters": 2, "train.max_wallclock_s": 0.0, "train.log_every": 1,
        "eval.seq_len": 64, "eval.batch_tokens": 4096, "data.val_max_tokens": 8192,
        "eval.ttt_chunk_tokens": 512, "quant.keep_float_max_numel": 256,
        "run.device": "cpu", "run.dtype": "float32",
    }),
    # The default workbook: every notebook together well under 30 minutes on 2 CPU cores
    # (about 0.2 s per step for this shape on our 2-core machines).
    "quick": ("pg-baseline", {
        "model.dim": 64, "model.n_heads": 4, "model.n_kv_heads": 2,
        "schedule.kind": "hybrid", "schedule.n_prelude": 1, "schedule.n_core": 2, "schedule.n_loops": 3,
        "schedule.n_coda": 1,
        "train.iterations": 150, "train.batch_tokens": 4096, "train.seq_len": 128, "train.warmup_steps": 10,
        "train.warmdown_iters": 50, "train.max_wallclock_s": 0.0, "train.log_every": 10, "train.val_every": 50,
        "eval.seq_len": 128, "eval.batch_tokens": 16384, "data.val_max_tokens": 65536,
        "eval.ttt_chunk_tokens": 2048, "quant.keep_float_max_numel": 1024,  # small models: quantize their blocks
        "run.device": "cpu", "run.dtype": "float32",
    }),
    # Published CPU results (`make workbook-cpu`: every notebook, 3 seeds, 1.8 h measured on 2 cores).
    # The quick model trained 5/3 as long on twice the validation tokens: the 2-core budget buys seeds
    # and arms rather than width (dim 256 at seq 512 measured ~1.7k tok/s, about 10 h per run).
    "cpu": ("quick", {
        "train.iterations": 250, "train.warmup_steps": 10, "train.warmdown_iters": 80, "train.val_every": 125,
        "data.val_max_tokens": 131072,
    }),
    # PR #927: 4 shared blocks x 7 loops at dim 1024, int6 QAT from step 0, score-first TTT.
    "seed-927": ("pg-baseline", {
        "model.dim": 1024, "model.n_heads": 32, "model.n_kv_heads": 8,
        "model.xsa_last_n": 4, "model.ve_last_n": 2, "model.ve_dim": 128, "model.use_smear_gate": True,
        "model.bigram_buckets": 10240, "model.bigram_dim": 128,
        "schedule.kind": "looped", "schedule.n_core": 4, "schedule.n_loops": 7, "model.unet_encoder_steps": 12,
        "train.seq_len": 2048, "train.warmup_steps": 100, "train.warmdown_iters": 3500,
        "train.grad_clip": 0.3, "train.swa_start_frac": 0.2, "train.swa_every": 50,
        "optim.matrix_lr": 0.02, "optim.scalar_lr": 0.01, "optim.tied_embed_lr": 0.02,
        "optim.muon_momentum": 0.99, "optim.weight_decay": 0.04,
        "quant.qat_bits": 6, "quant.export_bits": 8, "quant.gptq_lite": True,
        "eval.seq_len": 32768, "eval.stride": 64, "eval.ttt": "score_first", "eval.ttt_lr": 0.002,
        "eval.ttt_epochs": 3, "eval.ttt_chunk_tokens": 32768,
    }),
    # PR #1406: 11 unique blocks, 4 and 5 run twice; QK gain 5, late QAT, EMA, pre-quant TTT.
    # MuonEq-R (row-normalised Muon) is not implemented: this preset runs plain Muon.
    "seed-1406": ("pg-baseline", {
        "model.qk_gain_init": 5.0, "model.xsa_last_n": 4, "model.ve_last_n": 2, "model.bigram_buckets": 1536,
        "schedule.kind": "repeat", "schedule.n_layers": 11, "schedule.repeat_layers": (4, 5),
        "schedule.n_loops": 2,
        "train.ema_decay": 0.997, "quant.qat_bits": 6, "quant.qat_start_frac": 0.85, "quant.export_bits": 6,
        "quant.gptq_lite": True, "eval.stride": 64, "eval.ttt": "pre_quant", "eval.ttt_lr": 0.0005,
        "eval.ttt_epochs": 10, "eval.ttt_optimizer": "adamw", "eval.ttt_block_lr_min": 0.3,
    }),
    # PR #341: hybrid unique prelude/coda around a shared core, dim 768, 22 effective layers. The
    # stored record does not give the split; 3 + 4x4 + 3 keeps its shape.
    "seed-341": ("pg-baseline", {
        "model.dim": 768, "model.n_heads": 12, "model.n_kv_heads": 4,
        "schedule.kind": "hybrid", "schedule.n_prelude": 3, "schedule.n_core": 4, "schedule.n_loops": 4,
        "schedule.n_coda": 3, "eval.stride": 64,
    }),
    # PR #1096: 1 prelude + 4 shared x 3 loops + 1 coda at dim 640, rank-1 per-loop deltas on AdamW.
    "seed-1096": ("pg-baseline", {
        "model.dim": 640, "model.n_heads": 10, "model.n_kv_heads": 5,
        "model.loop_lora_rank": 1, "model.loop_lora_form": "vectors",
        "schedule.kind": "hybrid", "schedule.n_prelude": 1, "schedule.n_core": 4, "schedule.n_loops": 3,
        "schedule.n_coda": 1, "optim.lora_optimizer": "adamw", "eval.ttt": "score_first",
    }),
}


def _scaled_seed(seed: str, size: str) -> dict[str, Any]:
    """A seed preset at the quick/cpu preset's size: same schedule and tricks, smaller width, the
    size preset's training/eval budget, and the seed's ratio of query to KV heads."""
    seed_over = resolve_preset(seed)
    size_over = {k: v for k, v in resolve_preset(size).items() if not k.startswith("schedule.")}
    heads = size_over["model.n_heads"]
    ratio = seed_over.get("model.n_heads", 8) // seed_over.get("model.n_kv_heads", 4)
    merged = {**seed_over, **size_over, "model.n_kv_heads": max(1, heads // ratio)}
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
