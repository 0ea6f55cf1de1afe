"""Bits per byte: the official byte rule on each kind of piece, and the audit on real splits."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from recur_lib.data.bpb import audit_split, audit_tokens, bpb, build_byte_tables, count_bytes
from recur_lib.data.shards import list_shards
from recur_lib.data.tokenizer import BOS_ID, encode_documents, load_tokenizer

from conftest import TINY_VOCAB


@pytest.fixture(scope="module")
def sp(tiny_data: Path):
    return load_tokenizer(tiny_data / "tokenizer.model")


def test_tokenizer_follows_official_spec(sp) -> None:
    assert sp.vocab_size() == TINY_VOCAB
    assert [sp.pad_id(), sp.bos_id(), sp.eos_id(), sp.unk_id()] == [0, 1, 2, 3]
    assert sum(sp.is_byte(i) for i in range(sp.vocab_size())) == 256  # byte fallback
    ids = sp.encode("year 2024")
    digits = [sp.id_to_piece(i) for i in ids if sp.id_to_piece(i).strip("▁").isdigit()]
    assert all(len(p.strip("▁")) == 1 for p in digits) and len(digits) == 4  # split_digits
    assert not sp.id_to_piece(sp.encode("hello")[0]).startswith("▁")  # no dummy prefix
    assert 3 not in sp.encode("日本語 🙂 ∮")  # never <unk>: unseen characters fall back to bytes


def test_byte_table_values_per_piece_kind(sp) -> None:
    t = build_byte_tables(sp)
    for i in range(4):  # pad/bos/eos/unk are boundaries worth nothing
        assert t.is_boundary[i] and t.base_bytes[i] == 0 and not t.has_leading_space[i]
    byte_ids = [i for i in range(sp.vocab_size()) if sp.is_byte(i)]
    assert all(t.base_bytes[i] == 1 and not t.is_boundary[i] for i in byte_ids)
    for i in range(sp.vocab_size()):
        p = sp.id_to_piece(i)
        if not sp.is_byte(i) and not sp.is_control(i) and not sp.is_unknown(i):
            assert t.has_leading_space[i] == p.startswith("▁")
            assert t.base_bytes[i] == len(p.removeprefix("▁").encode("utf-8"))


def test_leading_space_counts_except_after_boundary(sp) -> None:
    t = build_byte_tables(sp)
    spaced = next(i for i in range(sp.vocab_size()) if sp.id_to_piece(i).startswith("▁") and len(sp.id_to_piece(i)) > 2)
    plain = next(i for i in range(sp.vocab_size()) if not sp.is_byte(i) and not t.is_boundary[i] and not t.has_leading_space[i])
    base = int(t.base_bytes[spaced])
    assert count_bytes(np.array([BOS_ID]), np.array([spaced]), t).tolist() == [base]
    assert count_bytes(np.array([plain]), np.array([spaced]), t).tolist() == [base + 1]


def test_tables_are_padded_as_boundaries_for_larger_model_vocab(sp) -> None:
    t = build_byte_tables(sp, vocab_size=TINY_VOCAB + 24)
    assert len(t.base_bytes) == TINY_VOCAB + 24 and t.is_boundary[TINY_VOCAB:].all()


@pytest.mark.parametrize("text", [
    "plain ascii words and 12345 digits",
    "naïve café in Zürich — €5, 日本語 and 🙂 emoji",
    "  leading and   repeated   spaces  ",
    "Ωmega ß ñandú Œuvre",
])
def test_audit_matches_decoded_utf8_bytes(sp, text: str) -> None:
    toks = np.concatenate(encode_documents(sp, [text, "second document", text]))
    report = audit_tokens(toks, sp, build_byte_tables(sp))
    assert report.ok, report.summary()
    assert report.n_docs == 3
    assert report.counted_bytes == sum(len(sp.decode(sp.encode(d)).encode()) for d in [text, "second document", text])


def test_audit_passes_on_built_splits(tiny_data: Path, sp) -> None:
    for split in ("val", "train"):
        report = audit_split(list_shards(tiny_data, f"{split}_*.bin"), sp)
        assert report.ok, report.summary()
        assert report.counted_bytes > 1000


def test_audit_catches_a_wrong_byte_rule(sp) -> None:
    """A count that treats byte-fallback tokens like 3-byte pieces (a public bug) must fail the audit."""
    t = build_byte_tables(sp)
    byte_ids = [i for i in range(sp.vocab_size()) if sp.is_byte(i)]
    t.base_bytes[byte_ids] = 3
    toks = np.concatenate(encode_documents(sp, ["日本語 🙂 is not in the tokenizer"]))
    report = audit_tokens(toks, sp, t)
    assert not report.ok and report.mismatches and report.counted_bytes > report.decoded_bytes


def test_bpb_formula() -> None:
    assert bpb(math.log(2) * 100, 100) == pytest.approx(1.0)
    assert bpb(math.log(2) * 300, 200) == pytest.approx(1.5)
    with pytest.raises(ValueError):
        bpb(1.0, 0)


@pytest.mark.parametrize("tokens", [[], [BOS_ID], [BOS_ID, BOS_ID, BOS_ID]])
def test_an_empty_split_fails_the_audit(sp, tokens: list[int]) -> None:
    """No text means no bpb: 0 counted bytes = 0 decoded bytes must not read as OK."""
    report = audit_tokens(np.array(tokens, dtype=np.int64), sp, build_byte_tables(sp))
    assert report.empty and not report.ok
    assert "FAILED: the split holds no text" in report.summary() and "data.val_glob" in report.summary()


def test_roundtrip_skips_a_document_cut_at_the_start(sp) -> None:
    from recur_lib.data.bpb import roundtrip_tokens
    toks = np.concatenate(encode_documents(sp, ["a first document", "naïve café 日本語 🙂", "12345 digits"]))
    rt = roundtrip_tokens(toks, sp)
    assert rt.ok and rt.n_docs == rt.n_same == 3
    assert roundtrip_tokens(toks[2:], sp).n_docs == 2  # the cut first document is not a document
    assert not roundtrip_tokens(np.zeros(0, dtype=np.int64), sp).ok  # nothing compared proves nothing
