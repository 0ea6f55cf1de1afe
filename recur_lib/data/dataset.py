"""A config's data, opened and checked: shard lists, tokenizer and byte tables.

`open_data(cfg)` is the one place that turns `cfg.data` into files, so that a wrong folder, a missing
tokenizer or a vocabulary mismatch fails before any training starts, with a message saying what to do.

It also ties the tokenizer to the shards, because a tokenizer of the right vocabulary size from another
corpus loads without complaint and gives a wrong val_bpb (the byte audit agrees with itself under any
tokenizer). A folder built by `recur data build` is used only when its `manifest.json` is finished
(`verify_build`: this build format, every shard and the tokenizer matching their recorded sha256) and
`data.tokenizer` is the manifest's tokenizer by sha256. A folder with no manifest of ours (official
FineWeb shards) is refused unless `data.trust_unmanifested` is set; then the first val documents must
re-encode, under the tokenizer, to the ids they hold.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import sentencepiece as spm

from .bpb import ByteTables, RoundTripReport, build_byte_tables, roundtrip_tokens
from ..config import Config
from ..paths import resolve
from .shards import list_shards, read_header, read_shard
from .tokenizer import BOS_ID, TokenizerError, load_tokenizer

# 1: documents in source order (every prefix is the first package only); 2: documents in mixed_order.
# A manifest or documents.json of another format is not finished, so an old build is rebuilt.
BUILD_FORMAT = 2
SHUFFLE_SEED = 20261125  # the build's default document order (here, not in corpus.build: readers never import it)
MANIFEST = "manifest.json"
BUILD_RECORD = "docs/build.json"  # a build's inputs, written when it starts: names the command that finishes it
# The check under data.trust_unmanifested: the first val documents, decoded and encoded again. A wrong
# tokenizer reproduces almost none of them (1 of 547 on the default val), the right one all.
SAMPLE_DOCS = 32
SAMPLE_TOKENS = 1 << 16
SAMPLE_MIN_FRACTION = 0.5  # lenient: training must never be refused over a rare document that does not round trip


class DataError(ValueError):
    """A data folder is an unfinished build, or its tokenizer is not the one its shards were made with."""


@dataclass
class Data:
    root: Path
    train_files: list[Path]
    val_files: list[Path]
    tokenizer: spm.SentencePieceProcessor
    tables: ByteTables
    check: str = ""                          # how the tokenizer was tied to the shards, in words
    manifest: dict[str, Any] | None = None   # None: a folder opened under data.trust_unmanifested


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def build_command(root: Path, inputs: dict[str, Any] | None) -> str:
    """The `recur data build` command that (re)makes root with the recorded inputs, for messages."""
    if not inputs:
        return f"recur data build --out {root} (with the options it was first built with)"
    flags = [("text_dir", "--text-dir"), ("vocab_size", "--vocab-size"), ("val_permille", "--val-permille"),
             ("shard_tokens", "--shard-tokens"), ("tokenizer_max_bytes", "--tokenizer-max-bytes")]
    cmd = f"recur data build --out {root}" + "".join(f" {flag} {inputs[k]}" for k, flag in flags
                                                      if inputs.get(k) is not None)
    if inputs.get("shuffle_seed") not in (None, SHUFFLE_SEED):
        cmd += f" (and BuildOptions.shuffle_seed={inputs['shuffle_seed']}, which has no flag)"
    return cmd


def _recorded_inputs(root: Path) -> dict[str, Any] | None:
    for path, key in ((root / MANIFEST, "inputs"), (root / BUILD_RECORD, "inputs")):
        try:
            inputs = json.loads(path.read_text()).get(key)
        except (OSError, ValueError, AttributeError):
            continue
        if inputs:
            return inputs
    return None


def is_build_folder(root: Path) -> bool:
    """True when root holds traces of `recur data build` (its manifest or its docs/ stage folder)."""
    return (root / MANIFEST).exists() or (root / "docs").is_dir()


def verify_build(root: Path) -> dict[str, Any]:
    """The manifest of the finished build in root; raises DataError saying why root is not one and which
    command finishes it. Finished: manifest.json exists (the build writes it last), is of BUILD_FORMAT,
    and every shard and the tokenizer it lists match their recorded sha256."""
    man = root / MANIFEST
    redo = build_command(root, _recorded_inputs(root))
    if not man.exists():
        raise DataError(f"{root}: no {MANIFEST}, so this build did not finish (interrupted, or failed): its shards "
                        f"may be partial and are not used. Finish it with `{redo}`")
    try:
        m = json.loads(man.read_text())
        if not isinstance(m, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as e:
        raise DataError(f"{man}: unreadable ({e}); rebuild with `{redo} --force`") from None
    if m.get("build_format") != BUILD_FORMAT:
        raise DataError(f"{man}: build format {m.get('build_format')} is not the current {BUILD_FORMAT} (an older "
                        f"build, e.g. documents in source order); rebuild with `{redo}`")
    try:
        files = [(s["file"], s["sha256"]) for split in m["splits"].values() for s in split["shards"]]
        files.append((m["tokenizer"]["file"], m["tokenizer"]["sha256"]))
    except (KeyError, TypeError, AttributeError) as e:
        raise DataError(f"{man}: lacks the shard and tokenizer checksums ({e!r} missing); rebuild with "
                        f"`{redo} --force`") from None
    for name, expected in files:
        path = root / name
        if not path.is_file():
            raise DataError(f"{path}: listed in {man} but missing; rebuild with `{redo}`")
        if sha256_file(path) != expected:
            raise DataError(f"{path}: sha256 differs from the one {man} records (the file changed after the build); "
                            f"rebuild with `{redo}`")
    return m


def _check_against_manifest(root: Path, m: dict[str, Any], tok_path: Path, train: Sequence[Path],
                            val: Sequence[Path], train_glob: str, val_glob: str) -> str:
    man = root / MANIFEST
    recorded = root / m["tokenizer"]["file"]
    digest = m["tokenizer"]["sha256"]
    if tok_path.resolve() != recorded.resolve():  # verify_build has hashed the recorded file already
        h = sha256_file(tok_path)
        if h != digest:
            raise DataError(f"{tok_path} (sha256 {h[:12]}) is not the tokenizer the shards in {root} were built with: "
                            f"{man} records {recorded} (sha256 {digest[:12]}). Another tokenizer reads the same ids "
                            f"as other text and gives a wrong val_bpb. Set data.tokenizer to {recorded} (the default "
                            "'tokenizer.model'), or point data.root at the data built with this tokenizer")
    for split, files, glob in (("train", train, train_glob), ("val", val, val_glob)):
        listed = {s["file"] for s in m["splits"][split]["shards"]}
        for f in files:
            if f.relative_to(root).as_posix() not in listed:
                raise DataError(f"{f}: matches data.{split}_glob={glob!r} but {man} does not list it among the "
                                f"{split} shards: it belongs to another build, or the glob also matches the other "
                                f"split. Remove the file or narrow data.{split}_glob")
    return f"manifest: tokenizer hash matches ({man}: {recorded.name} sha256 {digest[:12]})"


def first_documents(tokens: np.ndarray, max_docs: int, max_tokens: int) -> np.ndarray:
    """The whole `[bos] + ids` documents that start in a shard's first max_tokens tokens, at most max_docs
    of them and at least one; a document cut by max_tokens is left out (its prefix may encode otherwise)."""
    n = len(tokens)
    head = np.asarray(tokens[:max_tokens])
    starts = np.flatnonzero(head == BOS_ID)
    if not len(starts):
        return head[:0]
    bounds = [int(s) for s in starts[:max_docs + 1]]
    if len(bounds) <= max_docs:  # the last document starting in the head may run past it
        if n <= max_tokens:
            bounds.append(n)
        elif len(bounds) == 1:
            bounds.append(_next_bos(tokens, max_tokens))
    return np.asarray(tokens[bounds[0]:bounds[-1]])


def _next_bos(tokens: np.ndarray, start: int, chunk: int = 1 << 20) -> int:
    for i in range(start, len(tokens), chunk):
        hits = np.flatnonzero(np.asarray(tokens[i:i + chunk]) == BOS_ID)
        if len(hits):
            return i + int(hits[0])
    return len(tokens)


def check_by_decoding(val: Sequence[Path], sp: spm.SentencePieceProcessor, tok_path: Path) -> RoundTripReport:
    """Decode the first val documents and encode them again; refuse (DataError) when most of them come back
    as other ids, which means the shards were made with another tokenizer."""
    shard = next((f for f in val if read_header(f) > 0), None)
    if shard is None:
        raise DataError(f"{val[0].parent}: every val shard is empty ({', '.join(f.name for f in val)}): the val split "
                        "holds no text, so neither the tokenizer nor val_bpb can be checked. Point data.val_glob at "
                        "the val shards, or rebuild the data with `recur data build`")
    docs = first_documents(read_shard(shard), SAMPLE_DOCS, SAMPLE_TOKENS)
    if len(docs) and int(docs.max()) >= sp.vocab_size():
        raise DataError(f"{shard}: holds token id {int(docs.max())} but {tok_path} has {sp.vocab_size()} pieces, so "
                        "the shards were made with another tokenizer; set data.tokenizer to theirs (official FineWeb "
                        "sp1024: fineweb_1024_bpe.model)")
    rt = roundtrip_tokens(docs, sp)
    if rt.n_docs == 0 or rt.fraction < SAMPLE_MIN_FRACTION:
        raise DataError(f"{tok_path} does not reproduce the shards in {shard.parent}: {rt.summary()} (documents at "
                        f"the start of {shard.name}; the tokenizer the shards were made with re-encodes them all). "
                        "Another tokenizer gives a wrong val_bpb: set data.tokenizer to the tokenizer these shards "
                        "were made with (official FineWeb sp1024: fineweb_1024_bpe.model)")
    return rt


def open_data(cfg: Config, check_ids: bool = True) -> Data:
    """Resolve cfg.data, load the tokenizer, tie it to the shards (module docstring), and check it (and the
    first shards) against model.vocab_size."""
    d, vocab = cfg.data, cfg.model.vocab_size
    root = resolve(d.root)
    # data.trust_unmanifested is for shards from elsewhere: a build of ours is used only once finished,
    # and checked first, so that an interrupted build is named as such rather than by what it lacks.
    manifest = verify_build(root) if is_build_folder(root) else None
    train = list_shards(root, d.train_glob)
    val = list_shards(root, d.val_glob)
    tok_path = resolve(d.tokenizer, base=root)
    sp = load_tokenizer(tok_path)
    if manifest is not None:
        check = _check_against_manifest(root, manifest, tok_path, train, val, d.train_glob, d.val_glob)
    elif d.trust_unmanifested:
        rt = check_by_decoding(val, sp, tok_path)
        check = f"no manifest (data.trust_unmanifested): {rt.summary()}"
    else:
        raise DataError(f"{root}: no {MANIFEST}, so nothing ties {tok_path} to these shards (a tokenizer of the same "
                        "vocabulary from another corpus loads fine and gives a wrong val_bpb). For data of ours, "
                        "build it with `recur data build --out <folder>`. For official FineWeb shards, set "
                        "data.tokenizer to the tokenizer they were made with and data.trust_unmanifested=true; "
                        "then `recur data audit` decodes the val documents and compares them")
    if sp.vocab_size() != vocab:
        raise TokenizerError(f"{root}: tokenizer has {sp.vocab_size()} pieces but model.vocab_size = {vocab}; "
                             f"set model.vocab_size={sp.vocab_size()} (e.g. --set model.vocab_size={sp.vocab_size()})")
    if check_ids:
        for f in (train[0], val[0]):
            read_shard(f, vocab)  # raises naming the file if an id is out of range
    return Data(root, train, val, sp, build_byte_tables(sp, vocab), check, manifest)
