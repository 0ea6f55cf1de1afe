"""SentencePiece tokenizer with the official Parameter Golf spec.

BPE, vocab 1024 by default, byte fallback (every string is encodable, no <unk>), digits split one by
one, nmt_nfkc normalisation, no dummy prefix, pad/bos/eos/unk = 0/1/2/3, character coverage 0.999.
Documents are written as `[bos] + ids` with no eos, like the official shards.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import sentencepiece as spm

from ..paths import atomic_write

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

SPEC = dict(
    model_type="bpe",
    byte_fallback=True,
    split_digits=True,
    normalization_rule_name="nmt_nfkc",
    add_dummy_prefix=False,
    pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, unk_id=UNK_ID,
    character_coverage=0.999,
)


class TokenizerError(ValueError):
    """A tokenizer file is missing, unreadable, or does not match the config."""


def train_tokenizer(text_file: str | Path, model_path: str | Path, vocab_size: int = 1024,
                    num_threads: int | None = None) -> spm.SentencePieceProcessor:
    """Train on one text file (one sentence per line) and write `model_path` atomically.

    The input is used whole (no sampling) and fed as an iterator, so no file path is recorded in the
    model: the same text gives a byte-identical model wherever it is built.
    """
    model_path = Path(model_path)
    spm.set_random_generator_seed(0)
    buf = io.BytesIO()
    with open(text_file, encoding="utf-8") as lines:
        spm.SentencePieceTrainer.train(
            sentence_iterator=(ln.rstrip("\n") for ln in lines), model_writer=buf, vocab_size=vocab_size,
            num_threads=num_threads or os.cpu_count() or 1, input_sentence_size=0,
            shuffle_input_sentence=False, max_sentence_length=16384, minloglevel=2, **SPEC,
        )
    atomic_write(model_path, buf.getvalue())
    return load_tokenizer(model_path)


def load_tokenizer(path: str | Path, vocab_size: int | None = None) -> spm.SentencePieceProcessor:
    """Load a SentencePiece model; with vocab_size, check that the model fits it."""
    path = Path(path)
    if not path.is_file():
        raise TokenizerError(f"{path}: tokenizer model not found. Build the default data with `recur data build`, "
                             "or set data.tokenizer to your .model file (e.g. fineweb_1024_bpe.model)")
    sp = spm.SentencePieceProcessor()
    try:
        sp.load(str(path))
    except (OSError, RuntimeError) as e:
        raise TokenizerError(f"{path}: not a SentencePiece model ({e})") from None
    if vocab_size is not None and sp.vocab_size() > vocab_size:
        raise TokenizerError(f"{path}: tokenizer has {sp.vocab_size()} pieces but model.vocab_size is {vocab_size}; "
                             f"set model.vocab_size={sp.vocab_size()} or use the matching tokenizer")
    return sp


def encode_documents(sp: spm.SentencePieceProcessor, docs: Sequence[str], num_threads: int = 0) -> list[np.ndarray]:
    """Each document as `[bos] + ids` (uint16)."""
    ids = sp.encode(list(docs), out_type=int, num_threads=num_threads or -1)
    return [np.asarray([BOS_ID] + x, dtype=np.uint16) for x in ids]
