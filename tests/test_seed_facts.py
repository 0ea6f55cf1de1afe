"""The seed presets against their PRs' code: every field of each facts file (reference/seeds/<N>.json)
equals the preset's value or is a named deviation; the facts are refused when they are for another PR or
head, name no config field, or carry a value of the wrong type; full-size parameter counts match the PRs'
logs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from recur_lib import Config, build_model
from recur_lib.config import ConfigError, all_keys
from recur_lib.presets import DEVIATIONS, FOLLOWS, PR_HEADS, PRESETS, SEEDS
from recur_lib.seed_facts import (FACTS_DIR, REASONS, FactsError, compare, format_comparison, load_facts,
                                  sources_markdown, unexplained)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("preset", sorted(FOLLOWS))
def test_every_preset_that_follows_a_pr_equals_its_facts_or_names_the_deviation(preset: str) -> None:
    assert unexplained(preset) == []


def test_an_unnamed_difference_from_the_facts_is_caught(monkeypatch) -> None:
    base, over = PRESETS["seed-927"]
    monkeypatch.setitem(PRESETS, "seed-927", (base, {**over, "schedule.kind": "looped"}))
    problems = unexplained("seed-927")
    assert len(problems) == 1 and problems[0].startswith("schedule.kind: ours 'looped', #927's 'cyclic'")
    assert "train_gpt.py:" in problems[0]


def test_a_stale_or_unreasoned_deviation_is_caught(monkeypatch) -> None:
    monkeypatch.setitem(DEVIATIONS, "seed-1096", {"model.dim": "assumed: the PR does not say"})
    assert unexplained("seed-1096") == ["model.dim: a deviation, but ours equals #1096's 640"]
    monkeypatch.setitem(DEVIATIONS, "seed-341", {"train.grad_accum_steps": "because"})
    assert unexplained("seed-341") == [f"train.grad_accum_steps: deviation reason 'because' must start with one of "
                                       f"{list(REASONS)} and a colon"]


def _copy_facts(tmp_path: Path, pr: int, edit) -> Path:
    raw = json.loads((FACTS_DIR / f"{pr}.json").read_text())
    edit(raw)
    path = tmp_path / f"{pr}.json"
    path.write_text(json.dumps(raw))
    return path


def test_facts_for_another_head_or_pr_are_refused(tmp_path) -> None:
    path = _copy_facts(tmp_path, 927, lambda d: d.update(head="0" * 40))
    with pytest.raises(FactsError, match="facts read at head '0000000000000000000000000000000000000000', but the "
                                         "presets follow #927 at head 64490b14a1"):
        load_facts(927, path)
    path = _copy_facts(tmp_path, 927, lambda d: d.update(pr=1096))
    with pytest.raises(FactsError, match="the file is for PR #1096, not #927"):
        load_facts(927, path)
    with pytest.raises(FactsError, match="#999 has no facts"):
        load_facts(999)


def test_facts_naming_no_field_or_with_a_wrong_type_are_refused(tmp_path) -> None:
    path = _copy_facts(tmp_path, 341, lambda d: d["fields"].update({"model.dimm": {"value": 1, "where": "x:1"}}))
    with pytest.raises(FactsError, match="fields.model.dimm names no config field"):
        load_facts(341, path)
    path = _copy_facts(tmp_path, 341, lambda d: d["fields"]["model.dim"].update(value="768"))
    with pytest.raises(FactsError, match=r"model.dim = '768': must be an integer"):
        load_facts(341, path)
    path = _copy_facts(tmp_path, 341, lambda d: d["fields"]["model.dim"].pop("where"))
    with pytest.raises(FactsError, match="model.dim must be an object with a 'value' and a non-empty 'where'"):
        load_facts(341, path)
    dup = tmp_path / "dup.json"
    dup.write_text((FACTS_DIR / "341.json").read_text().replace('"pr": 341,', '"pr": 341, "pr": 341,', 1))
    with pytest.raises(FactsError, match=r"duplicate keys \['pr'\]"):
        load_facts(341, dup)


def test_a_preset_key_that_names_no_config_field_is_refused(monkeypatch) -> None:
    assert all(k in all_keys() for _, over in PRESETS.values() for k in over)
    monkeypatch.setitem(PRESETS, "seed-341", ("pg-baseline", {"model.dimm": 768}))
    with pytest.raises(ConfigError, match="unknown config key model.dimm"):
        Config.from_name("seed-341")


def test_seeds_name_the_heads_and_run_lengths_of_their_facts() -> None:
    for seed in SEEDS:
        facts = load_facts(seed.pr)
        assert (seed.head, seed.run_steps) == (PR_HEADS[seed.pr], facts.run_steps.value)
        assert facts.scope == "full" and FOLLOWS[seed.preset] == seed.pr
    # the logs' steps, not assumptions: #927 ran 5,965 (4x fewer layers than a 4 x 7 loop would)
    assert [s.run_steps for s in SEEDS] == [5965, 6157, 954, 4769]


@pytest.mark.parametrize("preset", [p for p in FOLLOWS if load_facts(FOLLOWS[p]).scope == "full"])
def test_full_size_parameter_counts_match_the_prs_logs(preset: str) -> None:
    """Within 0.1%; what remains is the parts the facts list as not expressible (#927: its 2 VE scales;
    #1406: 3 VE scales and the bigram scale; #1096: +5,120 attn/mlp scales its Output-LN blocks lack, -640
    for its one prelude-coda skip, -4 scalars)."""
    with torch.device("meta"):
        model = build_model(Config.from_name(preset))
    ours, theirs = sum(p.numel() for p in model.parameters()), load_facts(FOLLOWS[preset]).params.value
    assert abs(ours - theirs) <= 0.001 * theirs, (ours, theirs)


def test_seed_927_cycles_four_blocks_over_seven_layers(capsys) -> None:
    from recur_lib.cli import main
    with torch.device("meta"):
        model = build_model(Config.from_name("seed-927"))
    assert [st.block for st in model.steps] == [0, 1, 2, 3, 0, 1, 2]
    assert main(["model", "describe", "--preset", "seed-927"]) == 0
    out = capsys.readouterr().out
    assert "7 effective layers from 4 unique blocks" in out and "total            29,950,080" in out
    assert "#927's count   29,950,082  (seed1337.log:11)" in out


def test_seed_1406_is_marked_and_its_legal_variant_drops_only_the_pre_quant_ttt() -> None:
    assert "not valid for records" in next(s.claim for s in SEEDS if s.pr == 1406)
    assert "validation" in load_facts(1406).compliance
    legal, seed = Config.from_name("seed-1406-legal"), Config.from_name("seed-1406")
    assert legal.diff(seed) == {"eval.ttt": "off"} and seed.eval.ttt == "pre_quant"


def test_config_show_prints_ours_beside_the_prs_value_and_marks_deviations(capsys) -> None:
    from recur_lib.cli import main
    assert main(["config", "show", "--preset", "seed-341", "--set", "model.dim=384", "--set", "train.log_every=5"]) == 0
    out = capsys.readouterr().out
    assert "! model.dim" in out and "overridden here, not the PR's value" in out
    assert "! train.grad_accum_steps" in out and "not expressible: its code splits" in out
    assert "  model.n_heads                     ours 12" in out
    assert "train.log_every = 5  # --set" in out
    rows = compare("seed-341")
    assert len([ln for ln in format_comparison("seed-341").splitlines() if not ln.startswith(("#", "    "))]) == len(rows)


def test_readme_provenance_block_is_generated_from_the_facts() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- seed-sources:start -->\n")[1].split("\n<!-- seed-sources:end -->")[0]
    assert block == sources_markdown()


def test_the_check_reads_the_files_in_the_checkout(tmp_path, monkeypatch) -> None:
    """A facts file removed from the checkout is an error that says where it should be, not a silent pass."""
    import recur_lib.seed_facts as sf
    shutil.copytree(FACTS_DIR, tmp_path / "seeds")
    (tmp_path / "seeds" / "1096.json").unlink()
    monkeypatch.setattr(sf, "FACTS_DIR", tmp_path / "seeds")
    with pytest.raises(FactsError, match="no facts file for #1096"):
        unexplained("seed-1096")
