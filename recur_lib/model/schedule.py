"""The execution schedule: which unique block each forward step runs, and in which loop.

Every architecture in the seeds is one schedule over the same blocks:

    flat     [0, 1, ..., n-1]                           baseline 9x512
    looped   [0..K-1] x L                               4 blocks x 7 passes = 28 steps
    cyclic   [i % K for i in 0..L-1]                    #927: 7 applications of 4 blocks, 0 1 2 3 0 1 2
    hybrid   prelude + [core] x L + coda                #1096: 1 + 4x3 + 1, #341
    repeat   [0..a-1] + [a..b] x L + [b+1..n-1]         in place
             [0..n-1] + [a..b] x (L - 1)                after the stack (repeat_at = "after")

The schedule is a plain tuple computed once from the config, so torch.compile sees a static graph.
A block is *shared* when more than one step runs it; per-loop parameters (LoRA, loop scales, loop
embedding) are keyed by (block, loop) on shared blocks only.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..config import ScheduleConfig


@dataclass(frozen=True)
class Step:
    block: int   # index into the unique blocks
    loop: int    # 0 for unique steps; the loop (or repeat pass) for shared blocks
    role: str    # "flat" | "prelude" | "core" | "coda" | "repeat"


def n_unique_blocks(s: ScheduleConfig) -> int:
    if s.kind in ("flat", "repeat"):
        return s.n_layers
    return s.n_prelude + s.n_core + s.n_coda


def build_schedule(s: ScheduleConfig, n_loops: int | None = None, repeats_on: bool = True) -> tuple[Step, ...]:
    """The steps of one forward pass. n_loops overrides s.n_loops (depth extrapolation at eval);
    repeats_on=False gives the repeat schedule before its repeats switch on."""
    loops = s.n_loops if n_loops is None else n_loops
    if loops < 1:
        raise ValueError(f"n_loops must be >= 1, got {loops}")
    if s.kind == "flat":
        return tuple(Step(i, 0, "flat") for i in range(s.n_layers))
    if s.kind == "repeat":
        if not s.repeat_layers or not repeats_on:
            return tuple(Step(i, 0, "flat") for i in range(s.n_layers))
        seg = sorted(s.repeat_layers)
        a, b = seg[0], seg[-1]
        if s.repeat_at == "after":  # the stack once, its segment's blocks marked as the core; then the extra passes
            steps = [Step(i, 0, "repeat" if i in seg else "flat") for i in range(s.n_layers)]
            return tuple(steps + [Step(i, p, "repeat") for p in range(1, loops) for i in seg])
        steps = [Step(i, 0, "flat") for i in range(a)]
        steps += [Step(i, p, "repeat") for p in range(loops) for i in seg]  # the segment runs `loops` times
        steps += [Step(i, 0, "flat") for i in range(b + 1, s.n_layers)]
        return tuple(steps)
    if s.kind == "cyclic":  # application i runs block i % K, in pass i // K
        return tuple(Step(i % s.n_core, i // s.n_core, "core") for i in range(loops))
    pre = [Step(i, 0, "prelude") for i in range(s.n_prelude)]
    core = [Step(s.n_prelude + i, loop, "core") for loop in range(loops) for i in range(s.n_core)]
    off = s.n_prelude + s.n_core
    coda = [Step(off + i, 0, "coda") for i in range(s.n_coda)]
    return tuple(pre + core + coda)


def shared_blocks(steps: tuple[Step, ...]) -> list[int]:
    """Blocks that more than one step runs, in first-use order."""
    seen: dict[int, int] = {}
    for st in steps:
        seen[st.block] = seen.get(st.block, 0) + 1
    return [b for b, c in seen.items() if c > 1]


def format_schedule(steps: tuple[Step, ...]) -> str:
    """One line: block indices grouped by loop, e.g. 'P0 | 1 2 3 4 | 1 2 3 4 | 1 2 3 4 | C5'."""
    parts: list[str] = []
    cur_key = None
    for st in steps:
        key = (st.role, st.loop)
        label = {"prelude": f"P{st.block}", "coda": f"C{st.block}"}.get(st.role, str(st.block))
        if key != cur_key:
            parts.append("|")
            cur_key = key
        parts.append(label)
    return " ".join(parts[1:]) if parts else ""
