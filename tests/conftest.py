"""Shared fixtures: a small deterministic corpus built through the real pipeline (no Debian needed)."""
from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

from recur_lib.data.corpus.build import BuildOptions, build

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: reference/baseline_gpt.py

WORDS = ("the of and to in is was for on that with as by at from his her it an were are which this be "
         "model loop token layer weight shared block quantization budget artifact compression training "
         "recurrent transformer attention matrix vector gradient optimizer schedule evaluation window "
         "naïve café façade Zürich résumé coöperate").split()
RARE = ["日本語", "🙂", "Ωmega", "—", "€", "ß", "ñandú", "Œuvre"]


def make_text_dir(folder: Path, n_docs: int = 60, seed: int = 0) -> Path:
    """Pseudo-English documents with digits, accents and rare multi-byte characters."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        paras = []
        for _ in range(rng.randint(3, 8)):
            sents = []
            for _ in range(rng.randint(2, 6)):
                words = [rng.choice(WORDS) for _ in range(rng.randint(4, 14))]
                if rng.random() < 0.3:
                    words.insert(rng.randrange(len(words)), str(rng.randint(0, 99999)))
                if rng.random() < 0.15:
                    words.insert(rng.randrange(len(words)), rng.choice(RARE))
                sents.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", ";"]))
            paras.append(" ".join(sents))
        (folder / f"doc_{i:03d}.txt").write_text("\n\n".join(paras) + "\n", encoding="utf-8")
    return folder


TINY_VOCAB = 400


@pytest.fixture(scope="session")
def tiny_text_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_text_dir(tmp_path_factory.mktemp("texts"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory, tiny_text_dir: Path) -> Path:
    """A finished build (tokenizer, multi-shard train, val, manifest) in a temporary folder."""
    out = tmp_path_factory.mktemp("data") / "tiny"
    build(BuildOptions(out=out, text_dir=tiny_text_dir, vocab_size=TINY_VOCAB, val_permille=200, shard_tokens=8000))
    return out


# The options tiny_data is built with (tests that rebuild or compare with it use the same).
TINY_BUILD = dict(vocab_size=TINY_VOCAB, val_permille=200, shard_tokens=8000)

LATIN = ("lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et "
         "dolore magna aliqua enim ad minim veniam quis nostrud exercitation ullamco laboris nisi aliquip ex ea "
         "commodo consequat duis aute irure in reprehenderit voluptate velit esse cillum fugiat nulla pariatur").split()


def make_other_text_dir(folder: Path, n_docs: int = 60, seed: int = 1) -> Path:
    """Documents in another vocabulary (Latin filler, numbers): a corpus whose tokenizer of TINY_VOCAB
    pieces splits text differently from tiny_data's."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        sents = [" ".join(rng.choice(LATIN) for _ in range(rng.randint(5, 15))).capitalize() + "."
                 for _ in range(rng.randint(10, 30))]
        (folder / f"other_{i:03d}.txt").write_text(" ".join(sents) + f" {rng.randint(0, 10 ** 6)}\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def other_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished build of another corpus with a tokenizer of the same vocabulary size as tiny_data's."""
    texts = make_other_text_dir(tmp_path_factory.mktemp("other_texts"))
    out = tmp_path_factory.mktemp("other") / "other"
    build(BuildOptions(out=out, text_dir=texts, **TINY_BUILD))
    return out
