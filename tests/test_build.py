"""The data build: manifest, determinism, re-runs that reuse finished work, and clear failures."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from recur_lib.data.corpus.build import BuildOptions, build, is_finished
from recur_lib.data.corpus.sources import CorpusError, fetch_debs, is_val, sha256_file, text_dir_documents
from recur_lib.data.tokenizer import load_tokenizer

from conftest import TINY_VOCAB, make_text_dir


def test_manifest_describes_the_build(tiny_data: Path) -> None:
    m = json.loads((tiny_data / "manifest.json").read_text())
    assert m["tokenizer"]["vocab_size"] == TINY_VOCAB and m["tokenizer"]["trained_on"] == "train split"
    assert m["val_audit"]["ok"] and m["val_audit"]["counted_bytes"] == m["val_audit"]["decoded_bytes"]
    train, val = m["splits"]["train"], m["splits"]["val"]
    assert len(train["shards"]) >= 2, "shard_tokens=8000 must split train over several shards"
    for s in train["shards"] + val["shards"]:
        assert sha256_file(tiny_data / s["file"]) == s["sha256"]
    assert train["docs"] + val["docs"] == 60 and val["docs"] > 0
    assert sum(s["tokens"] for s in train["shards"]) == train["tokens"]
    assert is_finished(tiny_data)


def test_rebuild_is_byte_identical(tmp_path: Path, tiny_text_dir: Path, tiny_data: Path) -> None:
    out = tmp_path / "again"
    build(BuildOptions(out=out, text_dir=tiny_text_dir, vocab_size=TINY_VOCAB, val_permille=200, shard_tokens=8000))
    for f in sorted(tiny_data.glob("*.bin")) + [tiny_data / "tokenizer.model"]:
        assert sha256_file(out / f.name) == sha256_file(f), f.name


def test_finished_build_is_reused(tiny_data: Path, capsys: pytest.CaptureFixture) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in tiny_data.glob("*.bin")}
    build(BuildOptions(out=tiny_data, vocab_size=TINY_VOCAB))
    assert "nothing to do" in capsys.readouterr().out
    assert before == {p.name: p.stat().st_mtime_ns for p in tiny_data.glob("*.bin")}


def test_partial_or_damaged_build_is_not_finished(tmp_path: Path, tiny_data: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_data, copy)
    shard = next(copy.glob("train_*.bin"))
    shard.write_bytes(shard.read_bytes()[:-2] + b"\x07\x00")
    assert not is_finished(copy)
    (copy / "manifest.json").unlink()
    assert not is_finished(copy)


def test_interrupted_build_resumes_from_finished_stages(tmp_path: Path, tiny_text_dir: Path) -> None:
    out = tmp_path / "resume"
    opts = BuildOptions(out=out, text_dir=tiny_text_dir, vocab_size=TINY_VOCAB, val_permille=200, shard_tokens=8000)
    build(opts)
    (out / "manifest.json").unlink()
    for f in out.glob("val_*.bin"):
        f.unlink()
    (out / "val_000000.bin.tmp").write_bytes(b"half a shard")  # a crash mid-write
    tok_mtime = (out / "tokenizer.model").stat().st_mtime_ns
    build(opts)
    assert is_finished(out)
    assert (out / "tokenizer.model").stat().st_mtime_ns == tok_mtime  # finished stage reused


def test_val_split_depends_only_on_document_id() -> None:
    ids = [f"pkg/doc_{i}.txt" for i in range(2000)]
    chosen = [i for i in ids if is_val(i, 50)]
    assert 60 < len(chosen) < 140  # about 5%
    assert chosen == [i for i in ids[::-1] if is_val(i, 50)][::-1]


def test_text_dir_errors(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="not a folder"):
        list(text_dir_documents(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no .txt files"):
        list(text_dir_documents(tmp_path / "empty"))


def test_too_small_corpus_is_refused(tmp_path: Path) -> None:
    texts = make_text_dir(tmp_path / "t", n_docs=1)
    with pytest.raises(CorpusError, match="too small to split"):
        build(BuildOptions(out=tmp_path / "o", text_dir=texts, vocab_size=TINY_VOCAB, val_permille=50))
    assert not (tmp_path / "o" / "manifest.json").exists()


def test_without_apt_the_error_says_how_to_use_other_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get on PATH
    with pytest.raises(CorpusError) as e:
        fetch_debs(["jargon-text"], tmp_path / "debs")
    msg = str(e.value)
    assert "--text-dir" in msg and "fineweb_train_" in msg and "data.root" in msg


def test_tokenizer_trained_on_train_split_only(tiny_data: Path) -> None:
    """Every val document is absent from the tokenizer's training text (train.txt)."""
    from recur_lib.data.corpus.build import read_documents
    train = set(read_documents(tiny_data / "docs" / "train.txt"))
    val = read_documents(tiny_data / "docs" / "val.txt")
    assert val and not any(v in train for v in val)
    assert load_tokenizer(tiny_data / "tokenizer.model").vocab_size() == TINY_VOCAB


def test_corpus_lock_covers_every_source() -> None:
    from recur_lib.data.corpus.build import CORPUS_LOCK
    from recur_lib.data.corpus.sources import SOURCES
    assert set(CORPUS_LOCK["packages"]) == {s.package for s in SOURCES}
    assert all(len(v["deb_sha256"]) == 64 for v in CORPUS_LOCK["packages"].values())
