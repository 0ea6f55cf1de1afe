"""Token shards in the official Parameter Golf format, byte for byte.

A shard is 256 little-endian int32 (magic 20240520, version 1, token count, zeros) followed by the
tokens as little-endian uint16. The file size must be exactly 1024 + 2 * count. Official
`fineweb_{train,val}_NNNNNN.bin` files read unchanged; anything else raises `ShardError` naming the
file and what is wrong with it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..paths import atomic_write

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAX_VOCAB = 1 << 16  # uint16 ids


class ShardError(ValueError):
    """A token shard is missing, malformed, or holds ids outside the vocabulary."""


def write_shard(path: str | Path, tokens: np.ndarray) -> None:
    """Write tokens as an official shard, atomically (a crash never leaves a half-written shard)."""
    path = Path(path)
    toks = np.asarray(tokens)
    if toks.ndim != 1:
        raise ValueError(f"{path}: tokens must be 1-D, got shape {toks.shape}")
    if toks.size and (toks.min() < 0 or toks.max() >= MAX_VOCAB):
        raise ValueError(f"{path}: token ids must lie in [0, {MAX_VOCAB}) to fit uint16")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION, toks.size
    atomic_write(path, header.tobytes() + toks.astype("<u2", copy=False).tobytes())


def read_header(path: str | Path) -> int:
    """Validate a shard's header and size; return its token count."""
    path = Path(path)
    if not path.is_file():
        raise ShardError(f"{path}: shard file not found")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise ShardError(f"{path}: file is {size} bytes, shorter than the {HEADER_BYTES}-byte header "
                         "(truncated download or not a token shard)")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    if header[0] != MAGIC:
        raise ShardError(f"{path}: bad magic {int(header[0])} (expected {MAGIC}): not a Parameter Golf token shard")
    if header[1] != VERSION:
        raise ShardError(f"{path}: unsupported shard version {int(header[1])} (expected {VERSION})")
    n = int(header[2])
    if n < 0:
        raise ShardError(f"{path}: negative token count {n} in header")
    expected = HEADER_BYTES + 2 * n
    if size != expected:
        raise ShardError(f"{path}: size {size} bytes does not match header token count {n} "
                         f"(expected {expected} bytes; the file is truncated or has trailing data)")
    return n


def read_shard(path: str | Path, vocab_size: int | None = None, mmap: bool = True) -> np.ndarray:
    """The shard's tokens as a uint16 array (memory-mapped by default), checked against vocab_size."""
    n = read_header(path)
    if mmap and n:
        toks = np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(n,))
    else:
        toks = np.fromfile(path, dtype="<u2", count=n, offset=HEADER_BYTES)
    if vocab_size is not None and n:
        hi = int(toks.max())
        if hi >= vocab_size:
            pos = int(np.argmax(toks >= vocab_size))
            raise ShardError(f"{path}: token id {hi} >= vocab size {vocab_size} (first bad id at position {pos}); "
                             "the shard was made with a different tokenizer than model.vocab_size expects")
    return toks


def list_shards(folder: str | Path, pattern: str) -> list[Path]:
    """Shards matching pattern in folder, sorted by name (the official streaming order)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ShardError(f"{folder}: data folder not found. Build the default data with `recur data build`, "
                         "or point data.root at a folder of shards (e.g. FineWeb's fineweb10B_sp1024)")
    files = sorted(p for p in folder.glob(pattern) if not p.name.endswith(".tmp"))
    if not files:
        raise ShardError(f"{folder}: no shard matches {pattern!r}. Build the default data with `recur data build`, "
                         "or set data.train_glob / data.val_glob to your file names")
    return files
