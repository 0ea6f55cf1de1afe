"""What each seed PR's own code ran, and the check of our seed presets against it.

A facts file `reference/seeds/<N>.json` holds, for PR #N at a named head commit, the value its
`train_gpt.py` ran for every config field we can express (its `Hyperparameters` default unless the
README's run command overrides it), each with where it is written (file:line at that commit, or a
train-log line), its full run length and parameter count from its logs, and what our config cannot
express. Facts only: the PR's values, never its code.

    facts = load_facts(927)                   # refused if the file is for another PR or head
    rows = compare("seed-927")                # per field: ours, the PR's, where, deviation and reason
    print(format_comparison("seed-927"))      # what `recur config show --preset seed-927` prints

A seed preset (`presets.PRESETS`) is written by hand; `presets.DEVIATIONS` names every field where it
differs from the facts, with the reason ("not expressible: ...", "assumed: ...", "PR text: ...",
"compliance: ...", "design: ..."). `unexplained` lists the differences no deviation names, and deviations
that no longer differ; tests/test_seed_facts.py keeps it empty for every preset in `presets.FOLLOWS`
(the four seeds, seed-1406-legal, and pg-miniloop against #2135's loop band: a facts file with
"scope": "band" covers only the fields of that part).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from .config import _GROUPS, Config, ConfigError, _check_value, _hints, _unique_keys, all_keys
from .paths import PROJECT_ROOT
from .presets import DEVIATIONS, FOLLOWS, PR_HEADS, PR_URL, PRESETS

FACTS_DIR = PROJECT_ROOT / "reference" / "seeds"
# Why a preset may differ from its PR's code; the README's provenance block groups deviations by these.
REASONS = ("not expressible", "assumed", "PR text", "compliance", "design")
# Keys the facts files leave out: run operation (logging, checkpoints, monitors, eval batching), not what is computed.
OPERATIONAL = frozenset({
    "train.val_every", "train.log_every", "train.ckpt_every", "train.diverge_rel_nats", "train.diverge_loss",
    "train.diverge_patience", "train.loop_sampling", "train.loop_sampling_max", "eval.batch_tokens",
    "eval.eval_loops", "quant.pack", "quant.budget_bytes"})
FACT_GROUPS = ("model", "schedule", "train", "optim", "quant", "eval")


class FactsError(ValueError):
    """A facts file is missing, malformed, for another PR or head, or names no config field."""


@dataclass(frozen=True)
class Fact:
    value: Any     # in our config's terms and units
    where: str     # "train_gpt.py:123", "README.md:40", "train_seed1337.log:312", or "absent: ..."
    note: str = ""
    closest: bool = False  # the nearest value our config has; what it misses is in the facts' not_expressible


@dataclass(frozen=True)
class Facts:
    pr: int
    head: str
    folder: str
    run_command: dict[str, str]
    logs: list[dict[str, Any]]
    run_steps: Fact
    params: Fact
    fields: dict[str, Fact]
    not_expressible: list[dict[str, str]]
    compliance: str
    scope: str              # "full": every field we can express; "band": only those of the part a preset takes
    extra: dict[str, Any]   # anything else the file records (e.g. the parts of a record stack left out)


def _fact(path: Path, name: str, raw: Any) -> Fact:
    if not isinstance(raw, dict) or "value" not in raw or not isinstance(raw.get("where"), str) or not raw["where"]:
        raise FactsError(f"{path}: {name} must be an object with a 'value' and a non-empty 'where' (file:line)")
    if not isinstance(raw.get("closest", False), bool):
        raise FactsError(f"{path}: {name}.closest must be true or false")
    return Fact(raw["value"], raw["where"], str(raw.get("note", "")), raw.get("closest", False))


def _field_types() -> dict[str, tuple[Any, Any]]:
    out = {}
    for g, cls in _GROUPS.items():
        hints = _hints(cls)
        for f in fields(cls):
            out[f"{g}.{f.name}"] = (hints[f.name], f.metadata)
    return out


def load_facts(pr: int, path: str | Path | None = None) -> Facts:
    """The facts of PR #pr, checked: the file is for that PR at the head commit `presets.PR_HEADS` names,
    every field is a config key with a value of its type."""
    if pr not in PR_HEADS:
        raise FactsError(f"#{pr} has no facts: the PRs followed are {sorted(PR_HEADS)}")
    path = Path(path) if path is not None else FACTS_DIR / f"{pr}.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=_unique_keys)
    except FileNotFoundError:
        raise FactsError(f"{path}: no facts file for #{pr}; it is part of the checkout (reference/seeds/)") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FactsError(f"{path}: not a JSON facts file ({e})") from None
    except ConfigError as e:  # a key given twice
        raise FactsError(f"{path}: {e}") from None
    if not isinstance(raw, dict):
        raise FactsError(f"{path}: a facts file is a JSON object, got {type(raw).__name__}")
    if raw.get("pr") != pr:
        raise FactsError(f"{path}: the file is for PR #{raw.get('pr')}, not #{pr}")
    if raw.get("head") != PR_HEADS[pr]:
        raise FactsError(f"{path}: facts read at head {raw.get('head')!r}, but the presets follow #{pr} at head "
                         f"{PR_HEADS[pr]}: re-read the PR at that commit, or move presets.PR_HEADS with a reason")
    if raw.get("scope", "full") not in ("full", "band"):
        raise FactsError(f"{path}: scope {raw.get('scope')!r} must be 'full' or 'band'")
    if not isinstance(raw.get("fields"), dict) or not raw["fields"]:
        raise FactsError(f"{path}: 'fields' must map config keys to facts")
    types, known = _field_types(), set(all_keys())
    facts: dict[str, Fact] = {}
    for key, item in raw["fields"].items():
        if key not in known:
            raise FactsError(f"{path}: fields.{key} names no config field (`recur config fields` lists them)")
        fact = _fact(path, f"fields.{key}", item)
        tp, meta = types[key]
        try:
            value = _check_value(key, fact.value, tp, meta)
        except ConfigError as e:
            raise FactsError(f"{path}: {e}") from None
        facts[key] = Fact(value, fact.where, fact.note, fact.closest)
    known_top = {"pr", "head", "folder", "script", "run_command", "logs", "run_steps", "params", "fields",
                 "not_expressible", "compliance", "scope"}
    return Facts(pr=pr, head=raw["head"], folder=str(raw.get("folder", "")), run_command=raw.get("run_command") or {},
                 logs=list(raw.get("logs") or []), run_steps=_fact(path, "run_steps", raw.get("run_steps")),
                 params=_fact(path, "params", raw.get("params")), fields=facts,
                 not_expressible=list(raw.get("not_expressible") or []), compliance=str(raw.get("compliance") or ""),
                 scope=raw.get("scope", "full"), extra={k: v for k, v in raw.items() if k not in known_top})


@dataclass(frozen=True)
class Row:
    key: str
    ours: Any
    theirs: Any
    where: str
    reason: str   # the deviation's reason ("" when ours is the PR's value)
    closest: bool = False  # the PR's value is the nearest our config has (Fact.closest)

    @property
    def differs(self) -> bool:
        return self.ours != self.theirs


def _value(cfg: Config, key: str) -> Any:
    group, name = key.split(".")
    return getattr(getattr(cfg, group), name)


def followed_pr(preset: str) -> int:
    """The PR a preset with a facts file follows (`presets.FOLLOWS`)."""
    if preset not in FOLLOWS:
        raise FactsError(f"{preset!r} follows no PR's facts; presets that do: {sorted(FOLLOWS)}")
    return FOLLOWS[preset]


def _facts_and_rows(preset: str, cfg: Config | None = None) -> tuple[Facts, list[Row]]:
    """The followed PR's facts, read once, and the rows `compare` returns."""
    facts, dev = load_facts(followed_pr(preset)), DEVIATIONS.get(preset, {})
    cfg = cfg if cfg is not None else Config.from_name(preset)
    return facts, [Row(k, _value(cfg, k), f.value, f.where, dev.get(k, ""), f.closest) for k, f in facts.fields.items()]


def compare(preset: str, cfg: Config | None = None) -> list[Row]:
    """Every field of the PR's facts: our preset's value (or cfg's, e.g. the preset with overrides), the PR's,
    where it is written, and the named deviation's reason where they differ."""
    return _facts_and_rows(preset, cfg)[1]


def unexplained(preset: str) -> list[str]:
    """What the check refuses: a difference from the PR that no deviation names, a deviation whose
    reason is not one of REASONS, a deviation on a field that does not differ, a deviation on a field the
    facts do not cover, and a facts file that leaves out a field it should cover."""
    facts, rows = _facts_and_rows(preset)
    pr, dev = facts.pr, DEVIATIONS.get(preset, {})
    out = [f"{r.key}: ours {r.ours!r}, #{pr}'s {r.theirs!r} ({r.where}) and no deviation names it"
           for r in rows if r.differs and not r.reason]
    out += [f"{r.key}: a deviation, but ours equals #{pr}'s {r.theirs!r}" for r in rows if r.reason and not r.differs]
    covered = {r.key for r in rows}
    out += [f"{k}: a deviation on a field the facts do not cover" for k in dev if k not in covered]
    out += [f"{k}: deviation reason {why!r} must start with one of {list(REASONS)} and a colon"
            for k, why in dev.items() if not any(why.startswith(r + ": ") for r in REASONS)]
    if facts.scope == "full":
        must = {k for k in all_keys() if k.split(".")[0] in FACT_GROUPS and k not in OPERATIONAL}
        out += [f"{k}: the facts file of #{pr} leaves it out" for k in sorted(must - covered)]
    return out


def format_comparison(preset: str, cfg: Config | None = None) -> str:
    """Per field: ours, the PR's, where the PR's value is written; deviations marked '!' with their reason
    (a difference cfg adds to the preset: "overridden here"), values that are the closest our config has '~'."""
    facts, rows = _facts_and_rows(preset, cfg)
    n_dev = sum(r.differs for r in rows)
    part = " (the fields of the part it takes)" if facts.scope == "band" else ""
    n_close = sum(r.closest for r in rows)
    lines = [f"# {preset} against #{facts.pr}'s code at {facts.head[:10]} ({facts.folder}){part}",
             f"# {len(rows)} fields, {len(rows) - n_dev} as the PR ran them ({n_close} of those the closest our config "
             f"has, ~), {n_dev} deviation{'' if n_dev == 1 else 's'} (!)"]
    w = max(len(r.key) for r in rows)
    for r in rows:
        mark = "!" if r.differs else "~" if r.closest else " "
        line = f"{mark} {r.key:<{w}}  ours {r.ours!r:<14} PR {r.theirs!r:<14} {r.where}"
        if r.differs:
            note = r.reason or "overridden here, not the PR's value"
        else:
            note = "closest: " + facts.fields[r.key].note[:200] if r.closest else ""
        lines.append(line + (f"\n    {note}" if note else ""))
    if facts.not_expressible:
        lines.append(f"# not expressible here ({len(facts.not_expressible)}): {_not_expressible_labels(facts)}")
    if facts.extra.get("stack_not_included"):
        lines.append(f"# the rest of #{facts.pr}'s stack, left out ({len(facts.extra['stack_not_included'])} parts): "
                     f"reference/seeds/{facts.pr}.json stack_not_included")
    if facts.compliance:
        lines.append(f"# compliance: {facts.compliance}")
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    return repr(list(v) if isinstance(v, tuple) else v)


def _label(text: str) -> str:
    """A not-expressible item's first clause, for the README's one-line list."""
    cut = min([i for i in (text.find(c) for c in ":;(") if i > 0] + [len(text)])
    label = text[:cut].strip().rstrip(".,")
    return label if len(label) <= 80 else label[:77].rstrip() + "..."


def _not_expressible_labels(facts: Facts) -> str:
    return "; ".join(_label(str(n.get("what", ""))) for n in facts.not_expressible)


def sources_markdown() -> str:
    """The README's provenance block: per preset that follows a PR, its head, how many fields are as the
    PR's code ran them, the run length and parameter count from the PR's logs, every deviation by reason,
    and the parts our config cannot express (in full in the facts file)."""
    lines = []
    for preset in FOLLOWS:
        facts, rows = _facts_and_rows(preset)
        devs = [r for r in rows if r.differs]
        part = " of the loop band" if facts.scope == "band" else ""
        close = [r.key for r in rows if r.closest and not r.differs]
        closest = f" ({', '.join(f'`{k}`' for k in close)} the closest our config has)" if close else ""
        lines.append(f"- **{preset}** ([#{facts.pr}]({PR_URL.format(facts.pr)}) at `{facts.head[:10]}`, "
                     f"`{facts.folder.rsplit('/', 1)[-1]}`): {len(rows) - len(devs)} of {len(rows)} fields{part} as "
                     f"its code ran them{closest}; its full run {facts.run_steps.value:,} steps "
                     f"({facts.run_steps.where}), {facts.params.value:,} parameters ({facts.params.where})")
        for reason in REASONS:
            group = [r for r in devs if r.reason.startswith(reason + ": ")]
            if group:
                lines.append(f"  - {reason}: " + "; ".join(f"`{r.key}` ours {_fmt(r.ours)}, PR {_fmt(r.theirs)} "
                                                         f"({r.reason[len(reason) + 2:]})" for r in group))
        if facts.not_expressible:
            lines.append(f"  - not expressible ({len(facts.not_expressible)}, in full in "
                         f"`reference/seeds/{facts.pr}.json`): {_not_expressible_labels(facts)}")
    return "\n".join(lines)
