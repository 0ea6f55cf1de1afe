"""Config: lossless JSON, presets, typed overrides, and errors that name the field and the range."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest

from recur_lib.config import Config, ConfigError, all_keys, describe_fields
from recur_lib.presets import PRESETS


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_roundtrips_json(name: str) -> None:
    cfg = Config.from_name(name)
    again = Config.from_json(cfg.to_json())
    assert again == cfg
    assert json.loads(again.to_json()) == json.loads(cfg.to_json())


def test_defaults_are_the_parameter_golf_baseline() -> None:
    c = Config()
    assert (c.schedule.kind, c.schedule.n_layers, c.effective_layers) == ("flat", 9, 9)
    assert (c.model.dim, c.model.n_heads, c.model.n_kv_heads, c.model.vocab_size) == (512, 8, 4, 1024)
    assert (c.model.logit_softcap, c.model.qk_gain_init, c.model.tied_embed_init_std) == (30.0, 1.5, 0.005)
    assert (c.train.batch_tokens, c.train.seq_len, c.train.warmup_steps, c.train.warmdown_iters) == (524288, 1024, 20, 1200)
    assert (c.optim.matrix_lr, c.optim.muon_momentum, c.optim.muon_momentum_warmup_start) == (0.04, 0.95, 0.85)
    assert (c.optim.muon_ns_steps, c.optim.muon_scale_rule, c.quant.budget_bytes) == (5, "keller", 16_000_000)
    assert Config.from_name("pg-baseline") == c


def test_seed_presets_have_their_documented_shapes() -> None:
    c927 = Config.from_name("seed-927")
    assert (c927.schedule.n_core, c927.schedule.n_loops, c927.model.dim, c927.effective_layers) == (4, 7, 1024, 7)
    c1406 = Config.from_name("seed-1406")
    assert (c1406.unique_blocks, c1406.effective_layers, c1406.model.qk_gain_init) == (11, 13, 5.0)
    c1096 = Config.from_name("seed-1096")
    assert (c1096.unique_blocks, c1096.effective_layers, c1096.model.dim, c1096.model.loop_lora_rank) == (6, 14, 640, 1)
    assert Config.from_name("seed-341").effective_layers == 22


def test_overrides_parse_strings_by_field_type() -> None:
    c = Config.from_name("quick").override({"model.dim": "256", "model.use_smear_gate": "true",
                                            "schedule.kind": "repeat", "schedule.repeat_layers": "4,5",
                                            "optim.matrix_lr": "0.02", "train.batch_tokens": "65_536"})
    assert c.model.dim == 256 and c.model.use_smear_gate is True
    assert c.schedule.repeat_layers == (4, 5) and c.optim.matrix_lr == 0.02 and c.train.batch_tokens == 65536
    assert Config.from_name("quick", model__dim=64).model.dim == 64
    assert Config.from_name("quick", {"model.dim": 64}) == Config.from_name("quick", model__dim=64)


@pytest.mark.parametrize("overrides, message", [
    ({"model.dimm": 8}, r"unknown config key model\.dimm \(did you mean 'model\.dim'\?\)"),
    ({"modle.dim": 8}, r"group\.field"),
    ({"model.dim": 4}, r"model\.dim = 4: out of range, allowed \[8, 16384\]"),
    ({"model.dim": 12.5}, r"model\.dim = 12\.5: must be an integer"),
    ({"model.dim": "wide"}, r"model\.dim = 'wide': must be an integer"),
    ({"model.use_smear_gate": "maybe"}, r"model\.use_smear_gate = 'maybe': must be true or false"),
    ({"schedule.kind": "loopd"}, r"schedule\.kind = 'loopd': must be one of \['flat', 'looped', 'cyclic', 'hybrid', 'repeat'\]"),
    ({"quant.export_bits": 7}, r"quant\.export_bits = 7: must be one of \[3, 4, 5, 6, 8, 16\]"),
    ({"optim.beta2": 1.5}, r"optim\.beta2 = 1\.5: out of range, allowed \[0\.0, 1\.0\]"),
    ({"optim.matrix_lr": float("nan")}, r"optim\.matrix_lr = nan: must be finite"),
    ({"model.n_kv_heads": 3}, r"model\.n_kv_heads = 3 must divide model\.n_heads = 8"),
    ({"model.dim": 516}, r"model\.dim = 516 must be divisible by model\.n_heads = 8"),
    ({"train.batch_tokens": 1000}, r"train\.batch_tokens = 1000 must be a multiple of train\.seq_len = 1024"),
    ({"schedule.kind": "repeat", "schedule.repeat_layers": (8, 9)}, r"indices \[9\] are outside \[0, 8\]"),
    ({"schedule.kind": "repeat", "schedule.repeat_layers": (3, 5)}, r"must be a contiguous range"),
    ({"model.loop_lora_targets": ("q", "gate")}, r"unknown \['gate'\]; choose from"),
    ({"schedule.kind": "looped", "schedule.n_prelude": 1}, r"use schedule\.kind = 'hybrid'"),
    ({"model.loop_lora_rank": 8}, r"loop_lora_form = 'matrices'"),
])
def test_invalid_values_name_field_and_allowed_range(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Config().override(overrides)


def test_from_dict_rejects_unknown_keys_and_groups() -> None:
    d = Config().to_dict()
    d["model"]["heads"] = 8
    with pytest.raises(ConfigError, match=r"unknown config key model\.heads"):
        Config.from_dict(d)
    with pytest.raises(ConfigError, match="unknown config group 'modle'"):
        Config.from_dict({"modle": {}})
    with pytest.raises(ConfigError, match="unknown preset 'quik' \\(did you mean 'quick'\\?\\)"):
        Config.from_name("quik")


def test_partial_dict_fills_defaults_and_groups_validate_alone() -> None:
    assert Config.from_dict({"model": {"dim": 256}}).model.dim == 256
    from recur_lib.config import ModelConfig
    with pytest.raises(ConfigError, match=r"model\.dim = 0"):
        ModelConfig(dim=0)


def test_config_is_frozen() -> None:
    c = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.model.dim = 3  # type: ignore[misc]


def test_save_load_and_bad_json(tmp_path) -> None:
    c = Config.from_name("seed-1406")
    c.save(tmp_path / "c.json")
    assert Config.load(tmp_path / "c.json") == c
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Config.load(tmp_path / "bad.json")


def test_diff_and_help_cover_every_key() -> None:
    assert Config.from_name("quick", model__dim=256).diff()["model.dim"] == 256
    assert Config().diff() == {}
    help_text = describe_fields()
    assert all(k in help_text for k in all_keys())


def test_readme_seeds_table_is_the_seeds_list() -> None:
    """The README's Seeds table and presets.SEEDS say the same thing, and every seed preset exists."""
    from pathlib import Path

    from recur_lib.presets import SEEDS
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = [ln for ln in readme.splitlines() if ln.startswith("| [#")]
    assert rows == [f"| [#{s.pr}]({s.url}) | {s.claim} | `{s.preset}` |" for s in SEEDS]
    assert all(s.preset in PRESETS for s in SEEDS)


def test_scaled_seeds_keep_the_seeds_phases_as_fractions_of_its_run() -> None:
    """seed-1096 warms Muon momentum 0.92 -> 0.99 over 1,500 of its 4,769 steps; seed-1096-cpu does so over
    the same share of its 250 steps, and the baseline step constants the scaling assumes are config's."""
    from recur_lib.presets import BASELINE_STEP_CONSTANTS, SEEDS
    full, cpu = Config.from_name("seed-1096"), Config.from_name("seed-1096-cpu")
    run = next(s.run_steps for s in SEEDS if s.preset == "seed-1096")
    assert run == 4769
    assert cpu.phases()["muon_momentum_warmup_steps"] == math.ceil(1500 / 4769 * cpu.train.iterations)
    assert cpu.optim.muon_momentum == full.optim.muon_momentum == 0.99
    assert cpu.phases()["ema_decay"] == pytest.approx(1 - 1 / ((1 / (1 - 0.997)) / 4769 * 250), rel=1e-9)
    defaults = Config()
    assert {k: getattr(getattr(defaults, k.split(".")[0]), k.split(".")[1]) for k in BASELINE_STEP_CONSTANTS} \
        == BASELINE_STEP_CONSTANTS


@pytest.mark.parametrize("seed", ["seed-927", "seed-1406", "seed-341", "seed-1096"])
@pytest.mark.parametrize("size", ["smoke", "quick", "cpu"])
def test_every_scaled_seed_keeps_each_phase_as_the_same_fraction_of_its_run(seed: str, size: str) -> None:
    """Warmdown and momentum warmup take the same share of a scaled run as of the seed's logged run, a
    share above 1 included (#341's 2,500-step warmdown over its 954 steps: the LR starts at 954/2500)."""
    from recur_lib.presets import SEEDS
    run = next(s.run_steps for s in SEEDS if s.preset == seed)
    full, small = Config.from_name(seed), Config.from_name(f"{seed}-{size}")
    n = small.train.iterations
    assert small.phases()["warmdown_steps"] == math.ceil(full.train.warmdown_iters / run * n)
    assert small.phases()["muon_momentum_warmup_steps"] == math.ceil(full.optim.muon_momentum_warmup_steps / run * n)
    assert small.schedule == full.schedule


def test_a_config_file_with_missing_fields_names_them_or_is_refused(tmp_path) -> None:
    from recur_lib.config import ConfigWarning
    path = tmp_path / "partial.json"
    path.write_text(json.dumps({"model": {"dim": 128}}))
    with pytest.warns(ConfigWarning, match=r"partial\.json: \d+ fields not set take the baseline defaults: data\.root"):
        cfg = Config.load(path)
    assert cfg.model.dim == 128 and cfg.train == Config().train
    with pytest.raises(ConfigError, match=r"partial\.json: \d+ fields are not set"):
        Config.load(path, strict=True)
    full = tmp_path / "full.json"
    Config().save(full)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Config.load(full, strict=True) == Config()


def test_a_config_file_that_is_not_utf8_is_named(tmp_path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes('{"model": {"dim": 128}, "run": {"name": "caf\u00e9"}}'.encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.json: not UTF-8 text"):
        Config.load(path)


def test_a_warmdown_as_long_as_the_run_is_named(capsys: pytest.CaptureFixture) -> None:
    """A warmdown longer than the run puts the LR in warmdown from step 0 at a multiplier below 1; one as
    long as the run leaves no constant phase. Both are said, in Config.schedule_warnings and by
    `recur config show`; a warmdown inside the run says nothing."""
    from recur_lib.cli import main
    from recur_lib.train import lr_scale
    long = Config.from_name("smoke", {"train.iterations": 100, "train.warmdown_iters": 400})
    [w] = long.schedule_warnings()
    assert "longer than the run (train.iterations = 100)" in w and "starts at 0.25, not 1" in w
    assert lr_scale(0, 0.0, long) == 0.25 and "max_wallclock_s" not in w
    capped = long.override({"train.max_wallclock_s": 60.0})
    assert "if fewer than 400 steps fit in that time" in capped.schedule_warnings()[0]
    whole = Config.from_name("smoke", {"train.iterations": 100, "train.warmdown_frac": 1.0})
    assert whole.schedule_warnings() == ["the warmdown covers the whole run (100 steps = train.iterations): the LR "
                                         "multiplier falls from 1 at step 0, with no constant phase"]
    assert Config.from_name("pg-baseline").schedule_warnings() == Config.from_name("cpu").schedule_warnings() == []
    assert main(["config", "show", "--preset", "smoke", "--set", "train.iterations=100",
                 "--set", "train.warmdown_iters=400"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == f"# warning: {w}"
    assert main(["config", "show", "--preset", "cpu"]) == 0
    assert "warning" not in capsys.readouterr().out


def test_a_config_json_with_a_key_twice_is_refused(tmp_path) -> None:
    text = Config().to_json().replace('"dim": 512,', '"dim": 512, "dim": 256,', 1)
    with pytest.raises(ConfigError, match="key 'dim' appears twice"):
        Config.from_json(text)
    (tmp_path / "twice.json").write_text(text)
    with pytest.raises(ConfigError, match="key 'dim' appears twice"):
        Config.load(tmp_path / "twice.json")


@pytest.mark.parametrize("name", ["", ".", "..", "../escape", "a/b", "a\\b"])
def test_a_name_that_is_not_one_folder_name_is_refused(name: str, tmp_path) -> None:
    from recur_lib.evaluate import evaluate_run
    with pytest.raises(ConfigError, match=r"run.name = .*: must be one folder or file name"):
        Config.from_name("smoke", {"run.name": name})
    with pytest.raises(ConfigError, match=r"--name\) = .*: must be one folder or file name"):
        evaluate_run(tmp_path, out_name=name)
    assert list(tmp_path.iterdir()) == []  # refused before anything is written
