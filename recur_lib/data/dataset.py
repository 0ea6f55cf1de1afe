"""A config's data, opened and checked: shard lists, tokenizer and byte tables.

`open_data(cfg)` is the one place that turns `cfg.data` into files, so that a wrong folder, a missing
tokenizer or a vocabulary mismatch fails before any training starts, with a message saying what to do.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sentencepiece as spm

from .bpb import ByteTables, build_byte_tables
from ..config import Config
from ..paths import resolve
from .shards import list_shards, read_shard
from .tokenizer import TokenizerError, load_tokenizer


@dataclass
class Data:
    root: Path
    train_files: list[Path]
    val_files: list[Path]
    tokenizer: spm.SentencePieceProcessor
    tables: ByteTables


def open_data(cfg: Config, check_ids: bool = True) -> Data:
    """Resolve cfg.data, load the tokenizer and check it (and the first shards) against model.vocab_size."""
    d, vocab = cfg.data, cfg.model.vocab_size
    root = resolve(d.root)
    train = list_shards(root, d.train_glob)
    val = list_shards(root, d.val_glob)
    sp = load_tokenizer(resolve(d.tokenizer, base=root), vocab)
    if sp.vocab_size() != vocab:
        raise TokenizerError(f"{root}: tokenizer has {sp.vocab_size()} pieces but model.vocab_size = {vocab}; "
                         f"set model.vocab_size={sp.vocab_size()} (e.g. --set model.vocab_size={sp.vocab_size()})")
    if check_ids:
        for f in (train[0], val[0]):
            read_shard(f, vocab)  # raises naming the file if an id is out of range
    return Data(root, train, val, sp, build_byte_tables(sp, vocab))
