"""Token stream and distributed loader: official span semantics, disjoint ranks, exact resume."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from recur_lib.data.loader import DistributedTokenLoader, TokenStream, load_tokens, seed_start, trim_for_eval
from recur_lib.data.shards import ShardError, write_shard


@pytest.fixture
def shards(tmp_path: Path) -> list[Path]:
    files = []
    start = 0
    for i, n in enumerate([50, 0, 37, 80]):  # uneven sizes and an empty shard
        p = tmp_path / f"train_{i:06d}.bin"
        write_shard(p, np.arange(start, start + n) % 1000)
        files.append(p)
        start += n
    return files


def test_take_crosses_shards_and_wraps(shards: list[Path]) -> None:
    all_tokens = np.arange(167) % 1000
    s = TokenStream(shards)
    got = np.concatenate([s.take(n) for n in (10, 45, 1, 100, 30)])
    expect = np.concatenate([all_tokens, all_tokens])[:186]
    assert got.tolist() == expect.tolist()


def test_ranks_get_disjoint_slices_of_one_span(shards: list[Path]) -> None:
    world, seq, global_tokens = 2, 4, 16
    single = TokenStream(shards).take(global_tokens + world)  # the official span per step
    for r in range(world):
        x, y = DistributedTokenLoader(shards, r, world).next_batch(global_tokens, seq)
        local = global_tokens // world
        mine = single[r * (local + 1):(r + 1) * (local + 1)]
        assert x.shape == (local // seq, seq) and x.dtype == torch.int64
        assert x.flatten().tolist() == mine[:-1].tolist()
        assert y.flatten().tolist() == mine[1:].tolist()


def test_world_size_one_targets_are_inputs_shifted(shards: list[Path]) -> None:
    x, y = DistributedTokenLoader(shards).next_batch(24, 8)
    flat_x, flat_y = x.flatten(), y.flatten()
    assert torch.equal(flat_x[1:], flat_y[:-1])


def test_resume_restores_exact_position(shards: list[Path]) -> None:
    a = DistributedTokenLoader(shards, 1, 2)
    for _ in range(5):
        a.next_batch(32, 8)
    state = a.state_dict()
    expected = [a.next_batch(32, 8) for _ in range(6)]
    b = DistributedTokenLoader(shards, 1, 2)
    b.load_state_dict(state)
    for ex, got in zip(expected, (b.next_batch(32, 8) for _ in range(6))):
        assert torch.equal(ex[0], got[0]) and torch.equal(ex[1], got[1])


def test_resume_refuses_other_shards(shards: list[Path]) -> None:
    state = TokenStream(shards).state_dict()
    with pytest.raises(ShardError, match="original data"):
        TokenStream(shards[:2]).load_state_dict(state)


def test_batch_that_does_not_divide_is_rejected(shards: list[Path]) -> None:
    with pytest.raises(ValueError, match="not a positive multiple of seq_len"):
        DistributedTokenLoader(shards, 0, 2).next_batch(30, 8)


def test_load_tokens_and_trim(shards: list[Path]) -> None:
    toks = load_tokens(shards)
    assert toks.tolist() == (np.arange(167) % 1000).tolist()
    assert load_tokens(shards, max_tokens=60).tolist() == list(range(60))
    t = trim_for_eval(toks, 16)
    assert len(t) == 161 and (len(t) - 1) % 16 == 0
    with pytest.raises(ShardError, match="too few"):
        trim_for_eval(toks[:10], 16)


def test_stream_checks_vocab(shards: list[Path]) -> None:
    with pytest.raises(ShardError, match="vocab size 100"):
        TokenStream(shards, vocab_size=100).take(120)


# -- data.seed_offset: a seed-dependent start -----------------------------------------------------------

def test_seed_start_is_deterministic_and_in_range() -> None:
    starts = [seed_start(s, 167) for s in range(50)]
    assert starts == [seed_start(s, 167) for s in range(50)]
    assert all(0 <= x < 167 for x in starts) and len(set(starts)) > 30


def test_seeds_read_different_first_batches(shards: list[Path]) -> None:
    all_tokens = np.arange(167) % 1000
    first = {}
    for seed in (0, 1):
        ld = DistributedTokenLoader(shards, seed=seed)
        assert ld.start == seed_start(seed, 167)
        first[seed] = ld.next_batch(32, 8)[0]
        # a contiguous read from the start, wrapping around at the end of the last shard
        assert first[seed].flatten().tolist() == np.roll(all_tokens, -ld.start)[:32].tolist()
    assert seed_start(0, 167) != seed_start(1, 167) and not torch.equal(first[0], first[1])


def test_without_seed_the_official_layout_is_kept(shards: list[Path]) -> None:
    official = TokenStream(shards)
    ld = DistributedTokenLoader(shards, 1, 2, seed=None)
    assert ld.start == 0
    for _ in range(4):
        span = official.take(16 + 2)
        x, y = ld.next_batch(16, 4)
        assert x.flatten().tolist() == span[9:17].tolist() and y.flatten().tolist() == span[10:18].tolist()


def test_seeded_ranks_take_disjoint_slices_of_one_span(shards: list[Path]) -> None:
    world, seq, global_tokens = 2, 4, 16
    loaders = [DistributedTokenLoader(shards, r, world, seed=5) for r in range(world)]
    assert loaders[0].start == loaders[1].start != 0
    ref = TokenStream(shards)
    ref.seek(loaders[0].start)
    local = global_tokens // world
    for _ in range(12):  # wraps around the 167 tokens
        span = ref.take(global_tokens + world)  # the official span of this step
        for r, ld in enumerate(loaders):
            mine = span[r * (local + 1):(r + 1) * (local + 1)]
            x, y = ld.next_batch(global_tokens, seq)
            assert x.flatten().tolist() == mine[:-1].tolist() and y.flatten().tolist() == mine[1:].tolist()


def test_seeded_resume_is_exact_and_checks_the_start(shards: list[Path]) -> None:
    a = DistributedTokenLoader(shards, 1, 2, seed=3)
    for _ in range(7):  # crosses shards and wraps
        a.next_batch(32, 8)
    state = a.state_dict()
    assert state["start"] == a.start
    expected = [a.next_batch(32, 8) for _ in range(6)]
    b = DistributedTokenLoader(shards, 1, 2, seed=3)
    b.load_state_dict(state)
    for ex, got in zip(expected, (b.next_batch(32, 8) for _ in range(6))):
        assert torch.equal(ex[0], got[0]) and torch.equal(ex[1], got[1])
    with pytest.raises(ShardError, match="seed_offset"):
        DistributedTokenLoader(shards, 1, 2, seed=4).load_state_dict(state)
    with pytest.raises(ShardError, match="seed_offset"):
        DistributedTokenLoader(shards, 1, 2).load_state_dict(state)
    old = {k: v for k, v in DistributedTokenLoader(shards).state_dict().items() if k != "start"}
    DistributedTokenLoader(shards).load_state_dict(old)  # checkpoints from before the option


def test_seek_skips_empty_shards(shards: list[Path]) -> None:
    s = TokenStream(shards)
    for p in (0, 49, 50, 86, 87, 166, 167, 400):
        s.seek(p)
        assert s.take(3).tolist() == [(p + i) % 167 for i in range(3)]
