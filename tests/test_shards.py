"""Token shards: byte-for-byte compatibility with the official format, and a clear error per corruption."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from recur_lib.data.shards import HEADER_BYTES, MAGIC, ShardError, list_shards, read_header, read_shard, write_shard


def independent_write(path: Path, tokens: list[int], magic: int = MAGIC, version: int = 1, count: int | None = None) -> None:
    """The official layout written with struct only: 256 int32 header, then uint16 tokens."""
    header = [magic, version, len(tokens) if count is None else count] + [0] * 253
    path.write_bytes(struct.pack("<256i", *header) + struct.pack(f"<{len(tokens)}H", *tokens))


def test_independent_writer_reads_back_identical(tmp_path: Path) -> None:
    toks = [1, 0, 65535, 1023, 7, 42] * 100
    independent_write(tmp_path / "fineweb_val_000000.bin", toks)
    assert read_shard(tmp_path / "fineweb_val_000000.bin").tolist() == toks


def test_our_writer_is_byte_identical_to_independent_writer(tmp_path: Path) -> None:
    toks = np.random.default_rng(0).integers(0, 1024, size=5000)
    independent_write(tmp_path / "a.bin", toks.tolist())
    write_shard(tmp_path / "b.bin", toks)
    assert (tmp_path / "a.bin").read_bytes() == (tmp_path / "b.bin").read_bytes()
    assert (tmp_path / "b.bin").stat().st_size == HEADER_BYTES + 2 * len(toks)
    assert not list(tmp_path.glob("*.tmp"))


def test_empty_shard_roundtrips(tmp_path: Path) -> None:
    write_shard(tmp_path / "e.bin", np.zeros(0, dtype=np.uint16))
    assert read_header(tmp_path / "e.bin") == 0
    assert len(read_shard(tmp_path / "e.bin")) == 0


@pytest.mark.parametrize("case, match", [
    ("bad_magic", "bad magic 12345"),
    ("bad_version", "unsupported shard version 2"),
    ("short", "shorter than the 1024-byte header"),
    ("truncated", "does not match header token count 100"),
    ("trailing", "does not match header token count 100"),
    ("missing", "not found"),
])
def test_corrupt_shard_names_file_and_problem(tmp_path: Path, case: str, match: str) -> None:
    p = tmp_path / f"{case}.bin"
    toks = list(range(100))
    if case == "bad_magic":
        independent_write(p, toks, magic=12345)
    elif case == "bad_version":
        independent_write(p, toks, version=2)
    elif case == "short":
        p.write_bytes(b"\x00" * 100)
    elif case == "truncated":
        independent_write(p, toks)
        p.write_bytes(p.read_bytes()[:-10])
    elif case == "trailing":
        independent_write(p, toks)
        p.write_bytes(p.read_bytes() + b"\x00\x00")
    with pytest.raises(ShardError, match=match) as e:
        read_shard(p)
    assert str(p) in str(e.value)


def test_token_id_outside_vocab_is_reported(tmp_path: Path) -> None:
    p = tmp_path / "v.bin"
    independent_write(p, [1, 5, 2000, 3])
    with pytest.raises(ShardError, match=r"token id 2000 >= vocab size 1024 \(first bad id at position 2\)") as e:
        read_shard(p, vocab_size=1024)
    assert str(p) in str(e.value)
    assert read_shard(p, vocab_size=4096).tolist() == [1, 5, 2000, 3]


def test_writer_rejects_ids_that_do_not_fit_uint16(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fit uint16"):
        write_shard(tmp_path / "x.bin", np.array([70000]))
    assert not (tmp_path / "x.bin").exists()


def test_list_shards_sorted_official_names_and_helpful_errors(tmp_path: Path) -> None:
    for i in (2, 0, 1):
        independent_write(tmp_path / f"fineweb_train_{i:06d}.bin", [1, 2])
    independent_write(tmp_path / "fineweb_val_000000.bin", [1, 2])
    names = [p.name for p in list_shards(tmp_path, "*train_*.bin")]  # the default data.train_glob
    assert names == ["fineweb_train_000000.bin", "fineweb_train_000001.bin", "fineweb_train_000002.bin"]
    assert [p.name for p in list_shards(tmp_path, "*val_*.bin")] == ["fineweb_val_000000.bin"]
    with pytest.raises(ShardError, match="recur data build"):
        list_shards(tmp_path / "nope", "*.bin")
    with pytest.raises(ShardError, match="no shard matches"):
        list_shards(tmp_path, "*test_*.bin")
