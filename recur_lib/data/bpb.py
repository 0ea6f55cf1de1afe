"""Bits per byte, with the official byte accounting, and an audit that proves it on a split.

For each SentencePiece id: control, unknown and unused ids are *boundary* tokens worth 0 bytes;
byte-fallback ids `<0xNN>` are 1 byte; any other piece is its UTF-8 length after a leading `▁` is
stripped (and remembered). A target t after previous token p is worth

    bytes(t) = base_bytes[t] + (has_leading_space[t] and not is_boundary[p])

and `val_bpb = (sum of NLL in nats / ln 2) / sum of bytes`. The audit checks that, over a whole split,
these counts equal the UTF-8 length of the decoded documents: a public entry once undercounted bytes
by ~20%, which this guards against. A split with no text fails the audit: its bpb is undefined.

The audit cannot tell a wrong tokenizer (it counts and decodes with the same one), so `roundtrip_tokens`
checks that: the documents, decoded and encoded again, must come back as the ids the shards hold.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import sentencepiece as spm
import torch

from .loader import load_tokens
from .tokenizer import BOS_ID


@dataclass(frozen=True)
class ByteTables:
    """The three per-id lookup tables of the official byte count."""
    base_bytes: np.ndarray         # (V,) int16
    has_leading_space: np.ndarray  # (V,) bool
    is_boundary: np.ndarray        # (V,) bool

    def to_torch(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (torch.as_tensor(self.base_bytes, dtype=torch.int64, device=device),
                torch.as_tensor(self.has_leading_space, device=device),
                torch.as_tensor(self.is_boundary, device=device))


def build_byte_tables(sp: spm.SentencePieceProcessor, vocab_size: int | None = None) -> ByteTables:
    """Tables sized max(tokenizer vocab, vocab_size); ids the tokenizer lacks count as boundaries."""
    n_sp = sp.vocab_size()
    size = max(n_sp, vocab_size or 0)
    base = np.zeros(size, dtype=np.int16)
    lead = np.zeros(size, dtype=bool)
    boundary = np.ones(size, dtype=bool)
    for i in range(n_sp):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        boundary[i] = False
        if sp.is_byte(i):
            base[i] = 1
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith("▁"):
            lead[i] = True
            piece = piece[1:]
        base[i] = len(piece.encode("utf-8"))
    return ByteTables(base, lead, boundary)


def count_bytes(prev: np.ndarray, target: np.ndarray, tables: ByteTables) -> np.ndarray:
    """Bytes of each target given its previous token (numpy, any shape; int64)."""
    return (tables.base_bytes[target].astype(np.int64)
            + (tables.has_leading_space[target] & ~tables.is_boundary[prev]))


def count_bytes_torch(prev: torch.Tensor, target: torch.Tensor,
                      tables: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The same count on torch tensors (tables from ByteTables.to_torch, on the tensors' device)."""
    base, lead, boundary = tables
    return base[target] + (lead[target] & ~boundary[prev]).to(torch.int64)


def bpb(nll_sum_nats: float, n_bytes: int) -> float:
    """Bits per byte from a summed NLL in nats and a summed byte count."""
    if n_bytes <= 0:
        raise ValueError(f"bpb needs a positive byte count, got {n_bytes}")
    return nll_sum_nats / math.log(2) / n_bytes


@dataclass
class AuditReport:
    """Counted bytes (the bpb denominator) against UTF-8 bytes of the decoded documents."""
    n_docs: int
    n_tokens: int
    counted_bytes: int
    decoded_bytes: int
    mismatches: list[tuple[int, int, int]] = field(default_factory=list)  # (doc index, counted, decoded)

    @property
    def empty(self) -> bool:
        return self.counted_bytes == 0 and self.decoded_bytes == 0

    @property
    def ok(self) -> bool:
        return not self.empty and self.counted_bytes == self.decoded_bytes and not self.mismatches

    @property
    def bytes_per_token(self) -> float:
        return self.counted_bytes / max(1, self.n_tokens - self.n_docs)

    def summary(self) -> str:
        if self.empty:
            return (f"bpb audit FAILED: the split holds no text ({self.n_docs} docs, {self.n_tokens} tokens, 0 bytes), "
                    "so its bpb is undefined; check data.val_glob / data.train_glob, or rebuild the data with "
                    "`recur data build`")
        verdict = "OK" if self.ok else f"MISMATCH in {len(self.mismatches)} documents"
        return (f"bpb audit {verdict}: {self.n_docs} docs, {self.n_tokens} tokens, counted {self.counted_bytes} bytes, "
                f"decoded {self.decoded_bytes} bytes ({self.bytes_per_token:.4f} bytes/token)")


def audit_tokens(tokens: np.ndarray, sp: spm.SentencePieceProcessor, tables: ByteTables,
                 max_report: int = 20) -> AuditReport:
    """Audit one stream of `[bos] + ids` documents, document by document."""
    tokens = np.asarray(tokens, dtype=np.int64)
    if len(tokens) == 0:
        return AuditReport(0, 0, 0, 0)
    if tokens[0] != BOS_ID:
        tokens = np.concatenate([[BOS_ID], tokens])  # a stream cut mid-document starts at a boundary
    counted_all = count_bytes(tokens[:-1], tokens[1:], tables)  # [j] = bytes of tokens[j + 1]
    csum = np.concatenate([[0], np.cumsum(counted_all)])
    starts = np.flatnonzero(tokens == BOS_ID)
    ends = np.append(starts[1:], len(tokens))
    counted = decoded = 0
    mismatches: list[tuple[int, int, int]] = []
    for i, (s, e) in enumerate(zip(starts, ends)):
        c = int(csum[e - 1] - csum[s])  # targets s+1 .. e-1: the document's ids
        d = len(sp.decode(tokens[s + 1:e].tolist()).encode("utf-8"))
        if c != d and len(mismatches) < max_report:
            mismatches.append((i, c, d))
        counted += c
        decoded += d
    return AuditReport(len(starts), len(tokens), counted, decoded, mismatches)


def audit_split(files: Sequence[str | Path], sp: spm.SentencePieceProcessor, vocab_size: int | None = None) -> AuditReport:
    """Audit a whole split given as shard files."""
    tables = build_byte_tables(sp, vocab_size)
    return audit_tokens(load_tokens(files, vocab_size), sp, tables)


# The audit's rule for a folder without a manifest: a wrong tokenizer re-encodes almost no document
# (1 of 547 on the default val), the right one all of them; 1% leaves room for rare normalisation
# corner cases in data made elsewhere.
ROUNDTRIP_MIN_FRACTION = 0.99


@dataclass
class RoundTripReport:
    """Documents decoded and encoded again by a tokenizer: how many came back as the same ids."""
    n_docs: int
    n_same: int
    mismatches: list[int] = field(default_factory=list)  # indices of the first documents that differ

    @property
    def fraction(self) -> float:
        return self.n_same / self.n_docs if self.n_docs else 0.0

    @property
    def ok(self) -> bool:
        return self.n_docs > 0 and self.fraction >= ROUNDTRIP_MIN_FRACTION

    def summary(self) -> str:
        return (f"decoded {self.n_docs} documents and compared: {self.n_same} re-encode to the ids in the shards"
                + (f" (first that differ: {self.mismatches[:5]})" if self.mismatches else ""))


def roundtrip_tokens(tokens: np.ndarray, sp: spm.SentencePieceProcessor, batch: int = 1024,
                     max_report: int = 20) -> RoundTripReport:
    """Decode each `[bos] + ids` document of the stream and encode it again; tokens before the first bos
    belong to a document cut off at the start and are skipped."""
    tokens = np.asarray(tokens, dtype=np.int64)
    starts = np.flatnonzero(tokens == BOS_ID)
    ends = np.append(starts[1:], len(tokens))
    same, mismatches = 0, []
    for b in range(0, len(starts), batch):
        docs = [tokens[s + 1:e].tolist() for s, e in zip(starts[b:b + batch], ends[b:b + batch])]
        again = sp.encode(sp.decode(docs), out_type=int)
        for i, (x, y) in enumerate(zip(docs, again)):
            if x == y:
                same += 1
            elif len(mismatches) < max_report:
                mismatches.append(b + i)
    return RoundTripReport(len(starts), same, mismatches)
