"""`recur data build`: corpus -> tokenizer -> shards -> audit -> manifest, re-runnable.

Stages, each of which writes its outputs atomically and is skipped when its finished output exists:

0. `docs/build.json`: the build's inputs (`build_inputs`), written first, so that a reader refusing
   an interrupted build can name the command that finishes it.
1. documents: fetch and unpack the Debian sources (or read --text-dir: binary and non-UTF-8 files are
   skipped and counted), strip markup, de-duplicate, split train/val by document, put each split in a
   seeded order that interleaves the sources (`sources.mixed_order`) -> `docs/{train,val}.txt`,
   `docs/{train,val}_ids.json` (document ids in that order) + `docs/documents.json`, which records the
   stage's inputs (for --text-dir, a sha256 of its files); a stage whose recorded inputs differ (an
   older build format, another text dir, seed or split) is rebuilt with everything after it.
2. tokenizer: train SentencePiece (official spec) on the training split only -> `tokenizer.model` +
   `docs/tokenizer.json` (its inputs: the sha256 of docs/train.txt, vocab size, byte budget, spec).
3. shards: encode each document as `[bos] + ids` -> `{train,val}_NNNNNN.bin` (official format); always
   redone when the build is not finished (it is the cheap stage).
4. audit + manifest: check the bpb byte count on val, then write `manifest.json` last, with every input.
   A build is finished exactly when `dataset.verify_build` accepts it: manifest.json exists, carries this
   BUILD_FORMAT, and every shard and the tokenizer match their recorded sha256. A finished build is
   reused only when its recorded inputs equal the requested ones; otherwise it is rebuilt.
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from tqdm.auto import tqdm

from ...paths import atomic_write
from ...version import __version__
from ..bpb import audit_split
from ..dataset import BUILD_FORMAT, BUILD_RECORD, MANIFEST, SHUFFLE_SEED, DataError, verify_build
from ..loader import load_tokens
from ..shards import write_shard
from ..tokenizer import BOS_ID, SPEC, encode_documents, load_tokenizer, train_tokenizer
from .sources import (MIX_RULE, SOURCES, CorpusError, Document, deb_version, doc_source, extract_deb, fetch_debs,
                      is_val, mixed_order, select_documents, sha256_file, source_documents, text_dir_documents,
                      text_dir_fingerprint)

CORPUS_LOCK = json.loads((Path(__file__).parent / "corpus_lock.json").read_text())
DOC_SEP = "\x1e"  # record separator between documents in docs/*.txt (never in cleaned text)
SKIPPED_NAMES = 100  # file names kept per skip reason in documents.json and the manifest (all are counted)


@dataclass(frozen=True)
class BuildOptions:
    out: Path                          # the data folder (data.root)
    text_dir: Path | None = None       # build from these .txt files instead of Debian's archive
    vocab_size: int = 1024
    val_permille: int = 50             # share of documents in val, in 1/1000
    shard_tokens: int = 10_000_000     # tokens per shard (official: 10^8)
    tokenizer_max_bytes: int = 0       # train the tokenizer on the first N bytes of train (0 = all)
    shuffle_seed: int = SHUFFLE_SEED   # seed of the document order (sources.mixed_order)
    force: bool = False                # rebuild every stage


def is_finished(out: Path) -> bool:
    """True when `dataset.verify_build` accepts out: the one definition readers and the build share."""
    try:
        verify_build(out)
    except DataError:
        return False
    return True


# Inputs of the stages after the documents (BuildOptions fields of the same names).
_LATER_INPUTS = ("vocab_size", "shard_tokens", "tokenizer_max_bytes")


def build_inputs(opts: BuildOptions) -> dict[str, Any]:
    """Everything a build's output depends on besides the Debian sources' bytes (recorded by sha256)."""
    return {**_documents_inputs(opts), **{k: getattr(opts, k) for k in _LATER_INPUTS}}


def _differences(recorded: dict[str, Any] | None, wanted: dict[str, Any]) -> str:
    """Why recorded inputs are not the wanted ones, in words (for "rebuilding" messages)."""
    if not recorded:
        return "records no inputs (made before builds recorded them)"
    changed = ", ".join(f"{k} {recorded.get(k)!r} -> {wanted.get(k)!r}" for k in sorted(set(recorded) | set(wanted))
                        if recorded.get(k) != wanted.get(k))
    return f"was made with other inputs: {changed}"


# -- stage 1: documents ---------------------------------------------------------------------------


def _debian_documents(out: Path, sources_info: list[dict[str, Any]]) -> Iterator[Document]:
    debs = fetch_debs([s.package for s in SOURCES], out / "debs")
    for src in tqdm(SOURCES, desc="sources", unit="pkg"):
        deb = debs[src.package]
        root = extract_deb(deb, out / "unpacked")
        info = {"package": src.package, "version": deb_version(deb), "deb": deb.name,
                "deb_sha256": sha256_file(deb), "licence": src.licence, "markup": src.markup}
        locked = CORPUS_LOCK["packages"].get(src.package, {})
        info["matches_lock"] = locked.get("deb_sha256") == info["deb_sha256"]
        if not info["matches_lock"]:
            # Debian replaces package versions over time; the corpus then differs from the published one.
            print(f"warning: {deb.name} is not the locked {src.package} {locked.get('version')} "
                  f"(recur_lib/data/corpus/corpus_lock.json); the corpus will differ from the README's numbers", flush=True)
        sources_info.append(info)
        yield from source_documents(src, root)


def _documents_inputs(opts: BuildOptions) -> dict[str, Any]:
    """What the documents stage depends on besides the Debian sources' bytes (which are recorded by sha256)."""
    inputs = {"build_format": BUILD_FORMAT, "text_dir": str(opts.text_dir) if opts.text_dir is not None else None,
              "val_permille": opts.val_permille, "shuffle_seed": opts.shuffle_seed}
    if opts.text_dir is not None:
        # Debian builds lack this key, so their documents.json of before it still matches.
        inputs["text_sha256"] = text_dir_fingerprint(opts.text_dir)
    return inputs


def _skip_report(skipped: dict[str, list[str]]) -> dict[str, dict[str, Any]]:
    return {reason: {"count": len(files), "files": files[:SKIPPED_NAMES]} for reason, files in sorted(skipped.items())}


def skipped_summary(skipped: dict[str, dict[str, Any]]) -> str:
    """One line on the --text-dir files a build skipped ("" when none), for the build's output."""
    words = {"binary": "binary", "not_utf8": "not UTF-8"}
    parts = [f"{v['count']} {words.get(k, k)} ({', '.join(v['files'][:3])}{', ...' if v['count'] > 3 else ''})"
             for k, v in skipped.items() if v["count"]]
    if not parts:
        return ""
    return (f"skipped {sum(v['count'] for v in skipped.values())} --text-dir files: {'; '.join(parts)}. Convert text "
            "files to UTF-8 (e.g. `iconv -f latin1 -t utf-8`) to include them; manifest.json 'skipped' lists them")


def build_documents(opts: BuildOptions, inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    out = opts.out
    docs_dir = out / "docs"
    info_path = docs_dir / "documents.json"
    wanted = {k: v for k, v in (inputs or build_inputs(opts)).items() if k not in _LATER_INPUTS}
    if info_path.exists() and not opts.force:
        info = json.loads(info_path.read_text())
        if info.get("inputs") == wanted:
            return info
        print(f"{docs_dir}: the documents stage {_differences(info.get('inputs'), wanted)}; rebuilding it", flush=True)
    # Everything after this stage derives from its output: unfinished until built again.
    info_path.unlink(missing_ok=True)
    (out / "tokenizer.model").unlink(missing_ok=True)
    docs_dir.mkdir(parents=True, exist_ok=True)
    sources_info: list[dict[str, Any]] = []
    stats: dict[str, int] = {}
    skipped: dict[str, list[str]] = {}
    if opts.text_dir is not None:
        raw = text_dir_documents(opts.text_dir, skipped)
    else:
        raw = _debian_documents(out, sources_info)
    per_source: dict[str, dict[str, int]] = {}
    splits: dict[str, list[Document]] = {"train": [], "val": []}
    for d in select_documents(raw, stats):
        splits["val" if is_val(d.id, opts.val_permille) else "train"].append(d)
        n = len(d.text.encode("utf-8"))
        src = per_source.setdefault(doc_source(d.id), {"docs": 0, "bytes": 0})
        src["docs"] += 1
        src["bytes"] += n
    counts = {s: {"docs": len(docs), "bytes": sum(len(d.text.encode("utf-8")) for d in docs)}
              for s, docs in splits.items()}
    report = _skip_report(skipped)
    if report:
        print(f"{opts.text_dir}: {skipped_summary(report)}", flush=True)
    if counts["train"]["docs"] == 0 or counts["val"]["docs"] == 0:
        raise CorpusError(f"corpus too small to split: {counts} (need documents in both train and val)"
                          + (f"; {skipped_summary(report)}" if report else ""))
    for split, docs in splits.items():
        order = mixed_order([d.id for d in docs], [len(d.text.encode("utf-8")) for d in docs], opts.shuffle_seed)
        atomic_write(docs_dir / f"{split}.txt",
                     lambda f, docs=docs, order=order: f.writelines((docs[i].text + DOC_SEP).encode("utf-8")
                                                                    for i in order))
        atomic_write(docs_dir / f"{split}_ids.json", json.dumps([docs[i].id for i in order], indent=0))
    if opts.text_dir is not None:
        sources_info = [{"source": name, "text_dir": str(opts.text_dir), "licence": "as provided by the user"}
                        for name in sorted(per_source)]
    for info in sources_info:
        info.update(per_source.get(info.get("package", info.get("source", "")), {}))
    info = {"inputs": wanted, "sources": sources_info, "splits": counts, "filtered": stats, "skipped": report,
            "val_permille": opts.val_permille,
            "split_rule": "val iff int(sha256(doc_id)[:8], 16) % 1000 < val_permille",
            "order": {"seed": opts.shuffle_seed, "rule": MIX_RULE, "ids": "docs/{split}_ids.json"}}
    atomic_write(info_path, json.dumps(info, indent=2))  # written last: the stage is finished
    return info


def read_documents(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [d for d in text.split(DOC_SEP) if d]


# -- stage 2: tokenizer ---------------------------------------------------------------------------


def build_tokenizer(opts: BuildOptions) -> Path:
    model = opts.out / "tokenizer.model"
    record = opts.out / "docs" / "tokenizer.json"
    inputs = {"train_sha256": sha256_file(opts.out / "docs" / "train.txt"), "vocab_size": opts.vocab_size,
              "tokenizer_max_bytes": opts.tokenizer_max_bytes, "spec": SPEC}
    if model.exists() and record.exists() and not opts.force:
        done = json.loads(record.read_text())
        if done.get("inputs") == inputs and done.get("sha256") == sha256_file(model):
            return model
    record.unlink(missing_ok=True)  # the model is unfinished until trained on these inputs and recorded
    lines_path = opts.out / "docs" / "tokenizer_train.txt"
    budget = opts.tokenizer_max_bytes or float("inf")
    used = 0
    with open(lines_path, "w", encoding="utf-8") as f:
        for doc in read_documents(opts.out / "docs" / "train.txt"):  # train split only
            for line in doc.splitlines():
                if line.strip():
                    f.write(line + "\n")
                    used += len(line) + 1
            if used >= budget:
                break
    print(f"training tokenizer (vocab {opts.vocab_size}) on {used / 1e6:.1f} MB of train text ...", flush=True)
    train_tokenizer(lines_path, model, opts.vocab_size)
    lines_path.unlink()
    atomic_write(record, json.dumps({"inputs": inputs, "sha256": sha256_file(model)}, indent=2))
    return model


# -- stage 3: shards -----------------------------------------------------------------------------


def build_shards(opts: BuildOptions, split: str) -> dict[str, Any]:
    """Encode one split into shards; returns its manifest entry."""
    sp = load_tokenizer(opts.out / "tokenizer.model", opts.vocab_size)
    docs = read_documents(opts.out / "docs" / f"{split}.txt")
    for old in opts.out.glob(f"{split}_*.bin"):
        old.unlink()  # never mix shards of two builds
    shards, buf, n_buf, n_total, idx = [], [], 0, 0, 0

    def flush() -> None:
        nonlocal buf, n_buf, idx
        toks = np.concatenate(buf)
        path = opts.out / f"{split}_{idx:06d}.bin"
        write_shard(path, toks)
        shards.append({"file": path.name, "tokens": int(len(toks)), "sha256": sha256_file(path)})
        buf, n_buf, idx = [], 0, idx + 1

    batch = 256
    for i in tqdm(range(0, len(docs), batch), desc=f"encode {split}", unit="batch"):
        for ids in encode_documents(sp, docs[i:i + batch]):
            # documents are kept whole inside a shard, as in the official build
            while n_buf + len(ids) > opts.shard_tokens and n_buf:
                flush()
            buf.append(ids)
            n_buf += len(ids)
            n_total += len(ids)
    if n_buf:
        flush()
    return {"docs": len(docs), "tokens": n_total, "shards": shards}


# -- the whole build ------------------------------------------------------------------------------


def build(opts: BuildOptions) -> dict[str, Any]:
    """Run every stage that is not finished for these inputs; return the manifest."""
    out = opts.out
    inputs = build_inputs(opts)
    if not opts.force:
        try:
            done = verify_build(out)
        except DataError:
            done = None
        if done is not None and done.get("inputs") == inputs:
            print(f"{out}: data already built with these inputs (manifest and checksums match); nothing to do")
            return done
        if done is not None:
            print(f"{out}: the finished build there {_differences(done.get('inputs'), inputs)}; rebuilding it",
                  flush=True)
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # unfinished until written again, last
    for stale in [*out.glob("*.tmp"), *out.glob("docs/*.tmp")]:
        stale.unlink()  # left by a killed atomic write
    (out / "docs").mkdir(exist_ok=True)
    atomic_write(out / BUILD_RECORD, json.dumps({"inputs": inputs}, indent=2))
    docs_info = build_documents(opts, inputs)
    model = build_tokenizer(opts)
    splits = {s: build_shards(opts, s) for s in ("train", "val")}
    for s in splits:
        splits[s]["bytes"] = docs_info["splits"][s]["bytes"]
    sp = load_tokenizer(model)
    report = audit_split([out / sh["file"] for sh in splits["val"]["shards"]], sp, opts.vocab_size)
    print(report.summary())
    manifest = {
        "name": out.name, "build_format": BUILD_FORMAT, "recur_lib": __version__,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "build_seconds": round(time.time() - t0, 1), "platform": platform.platform(),
        "debian_version": _read(Path("/etc/debian_version")),
        "inputs": inputs, "sources": docs_info["sources"], "filtered": docs_info["filtered"],
        "skipped": docs_info.get("skipped", {}),
        "split_rule": docs_info["split_rule"], "val_permille": docs_info["val_permille"],
        "order": docs_info["order"],
        "tokenizer": {"file": model.name, "sha256": sha256_file(model), "vocab_size": sp.vocab_size(),
                      "spec": SPEC, "trained_on": "train split"},
        "splits": splits,
        "bytes_per_token": {s: splits[s]["bytes"] / max(1, splits[s]["tokens"] - splits[s]["docs"]) for s in splits},
        "val_audit": {"ok": report.ok, "counted_bytes": report.counted_bytes,
                      "decoded_bytes": report.decoded_bytes, "mismatches": report.mismatches},
    }
    if not report.ok:
        raise CorpusError(f"bpb byte audit failed on val: {report.summary()}; first mismatches "
                          f"(doc, counted, decoded): {report.mismatches[:5]}. The shards are kept for inspection; "
                          "no manifest was written, so this build is not marked finished.")
    atomic_write(out / MANIFEST, json.dumps(manifest, indent=2))
    return manifest


def _read(p: Path) -> str | None:
    try:
        return p.read_text().strip()
    except OSError:
        return None


def source_mix(out: Path, split: str, max_tokens: int = 0) -> dict[str, int]:
    """Tokens per source in the first max_tokens tokens of a finished build's split (0 = all of it).

    Documents are found by their leading bos in the shards and named by `docs/{split}_ids.json`, which
    lists them in shard order; a document cut by the prefix counts with its tokens inside it.
    """
    ids = json.loads((out / "docs" / f"{split}_ids.json").read_text())
    toks = load_tokens(sorted(out.glob(f"{split}_*.bin")), max_tokens=max_tokens)
    starts = np.flatnonzero(toks == BOS_ID)
    if len(toks) and (len(starts) == 0 or starts[0] != 0 or len(starts) > len(ids)):
        raise CorpusError(f"{out}: {split} shards do not match docs/{split}_ids.json ({len(starts)} documents found, "
                          f"{len(ids)} listed)")
    mix: dict[str, int] = {}
    for i, n in enumerate(np.diff(np.append(starts, len(toks)))):
        src = doc_source(ids[i])
        mix[src] = mix.get(src, 0) + int(n)
    return mix
