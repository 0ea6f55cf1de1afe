"""open_data and the `recur` CLI: a config pointed at data, and every wrong pointer explained."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from recur_lib.cli import main
from recur_lib.config import Config
from recur_lib.data import open_data
from recur_lib.data.shards import ShardError, write_shard
from recur_lib.data.tokenizer import TokenizerError

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
    assert main(["config", "show", "--config", str(tmp_path / "c.json"), "--set", "schedule.n_loops=3"]) == 0
    assert "schedule.n_loops = 3" in capsys.readouterr().out


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
