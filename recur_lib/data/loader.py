"""Deterministic, resumable token streams with the official distributed semantics.

`TokenStream` reads shards in sorted order and wraps around; `take(n)` returns the next n tokens as
one contiguous span, crossing shard boundaries. `DistributedTokenLoader.next_batch` takes one span of
`global_tokens + world_size` tokens per step; rank r keeps `span[r*(L+1):(r+1)*(L+1)]` (L = tokens per
rank), inputs are its first L tokens and targets its last L. Every rank reads the same span, so ranks
never overlap and a step sees each token once. The state (shard, position, start) is a small dict
that checkpoints save and `load_state_dict` restores exactly.

By default every run starts at token 0, as the official trainer does. With `seed=` (data.seed_offset)
the stream starts at `seed_start(seed, train tokens)`, a hash of the seed modulo the split's length, and
wraps around from there; the per-step span and the ranks' slices of it are unchanged.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .shards import ShardError, read_header, read_shard


class TokenStream:
    """Endless contiguous reader over shards in order, wrapping from the last to the first."""

    def __init__(self, files: Sequence[str | Path], vocab_size: int | None = None) -> None:
        self.files = [Path(f) for f in files]
        if not self.files:
            raise ShardError("TokenStream: no shard files given")
        self.vocab_size = vocab_size
        self.counts = [read_header(f) for f in self.files]
        if sum(self.counts) == 0:
            raise ShardError(f"{self.files[0].parent}: every shard is empty")
        self.shard, self.pos = 0, 0
        self._tokens: np.ndarray | None = None
        self._loaded = -1

    def _current(self) -> np.ndarray:
        if self._loaded != self.shard:
            self._tokens = read_shard(self.files[self.shard], self.vocab_size)
            self._loaded = self.shard
        assert self._tokens is not None
        return self._tokens

    def take(self, n: int) -> np.ndarray:
        """The next n tokens (int64), continuing into the next shard when this one ends."""
        out = np.empty(n, dtype=np.int64)
        filled = 0
        while filled < n:
            if self.pos >= self.counts[self.shard]:
                self.shard, self.pos = (self.shard + 1) % len(self.files), 0
                continue
            toks = self._current()
            k = min(n - filled, self.counts[self.shard] - self.pos)
            out[filled:filled + k] = toks[self.pos:self.pos + k]
            filled += k
            self.pos += k
        return out

    def seek(self, position: int) -> None:
        """Continue from token `position` of the concatenated shards (modulo their length)."""
        position %= sum(self.counts)
        self.shard = 0
        while position >= self.counts[self.shard]:
            position -= self.counts[self.shard]
            self.shard += 1
        self.pos = position

    def state_dict(self) -> dict[str, Any]:
        return {"shard": self.shard, "pos": self.pos, "files": [f.name for f in self.files]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        names = [f.name for f in self.files]
        if state["files"] != names:
            raise ShardError(f"cannot resume the token stream: the checkpoint was made over shards "
                             f"{state['files'][:3]}... but the data folder now holds {names[:3]}... "
                             "(point data.root at the original data)")
        if not (0 <= state["shard"] < len(self.files) and 0 <= state["pos"] <= self.counts[state["shard"]]):
            raise ShardError(f"cannot resume the token stream: position {state} lies outside the shards")
        self.shard, self.pos = int(state["shard"]), int(state["pos"])


def seed_start(seed: int, total_tokens: int) -> int:
    """The token a run with data.seed_offset starts at: sha256 of its seed, modulo the split's length."""
    return int(hashlib.sha256(f"recur data.seed_offset {seed}".encode()).hexdigest()[:16], 16) % total_tokens


class DistributedTokenLoader:
    """Per-rank (x, y) batches; all ranks advance the same stream by the same span each step.

    seed: None (official) starts at token 0; an int starts every rank at `seed_start(seed, tokens)`."""

    def __init__(self, files: Sequence[str | Path], rank: int = 0, world_size: int = 1,
                 vocab_size: int | None = None, seed: int | None = None) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.rank, self.world_size = rank, world_size
        self.stream = TokenStream(files, vocab_size)
        self.start = 0 if seed is None else seed_start(seed, sum(self.stream.counts))
        self.stream.seek(self.start)

    def next_batch(self, global_tokens: int, seq_len: int, grad_accum_steps: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """x, y of shape (local_tokens // seq_len, seq_len), int64, on CPU."""
        local = global_tokens // (self.world_size * grad_accum_steps)
        if local <= 0 or local % seq_len:
            raise ValueError(f"batch of {global_tokens} tokens over {self.world_size} ranks x {grad_accum_steps} "
                             f"micro-steps gives {local} tokens per rank, not a positive multiple of seq_len {seq_len}")
        span = local + 1
        chunk = self.stream.take(span * self.world_size)
        mine = torch.from_numpy(chunk[self.rank * span:(self.rank + 1) * span])
        return mine[:-1].view(-1, seq_len), mine[1:].view(-1, seq_len)

    def state_dict(self) -> dict[str, Any]:
        return {**self.stream.state_dict(), "start": self.start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("start", 0) != self.start:  # checkpoints before data.seed_offset started at 0
            raise ShardError(f"cannot resume the token stream: the checkpoint's run started at token "
                             f"{state.get('start', 0)}, this one at {self.start} (data.seed_offset or run.seed differ)")
        self.stream.load_state_dict(state)


def load_tokens(files: Sequence[str | Path], vocab_size: int | None = None, max_tokens: int = 0) -> np.ndarray:
    """All tokens of a split, concatenated in order (int64); max_tokens > 0 keeps only the first N."""
    parts, total = [], 0
    for f in files:
        toks = read_shard(f, vocab_size)
        if max_tokens:
            toks = toks[: max_tokens - total]
        parts.append(np.asarray(toks, dtype=np.int64))
        total += len(parts[-1])
        if max_tokens and total >= max_tokens:
            break
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def trim_for_eval(tokens: np.ndarray, seq_len: int) -> np.ndarray:
    """Keep the longest prefix that forms whole (x, y) windows of seq_len, as the baseline does."""
    usable = ((len(tokens) - 1) // seq_len) * seq_len
    if usable <= 0:
        raise ShardError(f"validation split has {len(tokens)} tokens, too few for one window of {seq_len}")
    return tokens[: usable + 1]
