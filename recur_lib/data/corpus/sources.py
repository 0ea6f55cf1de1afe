"""The embedded default corpus: freely licensed English prose from Debian's archive.

Our machines reach Debian's archive and PyPI but not the web, so the default data is built from
documentation packages fetched with `apt-get download` and unpacked with `dpkg-deb -x` into the
project's ignored data folder (nothing is installed system-wide, no package scripts run). Each source
says where its text lies and which markup stripper reads it; every file becomes one document (the
Jargon File is split into groups of entries). Documents are de-duplicated by their normalised text
and assigned to val by a hash of their id, so the split does not move when other documents change;
each split is then put in a seeded order that interleaves the sources (`mixed_order`), so any prefix
of train or val holds every source in about its share of the split.

Users without Debian's archive point `recur data build --text-dir DIR` at any folder of UTF-8 `.txt` files
(binary and non-UTF-8 files are skipped and reported).
"""
from __future__ import annotations

import gzip
import hashlib
import re
import shutil
import subprocess
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..dataset import sha256_file  # noqa: F401  (one definition; build and the tests use it from here)
from .markup import STRIPPERS


class CorpusError(RuntimeError):
    """The corpus sources cannot be fetched or read."""


@dataclass(frozen=True)
class Source:
    package: str                   # Debian (bookworm) binary package
    licence: str                   # from the package's copyright file
    markup: str                    # key of markup.STRIPPERS
    include: tuple[str, ...]       # globs under the unpacked package
    exclude: tuple[str, ...] = ()  # path substrings to leave out
    split: str = "file"            # "file": one document per file; "jargon": groups of entries


# Chosen for licence (all free) and prose: documentation written as running text, plus the GCIDE
# dictionary's definitions for literary English. Left out: wordnet (glosses inside a record format
# that GCIDE already carries), fortunes (quotations of mixed provenance), the Austen and Bible
# packages (texts locked in program-specific binary formats).
SOURCES: tuple[Source, ...] = (
    Source("linux-doc-6.1", "GPL-2", "rest",
           ("usr/share/doc/linux-doc-6.1/Documentation/**/*.rst.gz",
            "usr/share/doc/linux-doc-6.1/Documentation/**/*.txt.gz"),
           ("/translations/", "/devicetree/", "/ABI/")),  # English only; DT bindings and ABI are records
    Source("python3.11-doc", "PSF-2.0", "rest", ("usr/share/doc/python3.11/html/_sources/**/*.rst.txt",)),
    Source("perl-doc", "GPL-1+ or Artistic", "pod", ("usr/share/perl/*/pod/*.pod",)),
    Source("perl-modules-5.36", "GPL-1+ or Artistic", "pod", ("usr/share/perl/**/*.pm", "usr/share/perl/**/*.pod")),
    Source("git-doc", "GPL-2", "asciidoc", ("usr/share/doc/git-doc/**/*.txt",)),
    Source("postgresql-doc-15", "PostgreSQL", "html", ("usr/share/doc/postgresql-doc-15/html/*.html",)),
    Source("debian-handbook", "GPL-2+ or CC-BY-SA-3.0", "html", ("usr/share/doc/debian-handbook/html/en-US/*.html",)),
    Source("jargon-text", "public domain", "text", ("usr/share/doc/jargon-text/jargon.txt.gz",), split="jargon"),
    # Webster's 1913 and WordNet definitions: literary English next to the technical manuals.
    Source("dict-gcide", "GPL-3+", "raw", ("usr/share/dictd/gcide.dict.dz",), split="gcide"),
)

MIN_DOC_BYTES = 256        # shorter stripped files are index pages and stubs
GROUP_BYTES = 4096   # dictionary-like entries (Jargon File, GCIDE) are grouped into documents of this size


@dataclass(frozen=True)
class Document:
    id: str      # "<package>/<path>[#n]": stable across builds
    text: str


# -- fetching --------------------------------------------------------------------------------------


def fetch_debs(packages: list[str], dest: Path) -> dict[str, Path]:
    """Download each package's .deb into dest (reusing complete ones); return package -> path."""
    dest.mkdir(parents=True, exist_ok=True)
    found = {p: _find_deb(dest, p) for p in packages}
    missing = [p for p, f in found.items() if f is None]
    if missing:
        if shutil.which("apt-get") is None:
            raise CorpusError(_no_debian_help("apt-get is not available on this machine"))
        # Download into a scratch folder and move complete files, so an interrupted download is
        # never mistaken for a finished one.
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            res = _apt_download(missing, Path(tmp))
            if res.returncode != 0 and _can_update():
                subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
                res = _apt_download(missing, Path(tmp))
            if res.returncode != 0:
                raise CorpusError(_no_debian_help(f"`apt-get download {' '.join(missing)}` failed:\n"
                                                  f"{res.stderr.strip()[-2000:]}"))
            for f in Path(tmp).glob("*.deb"):
                f.replace(dest / f.name)
        found = {p: _find_deb(dest, p) for p in packages}
    still = [p for p, f in found.items() if f is None]
    if still:
        raise CorpusError(_no_debian_help(f"packages not downloaded: {still}"))
    return found  # type: ignore[return-value]


def _apt_download(packages: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["apt-get", "download", "-q", *packages], cwd=cwd, capture_output=True, text=True)


def _can_update() -> bool:
    import os
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _find_deb(folder: Path, package: str) -> Path | None:
    debs = sorted(folder.glob(f"{package}_*.deb"))
    return debs[-1] if debs else None


def deb_version(deb: Path) -> str:
    res = subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True)
    if res.returncode != 0:
        raise CorpusError(f"{deb}: not a readable .deb ({res.stderr.strip()}); delete it and rebuild")
    return res.stdout.strip()


def extract_deb(deb: Path, dest: Path) -> Path:
    """Unpack a .deb's files (no scripts run) into dest/<package>; reuse a finished unpack."""
    out = dest / deb.name.removesuffix(".deb")
    done = out / ".unpacked"
    if done.exists():
        return out
    if out.exists():
        shutil.rmtree(out)
    tmp = dest / (out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    res = subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp)], capture_output=True, text=True)
    if res.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CorpusError(f"{deb}: dpkg-deb could not unpack it ({res.stderr.strip()}); delete it and rebuild")
    tmp.rename(out)
    done.touch()
    return out


def _no_debian_help(reason: str) -> str:
    return (f"cannot build the default corpus from Debian's archive: {reason}\n"
            "Instead, build from any folder of UTF-8 .txt files (one document per file):\n"
            "    recur data build --text-dir /path/to/texts\n"
            "or use official FineWeb shards: set data.root to the folder holding fineweb_train_*.bin and\n"
            "fineweb_val_*.bin, data.tokenizer to fineweb_1024_bpe.model (e.g. --set data.root=...).")


# -- reading documents -----------------------------------------------------------------------------


def read_text_file(path: Path) -> str:
    """Read a (possibly gzipped) text file as UTF-8, falling back to Latin-1 for old POD files."""
    raw = gzip.open(path).read() if path.suffix in (".gz", ".dz") else path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return clean_text(text)


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u200b\ufeff]")


def clean_text(text: str) -> str:
    """NFC, Unix newlines, no control characters (tabs become spaces)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", "    ")
    return unicodedata.normalize("NFC", _CONTROL.sub("", text))


def source_documents(source: Source, root: Path) -> Iterator[Document]:
    """Documents of one unpacked package, in sorted path order."""
    files = sorted({p for pat in source.include for p in root.glob(pat) if p.is_file()})
    files = [p for p in files if not any(x in str(p) for x in source.exclude)]
    strip = STRIPPERS[source.markup]
    for path in files:
        rel = path.relative_to(root).as_posix()
        text = strip(read_text_file(path))
        if source.split != "file":
            entries = _jargon_entries(text) if source.split == "jargon" else _gcide_entries(text)
            for i, chunk in enumerate(_group(entries)):
                yield Document(f"{source.package}/{rel}#{i}", chunk)
        else:
            yield Document(f"{source.package}/{rel}", text)


def text_dir_files(folder: Path) -> list[Path]:
    """The *.txt files under folder (recursively, sorted): the documents of a --text-dir build."""
    if not folder.is_dir():
        raise CorpusError(f"--text-dir {folder}: not a folder")
    files = sorted(p for p in folder.rglob("*.txt") if p.is_file())
    if not files:
        raise CorpusError(f"--text-dir {folder}: no .txt files found")
    return files


def text_dir_fingerprint(folder: Path) -> str:
    """sha256 over every *.txt file's path and bytes, so a build notices edited, added or removed files."""
    h = hashlib.sha256()
    for p in text_dir_files(folder):
        h.update(f"{p.relative_to(folder).as_posix()}\0{sha256_file(p)}\n".encode("utf-8"))
    return h.hexdigest()


# UTF-16/32 text starts with one of these; without it, a NUL byte marks a binary file (UTF-8 text has none).
_WIDE_BOMS = (b"\xff\xfe", b"\xfe\xff")


def text_file_problem(raw: bytes) -> str | None:
    """Why a --text-dir file is not a document: "binary" or "not_utf8"; None for UTF-8 text."""
    if raw.startswith(_WIDE_BOMS):
        return "not_utf8"
    if b"\x00" in raw:
        return "binary"
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return "not_utf8"
    return None


def text_dir_documents(folder: Path, skipped: dict[str, list[str]] | None = None) -> Iterator[Document]:
    """Every *.txt under folder (recursively, sorted) that is UTF-8 text, as one document. Binary and
    non-UTF-8 files are skipped, their paths (relative to folder) recorded in skipped[reason]: unlike
    Debian's POD files, a user's file in another encoding cannot be guessed right, and Latin-1 would read
    any bytes as text."""
    for p in text_dir_files(folder):
        raw = p.read_bytes()
        rel = p.relative_to(folder).as_posix()
        problem = text_file_problem(raw)
        if problem is not None:
            if skipped is not None:
                skipped.setdefault(problem, []).append(rel)
            continue
        yield Document(f"text/{rel}", clean_text(raw.decode("utf-8")).strip())


def _jargon_entries(text: str) -> list[str]:
    """Jargon File entries start with ':term:' lines; entries[0] is the front matter and index."""
    return [e.strip() for e in re.split(r"\n(?=:[^:\n]+:)", text)[1:]]


_GCIDE_SOURCE_TAG = re.compile(r"^\s*\[[^\]\n]*\]\s*$", re.M)  # "[1913 Webster]", "[PJC]"


def _gcide_entries(text: str) -> list[str]:
    """GCIDE dictd data: an entry starts at an unindented line; drop database headers and tags."""
    out = []
    for e in re.split(r"\n(?=\S)", text):
        if e.startswith("00-database") or e.startswith("00database"):
            continue
        e = _GCIDE_SOURCE_TAG.sub("", e)
        e = re.sub(r"\\[^\\\n]*\\", "", e)   # \pro*nun"ci*a`tion\
        e = re.sub(r"[{}]", "", e)
        e = "\n".join(ln.strip() for ln in e.splitlines() if ln.strip())
        if e:
            out.append(e)
    return out


def _group(entries: list[str]) -> Iterator[str]:
    """Consecutive entries joined into documents of about GROUP_BYTES."""
    buf: list[str] = []
    size = 0
    for e in entries:
        buf.append(e)
        size += len(e)
        if size >= GROUP_BYTES:
            yield "\n\n".join(buf)
            buf, size = [], 0
    if buf:
        yield "\n\n".join(buf)


def dedup_key(text: str) -> str:
    return hashlib.sha256(" ".join(text.lower().split()).encode("utf-8")).hexdigest()


def is_val(doc_id: str, val_permille: int) -> bool:
    """Fixed document-level split: a hash of the id, independent of every other document."""
    return int(hashlib.sha256(doc_id.encode("utf-8")).hexdigest()[:8], 16) % 1000 < val_permille


def doc_source(doc_id: str) -> str:
    """The source a document comes from: its Debian package, or for --text-dir documents the first
    folder below the text dir ("text/<folder>"; files directly in the text dir are source "text")."""
    head, _, rest = doc_id.partition("/")
    if head == "text" and "/" in rest:
        return f"text/{rest.split('/', 1)[0]}"
    return head


def _unit_hash(*parts: object) -> float:
    """A deterministic number in [0, 1) from the parts (52 bits of their sha256)."""
    h = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).hexdigest()
    return int(h[:13], 16) / 16 ** 13


MIX_RULE = ("shuffle each source's documents by sha256(seed, doc id), then merge the sources by the key "
            "(bytes of the source before the document + half its bytes) / the source's bytes: every prefix "
            "holds each source's share of the split to within about half a document per source")


def mixed_order(ids: list[str], sizes: list[int], seed: int) -> list[int]:
    """A deterministic shuffle of documents (indices into ids) that mixes the sources evenly.

    Each source's documents are shuffled by a hash of (seed, id); the sources are then merged so that
    each one's running share of bytes tracks its share of the whole: a document's key is the fraction
    of its source's bytes that lie before its middle. A prefix that ends at key k holds the documents
    of each source whose middle lies before k: k x the source's bytes, give or take half of the one
    document straddling that point. A plain shuffle would be off by the sampling noise of a few large
    documents instead. See MIX_RULE.
    """
    by_source: dict[str, list[int]] = {}
    for i, d in enumerate(ids):
        by_source.setdefault(doc_source(d), []).append(i)
    keys: list[tuple[float, float, str, int]] = []  # (key, tie-break, id, index)
    for members in by_source.values():
        members.sort(key=lambda i: (_unit_hash(seed, ids[i]), ids[i]))
        total = max(1, sum(sizes[i] for i in members))
        before = 0
        for i in members:
            keys.append(((2 * before + sizes[i]) / (2 * total), _unit_hash(seed, "tie", ids[i]), ids[i], i))
            before += sizes[i]
    return [k[-1] for k in sorted(keys)]


def select_documents(docs: Iterator[Document], stats: dict[str, int]) -> Iterator[Document]:
    """Drop stubs and exact duplicates (first occurrence in sorted order wins), counting both."""
    seen: set[str] = set()
    for d in docs:
        if len(d.text.encode("utf-8")) < MIN_DOC_BYTES:
            stats["dropped_short"] = stats.get("dropped_short", 0) + 1
            continue
        k = dedup_key(d.text)
        if k in seen:
            stats["dropped_duplicate"] = stats.get("dropped_duplicate", 0) + 1
            continue
        seen.add(k)
        yield d
