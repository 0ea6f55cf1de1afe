"""open_data and the `recur` CLI: a config pointed at data, and every wrong pointer explained."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recur_lib.cli import main
from recur_lib.config import Config
from recur_lib.data import open_data
import json
import shutil

from recur_lib.data.bpb import roundtrip_tokens
from recur_lib.data.dataset import DataError
from recur_lib.data.loader import load_tokens
from recur_lib.data.shards import ShardError, write_shard
from recur_lib.data.tokenizer import TokenizerError, load_tokenizer

from conftest import TINY_VOCAB


def cfg_for(root: Path, **kw) -> Config:
    return Config.from_name("smoke", {"data.root": str(root), "model.vocab_size": TINY_VOCAB, **kw})


def test_open_data(tiny_data: Path) -> None:
    d = open_data(cfg_for(tiny_data))
    assert len(d.train_files) >= 2 and len(d.val_files) == 1
    assert d.tokenizer.vocab_size() == TINY_VOCAB and len(d.tables.base_bytes) == TINY_VOCAB


def test_wrong_vocab_is_explained(tiny_data: Path) -> None:
    with pytest.raises(TokenizerError, match=f"set model.vocab_size={TINY_VOCAB}"):
        open_data(cfg_for(tiny_data, **{"model.vocab_size": 300}))
    with pytest.raises(TokenizerError, match=f"model.vocab_size={TINY_VOCAB}"):
        open_data(cfg_for(tiny_data, **{"model.vocab_size": 1024}))


def test_missing_folder_and_tokenizer_are_explained(tmp_path: Path) -> None:
    with pytest.raises(ShardError, match="recur data build"):
        open_data(cfg_for(tmp_path / "nowhere"))
    write_shard(tmp_path / "train_000000.bin", np.array([1, 2, 3]))
    write_shard(tmp_path / "val_000000.bin", np.array([1, 2, 3]))
    with pytest.raises(TokenizerError, match="tokenizer model not found"):
        open_data(cfg_for(tmp_path))
    (tmp_path / "tokenizer.model").write_bytes(b"garbage")
    with pytest.raises(TokenizerError, match="not a SentencePiece model"):
        open_data(cfg_for(tmp_path))


# -- the tokenizer is tied to the shards ------------------------------------------------------------


def fineweb_like(tiny_data: Path, folder: Path, tokenizer: Path | None = None) -> Path:
    """tiny_data's shards under official FineWeb names, with no manifest of ours (and no docs/ folder)."""
    folder.mkdir()
    for f in sorted(tiny_data.glob("*_*.bin")):
        split, idx = f.stem.split("_")
        shutil.copy(f, folder / f"fineweb_{split}_{idx}.bin")
    shutil.copy(tokenizer or tiny_data / "tokenizer.model", folder / "fineweb_400_bpe.model")
    return folder


def fineweb_cfg(folder: Path, **kw) -> Config:
    return cfg_for(folder, **{"data.tokenizer": "fineweb_400_bpe.model", **kw})


def test_a_tokenizer_from_another_corpus_is_refused_naming_both_files(tiny_data: Path, other_data: Path) -> None:
    """Same vocabulary size, another corpus: it loads and gives a wrong bpb, so open_data must refuse it."""
    other = other_data / "tokenizer.model"
    assert load_tokenizer(other).vocab_size() == TINY_VOCAB
    with pytest.raises(DataError) as e:
        open_data(cfg_for(tiny_data, **{"data.tokenizer": str(other)}))
    msg = str(e.value)
    assert str(other) in msg and str(tiny_data / "tokenizer.model") in msg and "manifest.json" in msg
    assert "data.tokenizer" in msg
    d = open_data(cfg_for(tiny_data))
    assert d.check.startswith("manifest: tokenizer hash matches") and d.manifest is not None


def test_a_folder_without_manifest_needs_the_override(tiny_data: Path, other_data: Path, tmp_path: Path) -> None:
    fw = fineweb_like(tiny_data, tmp_path / "fw")
    with pytest.raises(DataError, match="data.trust_unmanifested=true") as e:
        open_data(fineweb_cfg(fw))
    assert "no manifest.json" in str(e.value) and str(fw / "fineweb_400_bpe.model") in str(e.value)
    d = open_data(fineweb_cfg(fw, **{"data.trust_unmanifested": True}))
    assert d.manifest is None and d.check.startswith("no manifest") and "compared" in d.check
    wrong = fineweb_like(tiny_data, tmp_path / "wrong", other_data / "tokenizer.model")
    with pytest.raises(DataError, match="does not reproduce the shards") as e:
        open_data(fineweb_cfg(wrong, **{"data.trust_unmanifested": True}))
    assert "fineweb_400_bpe.model" in str(e.value)


def test_ids_beyond_a_smaller_tokenizer_are_refused_under_the_override(tiny_data: Path, tmp_path: Path) -> None:
    from recur_lib.data.tokenizer import train_tokenizer
    (tmp_path / "lines.txt").write_text("lorem ipsum dolor sit amet, consectetur adipiscing elit\n" * 50)
    small = train_tokenizer(tmp_path / "lines.txt", tmp_path / "small.model", 300)
    assert small.vocab_size() == 300
    fw = fineweb_like(tiny_data, tmp_path / "fw", tmp_path / "small.model")
    with pytest.raises(DataError, match="has 300 pieces, so the shards were made with another tokenizer") as e:
        open_data(fineweb_cfg(fw, **{"data.trust_unmanifested": True, "model.vocab_size": 300}))
    assert "fineweb_val_000000.bin" in str(e.value)


def test_roundtrip_tells_the_right_tokenizer_from_a_wrong_one(tiny_data: Path, other_data: Path) -> None:
    """The byte audit passes under both tokenizers (it counts and decodes with the same one); the round
    trip does not."""
    from recur_lib.data.bpb import audit_tokens, build_byte_tables
    val = load_tokens(sorted(tiny_data.glob("val_*.bin")))
    right, wrong = load_tokenizer(tiny_data / "tokenizer.model"), load_tokenizer(other_data / "tokenizer.model")
    assert audit_tokens(val, wrong, build_byte_tables(wrong)).ok
    good, bad = roundtrip_tokens(val, right), roundtrip_tokens(val, wrong)
    n_val = json.loads((tiny_data / "manifest.json").read_text())["splits"]["val"]["docs"]
    assert good.ok and good.n_same == good.n_docs == n_val
    assert not bad.ok and bad.fraction < 0.5 and bad.mismatches


def test_cli_audit_says_which_check_it_did(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["--preset", "smoke", "--set", f"model.vocab_size={TINY_VOCAB}"]
    assert main(["data", "audit", *args, "--set", f"data.root={tiny_data}"]) == 0
    out = capsys.readouterr().out
    assert "manifest: tokenizer hash matches" in out and "bpb audit OK" in out
    fw = fineweb_like(tiny_data, tmp_path / "fw")
    fw_args = [*args, "--set", f"data.root={fw}", "--set", "data.tokenizer=fineweb_400_bpe.model"]
    assert main(["data", "audit", *fw_args]) == 2
    assert "data.trust_unmanifested" in capsys.readouterr().err
    assert main(["data", "audit", *fw_args, "--set", "data.trust_unmanifested=true"]) == 0
    out = capsys.readouterr().out
    n = json.loads((tiny_data / "manifest.json").read_text())["splits"]["val"]["docs"]
    assert f"no manifest: decoded {n} documents and compared: {n} re-encode" in out and "bpb audit OK" in out


def test_first_documents_are_whole(tiny_data: Path) -> None:
    """The sample open_data re-encodes under the override: whole documents only, cut at a boundary."""
    from recur_lib.data.dataset import first_documents
    toks = np.array([1, 5, 6, 1, 7, 1, 8, 9, 9, 1, 4], dtype=np.uint16)
    assert first_documents(toks, 2, 100).tolist() == [1, 5, 6, 1, 7]           # max_docs
    assert first_documents(toks, 10, 100).tolist() == toks.tolist()            # the shard ends the last one
    assert first_documents(toks, 10, 6).tolist() == [1, 5, 6, 1, 7]            # the third is cut by max_tokens
    assert first_documents(toks, 10, 2).tolist() == [1, 5, 6]                  # one longer than max_tokens
    assert first_documents(toks[1:], 10, 100).tolist() == toks[3:].tolist()    # a cut first document is skipped
    assert first_documents(np.array([5, 6], dtype=np.uint16), 10, 100).tolist() == []


# -- unfinished builds are refused by every reader ---------------------------------------------------


def test_an_unfinished_build_is_refused_even_under_the_override(tiny_data: Path, tiny_text_dir: Path,
                                                              tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """An interrupted --force rebuild: half the train shards, no manifest."""
    part = tmp_path / "part"
    shutil.copytree(tiny_data, part)
    (part / "manifest.json").unlink()
    train = sorted(part.glob("train_*.bin"))
    for f in train[len(train) // 2:]:
        f.unlink()
    for trust in (False, True):
        with pytest.raises(DataError, match="did not finish") as e:
            open_data(cfg_for(part, **{"data.trust_unmanifested": trust}))
        # the message names the command that finishes the build, with the options it was started with
        assert (f"recur data build --out {part} --text-dir {tiny_text_dir} --vocab-size {TINY_VOCAB} "
                "--val-permille 200 --shard-tokens 8000") in str(e.value)
    args = ["--preset", "smoke", "--set", f"model.vocab_size={TINY_VOCAB}", "--set", f"data.root={part}"]
    assert main(["data", "audit", *args]) == 2
    assert "did not finish" in capsys.readouterr().err
    assert main(["data", "info", "--out", str(part)]) == 1
    assert "not a finished build" in capsys.readouterr().err


def test_a_damaged_or_foreign_shard_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(tiny_data, bad)
    shard = sorted(bad.glob("train_*.bin"))[1]
    shard.write_bytes(shard.read_bytes()[:-2] + b"\x07\x00")
    with pytest.raises(DataError, match="sha256 differs") as e:
        open_data(cfg_for(bad))
    assert str(shard) in str(e.value)
    stray = tmp_path / "stray"
    shutil.copytree(tiny_data, stray)
    shutil.copy(stray / "train_000000.bin", stray / "train_000099.bin")
    with pytest.raises(DataError, match="does not list it") as e:
        open_data(cfg_for(stray))
    assert "train_000099.bin" in str(e.value)
    with pytest.raises(DataError, match="does not list it"):  # a train glob that also takes the val shards
        open_data(cfg_for(tiny_data, **{"data.train_glob": "*_*.bin"}))


def test_an_old_format_manifest_is_refused(tiny_data: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(tiny_data, old)
    m = json.loads((old / "manifest.json").read_text())
    del m["build_format"]
    (old / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="build format None is not the current 2"):
        open_data(cfg_for(old))


# -- an empty val split fails the audit -------------------------------------------------------------


def test_auditing_an_empty_val_split_fails(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    fw = fineweb_like(tiny_data, tmp_path / "fw")
    args = ["--preset", "smoke", "--set", f"model.vocab_size={TINY_VOCAB}", "--set", f"data.root={fw}",
            "--set", "data.tokenizer=fineweb_400_bpe.model", "--set", "data.trust_unmanifested=true"]
    write_shard(fw / "fineweb_val_000000.bin", np.array([1, 1, 1]))  # three documents without text
    assert main(["data", "audit", *args]) == 1
    out = capsys.readouterr().out
    assert "bpb audit FAILED: the split holds no text" in out and "fineweb_val_000000.bin" in out
    write_shard(fw / "fineweb_val_000000.bin", np.zeros(0, dtype=np.uint16))  # no tokens at all
    assert main(["data", "audit", *args]) == 2
    err = capsys.readouterr().err
    assert "every val shard is empty" in err and "fineweb_val_000000.bin" in err


def test_cli_config_show(capsys: pytest.CaptureFixture) -> None:
    assert main(["config", "show", "--preset", "smoke", "--set", "model.dim=64"]) == 0
    out = capsys.readouterr().out
    assert "model.dim = 64" in out and "effective layers 4" in out
    assert main(["config", "show", "--preset", "smoke", "--set", "model.dimm=64"]) == 2
    assert "did you mean 'model.dim'" in capsys.readouterr().err
    assert main(["config", "show", "--set", "model.dim"]) == 2
    assert "expected key=value" in capsys.readouterr().err


def test_cli_json_roundtrip(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["config", "show", "--preset", "seed-927", "--json"]) == 0
    (tmp_path / "c.json").write_text(capsys.readouterr().out)
    assert Config.load(tmp_path / "c.json") == Config.from_name("seed-927")
    assert main(["config", "show", "--config", str(tmp_path / "c.json"), "--set", "schedule.n_loops=8"]) == 0
    assert "schedule.n_loops = 8" in capsys.readouterr().out


def test_cli_build_and_audit(tmp_path: Path, tiny_text_dir: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "d"
    assert main(["data", "build", "--out", str(out), "--text-dir", str(tiny_text_dir),
                 "--vocab-size", str(TINY_VOCAB), "--val-permille", "200"]) == 0
    assert "bytes/token" in capsys.readouterr().out
    args = ["--preset", "smoke", "--set", f"data.root={out}", "--set", f"model.vocab_size={TINY_VOCAB}"]
    assert main(["data", "audit", *args]) == 0
    assert "bpb audit OK" in capsys.readouterr().out
    assert main(["data", "info", "--out", str(out)]) == 0
    assert main(["data", "info", "--out", str(tmp_path / "none")]) == 1
    assert main(["data", "build", "--out", str(tmp_path / "e"), "--text-dir", str(tmp_path / "missing")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_cli_model_describe(capsys: pytest.CaptureFixture) -> None:
    assert main(["model", "describe", "--preset", "seed-1096"]) == 0
    out = capsys.readouterr().out
    assert "P0 | 1 2 3 4 | 1 2 3 4 | 1 2 3 4 | C5" in out and "14 effective layers from 6 unique blocks" in out
