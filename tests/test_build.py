"""The data build: manifest, determinism, re-runs that reuse finished work, and clear failures."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from recur_lib.cli import main
from recur_lib.data.corpus.build import BuildOptions, build, build_inputs, is_finished, source_mix
from recur_lib.data.corpus.sources import (CorpusError, doc_source, fetch_debs, is_val, mixed_order, sha256_file,
                                           text_dir_documents, text_file_problem)
from recur_lib.data.loader import load_tokens
from recur_lib.data.tokenizer import BOS_ID, load_tokenizer

from conftest import TINY_BUILD, TINY_VOCAB, make_text_dir


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


def test_finished_build_is_reused(tiny_data: Path, tiny_text_dir: Path, capsys: pytest.CaptureFixture) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in tiny_data.glob("*.bin")}
    build(BuildOptions(out=tiny_data, text_dir=tiny_text_dir, **TINY_BUILD))
    assert "nothing to do" in capsys.readouterr().out
    assert before == {p.name: p.stat().st_mtime_ns for p in tiny_data.glob("*.bin")}


def _rebuilt_with(tmp_path: Path, tiny_data: Path, **changed) -> tuple[dict, str]:
    copy = tmp_path / "copy"
    shutil.copytree(tiny_data, copy)
    opts = {"text_dir": json.loads((tiny_data / "manifest.json").read_text())["inputs"]["text_dir"], **TINY_BUILD}
    opts.update(changed)
    return build(BuildOptions(out=copy, **{**opts, "text_dir": Path(opts["text_dir"])})), copy


@pytest.mark.parametrize("changed", ["text_dir", "text_content", "vocab_size", "val_permille", "shard_tokens",
                                     "tokenizer_max_bytes"])
def test_a_finished_build_with_other_inputs_is_rebuilt(tmp_path: Path, tiny_text_dir: Path, tiny_data: Path,
                                                       changed: str, capsys: pytest.CaptureFixture) -> None:
    """Each input the build depends on, changed against a finished build: never "nothing to do"."""
    texts = tmp_path / "texts"
    shutil.copytree(tiny_text_dir, texts)
    if changed == "text_content":  # same folder as the build's, one file edited
        copy = tmp_path / "copy"
        build(BuildOptions(out=copy, text_dir=texts, **TINY_BUILD))
        capsys.readouterr()
        f = sorted(texts.glob("*.txt"))[0]
        f.write_text(f.read_text() + "One more sentence about the loop.\n")
        m = build(BuildOptions(out=copy, text_dir=texts, **TINY_BUILD))
    else:
        value = {"text_dir": texts, "vocab_size": 420, "val_permille": 100, "shard_tokens": 5000,
                 "tokenizer_max_bytes": 20_000}[changed]
        m, copy = _rebuilt_with(tmp_path, tiny_data, **{changed: value})
        assert m["inputs"][changed] == (str(value) if changed == "text_dir" else value)
    out = capsys.readouterr().out
    assert "nothing to do" not in out and "rebuilding" in out
    assert is_finished(copy) and m == json.loads((copy / "manifest.json").read_text())
    if changed in ("text_content", "vocab_size", "val_permille", "tokenizer_max_bytes"):
        assert m["tokenizer"]["sha256"] != json.loads((tiny_data / "manifest.json").read_text())["tokenizer"]["sha256"]


def test_a_build_without_recorded_inputs_is_rebuilt_once(tmp_path: Path, tiny_text_dir: Path, tiny_data: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    """A finished build made before builds recorded their inputs cannot show it matches: it is rebuilt
    (to the same bytes), and reused from then on."""
    copy = tmp_path / "legacy"
    shutil.copytree(tiny_data, copy)
    m = json.loads((copy / "manifest.json").read_text())
    del m["inputs"]
    (copy / "manifest.json").write_text(json.dumps(m))
    (copy / "docs" / "tokenizer.json").unlink()
    opts = BuildOptions(out=copy, text_dir=tiny_text_dir, **TINY_BUILD)
    build(opts)
    assert "records no inputs" in capsys.readouterr().out
    for f in sorted(tiny_data.glob("*.bin")) + [tiny_data / "tokenizer.model"]:
        assert sha256_file(copy / f.name) == sha256_file(f), f.name
    build(opts)
    assert "nothing to do" in capsys.readouterr().out


def test_an_interrupted_build_resumed_with_other_inputs_redoes_the_stages(tmp_path: Path, tiny_text_dir: Path,
                                                                          tiny_data: Path) -> None:
    """No manifest (interrupted after the tokenizer): a resume with another tokenizer byte budget must not
    reuse the tokenizer, one with another split must not reuse the documents."""
    tok_sha = sha256_file(tiny_data / "tokenizer.model")
    part = tmp_path / "part"
    shutil.copytree(tiny_data, part)
    (part / "manifest.json").unlink()
    m = build(BuildOptions(out=part, text_dir=tiny_text_dir, **{**TINY_BUILD, "tokenizer_max_bytes": 20_000}))
    assert m["tokenizer"]["sha256"] != tok_sha and m["inputs"]["tokenizer_max_bytes"] == 20_000
    (part / "manifest.json").unlink()
    m = build(BuildOptions(out=part, text_dir=tiny_text_dir, **{**TINY_BUILD, "val_permille": 100}))
    assert json.loads((part / "docs" / "documents.json").read_text())["inputs"]["val_permille"] == 100
    assert m["splits"]["val"]["docs"] < json.loads((tiny_data / "manifest.json").read_text())["splits"]["val"]["docs"]
    (part / "manifest.json").unlink()
    build(BuildOptions(out=part, text_dir=tiny_text_dir, **TINY_BUILD))  # back to the original inputs
    for f in sorted(tiny_data.glob("*.bin")) + [tiny_data / "tokenizer.model"]:
        assert sha256_file(part / f.name) == sha256_file(f), f.name


def test_manifest_records_the_inputs_and_the_tokenizer_hash(tiny_data: Path, tiny_text_dir: Path) -> None:
    m = json.loads((tiny_data / "manifest.json").read_text())
    assert m["tokenizer"]["sha256"] == sha256_file(tiny_data / "tokenizer.model")
    assert m["inputs"] == build_inputs(BuildOptions(out=tiny_data, text_dir=tiny_text_dir, **TINY_BUILD))
    assert m["skipped"] == {}


def test_binary_and_non_utf8_files_are_skipped_and_reported(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    texts = make_text_dir(tmp_path / "t", n_docs=30)
    (texts / "image.txt").write_bytes(bytes(range(256)) * 8)                      # binary: NUL bytes
    (texts / "latin1.txt").write_bytes(("Café naïve façade " * 40).encode("latin-1"))  # not UTF-8
    (texts / "wide.txt").write_bytes(("A UTF-16 text file. " * 40).encode("utf-16"))    # not UTF-8 (BOM)
    out = tmp_path / "o"
    assert main(["data", "build", "--out", str(out), "--text-dir", str(texts), "--vocab-size", str(TINY_VOCAB),
                 "--val-permille", "200"]) == 0
    printed = capsys.readouterr().out
    assert "skipped 3 --text-dir files" in printed and "1 binary (image.txt)" in printed
    assert "2 not UTF-8 (latin1.txt, wide.txt)" in printed
    m = json.loads((out / "manifest.json").read_text())
    assert m["skipped"] == {"binary": {"count": 1, "files": ["image.txt"]},
                            "not_utf8": {"count": 2, "files": ["latin1.txt", "wide.txt"]}}
    ids = [i for split in ("train", "val") for i in json.loads((out / "docs" / f"{split}_ids.json").read_text())]
    assert len(ids) == 30 and not any(i.endswith(("image.txt", "latin1.txt", "wide.txt")) for i in ids)
    assert main(["data", "build", "--out", str(out), "--text-dir", str(texts), "--vocab-size", str(TINY_VOCAB),
                 "--val-permille", "200"]) == 0  # reused: the skip is still reported
    assert "nothing to do" in (printed := capsys.readouterr().out) and "skipped 3 --text-dir files" in printed


def test_a_text_dir_of_only_unreadable_files_says_so(tmp_path: Path) -> None:
    texts = tmp_path / "t"
    texts.mkdir()
    for i in range(3):
        (texts / f"{i}.txt").write_bytes(b"\x00\x01binary" * 100)
    with pytest.raises(CorpusError, match="too small to split.*skipped 3 --text-dir files: 3 binary"):
        build(BuildOptions(out=tmp_path / "o", text_dir=texts, vocab_size=TINY_VOCAB))


def test_text_file_problem() -> None:
    assert text_file_problem("naïve 日本語 🙂\n".encode()) is None
    assert text_file_problem(b"\xef\xbb\xbfwith a UTF-8 BOM") is None
    assert text_file_problem(b"plain\x00binary") == "binary"
    assert text_file_problem("café".encode("latin-1")) == "not_utf8"
    assert text_file_problem("text".encode("utf-16")) == "not_utf8"


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


# -- document order: every prefix mixes the sources ----------------------------------------------------

MIX_SOURCES = {"a_large": 90, "b_medium": 45, "c_small": 20}  # folders in sorted order, as Debian's packages are


@pytest.fixture(scope="module")
def mixed_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A build from a text dir with three sources (sub-folders) of different sizes."""
    texts = tmp_path_factory.mktemp("mixed_texts")
    for seed, (name, n) in enumerate(MIX_SOURCES.items()):
        make_text_dir(texts / name, n_docs=n, seed=100 + seed)
    out = tmp_path_factory.mktemp("mixed") / "d"
    build(BuildOptions(out=out, text_dir=texts, vocab_size=TINY_VOCAB, val_permille=200, shard_tokens=8000))
    return out


def doc_tokens(out: Path, split: str) -> list[tuple[str, int]]:
    """(source, tokens) of each document of a split, in shard order."""
    ids = json.loads((out / "docs" / f"{split}_ids.json").read_text())
    toks = load_tokens(sorted(out.glob(f"{split}_*.bin")))
    starts = np.flatnonzero(toks == BOS_ID)
    assert len(starts) == len(ids) and starts[0] == 0
    return [(doc_source(i), int(n)) for i, n in zip(ids, np.diff(np.append(starts, len(toks))))]


def prefix_mix(docs: list[tuple[str, int]], n_tokens: int) -> dict[str, int]:
    mix: dict[str, int] = {}
    left = n_tokens
    for src, n in docs:
        if left <= 0:
            break
        mix[src] = mix.get(src, 0) + min(n, left)
        left -= n
    return mix


def mix_tolerance(docs: list[tuple[str, int]]) -> dict[str, float]:
    """How far (in tokens) the build's order lets a prefix stray from a source's exact share.

    sources.mixed_order places documents by the fraction k of their source's bytes that lies before
    their middle, so a prefix that ends at key k holds k x (source s's tokens) to within m_s / 2, m_s
    being the largest document of s (the one straddling k is in when its middle is before k, else out).
    The prefix length pins k only to within the other sources' such half documents (and the document
    it cuts): about sum(m) / 2 + max(m) tokens of the split, which moves s's count by share_s times
    that. Tolerance: m_s / 2 + share_s x (sum(m) / 2 + max(m)). Token counts per byte differ a little
    between documents; the margins below are far larger than that.
    """
    whole = prefix_mix(docs, 1 << 62)
    total = sum(whole.values())
    m = {s: max(t for src, t in docs if src == s) for s in whole}
    return {s: m[s] / 2 + whole[s] / total * (sum(m.values()) / 2 + max(m.values())) for s in whole}


def assert_prefix_mixes_sources(mix: dict[str, int], docs: list[tuple[str, int]], n_tokens: int) -> None:
    """Each source's tokens in the first n_tokens are its share of the split, to within mix_tolerance."""
    whole = prefix_mix(docs, 1 << 62)
    total = sum(whole.values())
    tol = mix_tolerance(docs)
    for src, t in whole.items():
        expected = n_tokens * t / total
        got = mix.get(src, 0)
        assert abs(got - expected) <= tol[src], (src, got, round(expected), round(tol[src]), mix)


def test_text_dir_sources_are_first_folders() -> None:
    assert doc_source("text/a_large/doc_001.txt") == "text/a_large"
    assert doc_source("text/doc_001.txt") == "text"
    assert doc_source("linux-doc-6.1/usr/share/doc/x.rst.gz") == "linux-doc-6.1"


def test_prefixes_mix_every_source_in_proportion(mixed_data: Path) -> None:
    """The first third of train and of val holds each source's share of the split.

    The build's order (sources.mixed_order) merges the sources by the fraction of each one's bytes
    already placed, so a prefix deviates from the exact share by about one document per source (see
    mix_tolerance: here 1.0k-2.5k tokens, i.e. 3-8 points of a 31k-token train prefix of ~39 documents;
    a uniform shuffle would need about 3 standard deviations of such a sample, ~20 points, and would
    still fail now and then). The source order of the old build fails the same check: its prefix is
    source a only.
    """
    m = json.loads((mixed_data / "manifest.json").read_text())
    assert m["build_format"] == 2 and m["order"]["seed"] == BuildOptions(out=mixed_data).shuffle_seed
    assert {s["source"] for s in m["sources"]} == {f"text/{n}" for n in MIX_SOURCES}
    for split in ("train", "val"):
        docs = doc_tokens(mixed_data, split)
        whole = prefix_mix(docs, 1 << 62)
        assert set(whole) == {f"text/{n}" for n in MIX_SOURCES}
        n = sum(whole.values()) // 3  # source a alone is over a third of each split
        mix = source_mix(mixed_data, split, n)
        assert mix == prefix_mix(docs, n) and sum(mix.values()) == n
        assert set(mix) == set(whole), f"{split}: a source is missing from the first {n} tokens: {mix}"
        assert_prefix_mixes_sources(mix, docs, n)
        old_order = sorted(docs, key=lambda d: d[0])  # the unshuffled build: sources one after another
        assert set(prefix_mix(old_order, n)) == {"text/a_large"}
        with pytest.raises(AssertionError):
            assert_prefix_mixes_sources(prefix_mix(old_order, n), docs, n)


def test_order_is_deterministic_and_keeps_the_split(tmp_path: Path, mixed_data: Path) -> None:
    ids = json.loads((mixed_data / "docs" / "train_ids.json").read_text())
    val = json.loads((mixed_data / "docs" / "val_ids.json").read_text())
    assert not any(is_val(i, 200) for i in ids) and all(is_val(i, 200) for i in val)
    assert ids != sorted(ids)
    sizes = list(range(100, 100 + len(ids)))
    assert mixed_order(ids, sizes, 1) == mixed_order(ids, sizes, 1) != mixed_order(ids, sizes, 2)


def test_old_unshuffled_build_is_not_finished(tmp_path: Path, tiny_text_dir: Path, tiny_data: Path) -> None:
    """A build of format 1 (no build_format in manifest.json, no inputs in documents.json) is rebuilt whole."""
    copy = tmp_path / "old"
    shutil.copytree(tiny_data, copy)
    man = json.loads((copy / "manifest.json").read_text())
    del man["build_format"]
    (copy / "manifest.json").write_text(json.dumps(man))
    docs = json.loads((copy / "docs" / "documents.json").read_text())
    del docs["inputs"]
    (copy / "docs" / "documents.json").write_text(json.dumps(docs))
    (copy / "tokenizer.model").write_bytes(b"an old tokenizer")
    assert not is_finished(copy)
    build(BuildOptions(out=copy, text_dir=tiny_text_dir, vocab_size=TINY_VOCAB, val_permille=200, shard_tokens=8000))
    assert is_finished(copy)
    for f in sorted(tiny_data.glob("*.bin")) + [tiny_data / "tokenizer.model"]:
        assert sha256_file(copy / f.name) == sha256_file(f), f.name


def test_other_order_seed_rebuilds_the_documents(tmp_path: Path, tiny_text_dir: Path, tiny_data: Path) -> None:
    copy = tmp_path / "seed"
    shutil.copytree(tiny_data, copy)
    (copy / "manifest.json").unlink()
    build(BuildOptions(out=copy, text_dir=tiny_text_dir, vocab_size=TINY_VOCAB, val_permille=200, shard_tokens=8000,
                       shuffle_seed=7))
    m = json.loads((copy / "manifest.json").read_text())
    assert m["order"]["seed"] == 7
    assert ((copy / "docs" / "train_ids.json").read_text() != (tiny_data / "docs" / "train_ids.json").read_text())


DEFAULT = Path(__file__).resolve().parents[1] / "data" / "default"


@pytest.mark.skipif(not (DEFAULT / "manifest.json").exists(), reason="data/default is not built")
def test_default_corpus_prefixes_mix_every_source() -> None:
    """What the CPU experiments read (the first 1,024,000 train and 131,072 val tokens) holds every
    package in its share of the split, to within about one document per package (mix_tolerance)."""
    m = json.loads((DEFAULT / "manifest.json").read_text())
    if m.get("build_format") != 2:
        pytest.skip("data/default is an old unshuffled build; run `recur data build --force`")
    for split, n in (("train", 1_024_000), ("val", 131_072)):
        docs = doc_tokens(DEFAULT, split)
        whole = prefix_mix(docs, 1 << 62)
        mix = prefix_mix(docs, n)
        assert_prefix_mixes_sources(mix, docs, n)
        # every source whose share of the prefix exceeds the tolerance is present
        total, tol = sum(whole.values()), mix_tolerance(docs)
        assert all(mix.get(s, 0) > 0 for s in whole if n * whole[s] / total > tol[s]), (split, mix)
        if all(src.get("matches_lock") for src in m["sources"]) and m["order"]["seed"] == 20261125:
            # The bound above is loose here (perl-doc holds a 340k-token document). Measured on the
            # locked corpus in its default order (README): every package is within 1.2 points of its
            # share in the train prefix (all 9 present) and within 3.8 points in val (perl-doc and
            # debian-handbook, 7 and 2 val documents of up to 15k tokens, fall outside its prefix).
            worst = max(abs(mix.get(s, 0) / n - whole[s] / total) for s in whole)
            assert worst <= (0.02 if split == "train" else 0.05), (split, worst, mix)
            assert split == "val" or set(mix) == set(whole)
