"""Export: quantize, pack, serialise without pickle, compress with zstd-22, check the byte budget.

Artifact layout (format 2). Decompressed: b"RGOLF1\\n", a little-endian uint32 header length, a JSON
header (format version, the config, one entry per tensor: name, kind, shape, bits, byte offsets; the
payload's SHA-256), then the raw payload. That is one zstandard frame (level quant.zstd_level, 22 by
default) declaring its size and carrying its content checksum, and the file is a 52-byte seal (a zstd
skippable frame holding the SHA-256 of the frame) followed by the frame. Loading parses JSON and numpy
buffers only: nothing in the file is ever executed, and `read_artifact` checks every byte and every
declared size before allocating anything (its docstring lists the checks). Export writes atomically,
only an accepted artifact, and never over a file that is not an artifact unless told to.

Per tensor (`tensor_plan`), by quant.scheme (recur_lib/quant.py has both rules):
  * "baseline", as `train_gpt.py` decides: a tensor of at most quant.keep_float_max_numel entries stays
    float (fp32 for control tensors: scales, gains, mixes, skip weights, loop scalars, gates; fp16 for
    the rest); a larger matrix gets per-row integers at quant.export_bits (quant.embed_bits for
    embedding tables) with fp16 row scales; a larger tensor of another rank gets one fp32 scale.
  * "rowmax": control tensors fp32 whatever their size; 2-D tensors above the threshold per-row
    integers; everything else fp16.
Codes are bit-packed densely (int6: 4 codes in 3 bytes) or one per byte, whichever compresses
smaller; with quant.gptq_lite each row's clip is searched for least error. The codes are computed by
recur_lib.quant, the same functions QAT uses.

What counts as "code" (`CODE_FILES`): the recur_lib source files that loading and evaluating an
artifact imports (tests/test_export.py checks the list against a fresh interpreter). Their raw bytes
plus the compressed model bytes must stay within quant.budget_bytes (16,000,000).
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zstandard

from .config import Config, ConfigError
from .model import RecurGPT, build_model
from .paths import atomic_write
from .quant import dequantize_rows, qmax, quantize_rows, quantize_tensor_baseline

MAGIC = b"RGOLF1\n"
# 2: the file is sealed (SHA-256 of the stored frame), the frame declares its size and checksums its
# content, the header carries the payload's SHA-256. 1 had none of these.
FORMAT_VERSION = 2
ZSTD_MAGIC = zstandard.MAGIC_NUMBER.to_bytes(4, "little")
# The seal is a zstd skippable frame (magic 0x184D2A5E, then its length), so `zstd -d` still reads the
# file; its content is a tag and the SHA-256 of the zstd frame that follows.
SEAL_TAG = b"RGOLF-SHA256"
SEAL_PREFIX = (0x184D2A5E).to_bytes(4, "little") + (len(SEAL_TAG) + 32).to_bytes(4, "little") + SEAL_TAG
SEAL_BYTES = len(SEAL_PREFIX) + 32
# No loader reads a file, or inflates a frame, past this: 8x the 16,000,000-byte budget, above any
# artifact export writes (an over-budget one measured with report_only included: a full-size preset
# exported at 16 bits is ~60 MB), and small enough that a hostile file cannot take the machine's memory.
MAX_CONTENT_BYTES = 8 * 16_000_000
MAX_HEADER_BYTES = 16 << 20
PACKAGE_ROOT = Path(__file__).resolve().parent

# The modules `load_artifact` + `evaluate` import (relative to recur_lib/): the "code" of the artifact.
# optim.py is needed only by Muon TTT; it is counted anyway.
CODE_FILES = (
    "__init__.py", "version.py", "config.py", "presets.py", "paths.py", "device.py", "evaluate.py", "export.py",
    "optim.py", "quant.py", "data/__init__.py", "data/bpb.py", "data/dataset.py", "data/loader.py", "data/shards.py",
    "data/tokenizer.py", "model/__init__.py", "model/blocks.py", "model/fused.py", "model/gpt.py", "model/lora.py",
    "model/schedule.py", "model/tricks.py",
)

CONTROL = re.compile(r".*(attn_scale|mlp_scale|resid_mix|mix_logit|q_gain|skip_weights|loop_gains|loop_embed"
                     r"|step_scales|smear\.gate)$")
EMBEDDINGS = re.compile(r"(tok_emb|bigram\.table|value_embed\.table)\.weight")
GPTQ_LITE_PERCENTILES = (100.0, 99.99, 99.9, 99.5, 99.0)


class ArtifactError(ValueError):
    """An artifact is malformed, or over the byte budget."""


# -- per-tensor treatment -----------------------------------------------------------------------------


def tensor_plan(name: str, t: torch.Tensor, cfg: Config) -> tuple[str, int]:
    """("int", bits) per-row | ("int_tensor", bits) one scale | ("fp16", 16) | ("fp32", 32) for one tensor."""
    q = cfg.quant
    bits = q.embed_bits if EMBEDDINGS.fullmatch(name) else q.export_bits
    if q.scheme == "baseline":
        if t.numel() <= q.keep_float_max_numel or bits == 16:
            return ("fp32", 32) if CONTROL.fullmatch(name) else ("fp16", 16)
        return ("int", bits) if t.ndim == 2 else ("int_tensor", bits)
    if CONTROL.fullmatch(name):
        return "fp32", 32
    if t.ndim == 2 and t.numel() > q.keep_float_max_numel:
        return ("fp16", 16) if bits == 16 else ("int", bits)
    return "fp16", 16


def quantize_tensor(t: torch.Tensor, bits: int, cfg: Config) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes and fp16 scales: the QAT quantizer at the configured clip, or GPTQ-lite's per-row best."""
    scheme = cfg.quant.scheme
    if not cfg.quant.gptq_lite:
        return quantize_rows(t, bits, cfg.quant.clip_percentile, scheme)
    best_q, best_s, best_err = None, None, None
    for pct in GPTQ_LITE_PERCENTILES:
        q, s = quantize_rows(t, bits, pct, scheme)
        err = (dequantize_rows(q, s) - t.float()).pow(2).sum(dim=1)
        if best_err is None:
            best_q, best_s, best_err = q, s, err
        else:
            better = err < best_err
            best_q = torch.where(better[:, None], q, best_q)
            best_s = torch.where(better, s, best_s)
            best_err = torch.minimum(err, best_err)
    return best_q, best_s


def quantized_state_dict(model: torch.nn.Module, cfg: Config) -> dict[str, torch.Tensor]:
    """The weights a loaded artifact holds, computed in memory (the round-trip reference)."""
    out = {}
    for name, t in model.state_dict().items():
        kind, bits = tensor_plan(name, t, cfg)
        if kind == "int":
            out[name] = dequantize_rows(*quantize_tensor(t.detach().cpu(), bits, cfg)).to(t.dtype)
        elif kind == "int_tensor":
            q, scale = quantize_tensor_baseline(t.detach().cpu(), bits, cfg.quant.clip_percentile)
            out[name] = (q.float() * scale).to(t.dtype)
        elif kind == "fp16":
            out[name] = t.detach().cpu().half().to(t.dtype)
        else:
            out[name] = t.detach().cpu().float().to(t.dtype)
    return out


# -- bit packing ----------------------------------------------------------------------------------------


def pack_codes(q: np.ndarray, bits: int) -> bytes:
    """Signed codes in [-qmax, qmax] -> unsigned (q + qmax) -> `bits` bits each, LSB first, dense."""
    u = (q.astype(np.int16) + qmax(bits)).astype(np.uint8).reshape(-1)
    if bits == 8:
        return u.tobytes()
    bitplanes = np.unpackbits(u[:, None], axis=1, bitorder="little")[:, :bits]  # (n, bits)
    return np.packbits(bitplanes.reshape(-1), bitorder="little").tobytes()


def unpack_codes(buf: bytes, bits: int, n: int) -> np.ndarray:
    raw = np.frombuffer(buf, dtype=np.uint8)
    if bits == 8:
        u = raw[:n]
    else:
        planes = np.unpackbits(raw, bitorder="little")[: n * bits].reshape(n, bits)
        u = np.packbits(np.pad(planes, ((0, 0), (0, 8 - bits))), axis=1, bitorder="little").reshape(-1)
    return u.astype(np.int16) - qmax(bits)


def packed_size(n: int, bits: int) -> int:
    return math.ceil(n * bits / 8)


# -- the artifact ----------------------------------------------------------------------------------------


@dataclass
class GroupReport:
    tensors: int = 0
    params: int = 0
    bits: set[int] = field(default_factory=set)
    raw_bytes: int = 0            # payload bytes (packed codes + scales, or floats)
    zstd_bytes: int = 0           # that payload compressed alone at the artifact's level
    entropy_bytes: float = 0.0    # order-0 entropy bound of the quantized symbols (+ scales raw)


@dataclass
class ExportReport:
    path: Path | None
    model_bytes: int              # the compressed artifact
    code_bytes: int
    budget_bytes: int
    groups: dict[str, GroupReport]

    @property
    def total_bytes(self) -> int:
        return self.model_bytes + self.code_bytes

    @property
    def over_budget_by(self) -> int:
        return self.total_bytes - self.budget_bytes

    def as_dict(self) -> dict[str, Any]:
        return {"model_bytes": self.model_bytes, "code_bytes": self.code_bytes, "total_bytes": self.total_bytes,
                "budget_bytes": self.budget_bytes, "fits": self.over_budget_by <= 0,
                "groups": {g: {"tensors": r.tensors, "params": r.params, "bits": sorted(r.bits),
                               "raw_bytes": r.raw_bytes, "zstd_bytes": r.zstd_bytes,
                               "entropy_bytes": round(r.entropy_bytes), "zstd_over_entropy":
                               round(r.zstd_bytes / r.entropy_bytes, 4) if r.entropy_bytes else None}
                           for g, r in self.groups.items()}}

    def table(self) -> str:
        rows = [f"{'group':<12} {'tensors':>7} {'params':>11} {'bits':>8} {'raw':>11} {'zstd':>11} {'entropy':>11} {'zstd/H':>7}"]
        for g, r in self.groups.items():
            ratio = f"{r.zstd_bytes / r.entropy_bytes:.3f}" if r.entropy_bytes else "-"
            rows.append(f"{g:<12} {r.tensors:>7} {r.params:>11,} {','.join(map(str, sorted(r.bits))):>8} "
                        f"{r.raw_bytes:>11,} {r.zstd_bytes:>11,} {r.entropy_bytes:>11,.0f} {ratio:>7}")
        rows.append(f"artifact: model {self.model_bytes:,} + code {self.code_bytes:,} = {self.total_bytes:,} bytes "
                    f"of {self.budget_bytes:,} ({'fits' if self.over_budget_by <= 0 else f'OVER by {self.over_budget_by:,}'})")
        return "\n".join(rows)


def code_bytes() -> int:
    return sum((PACKAGE_ROOT / f).stat().st_size for f in CODE_FILES)


def _entropy_bytes(symbols: np.ndarray) -> float:
    _, counts = np.unique(symbols, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum() * symbols.size / 8)


def _group_of(name: str) -> str:
    if name.startswith("loop_lora."):
        return "lora"
    if EMBEDDINGS.fullmatch(name):
        return "embed"
    if CONTROL.fullmatch(name):
        return "control"
    return "matrices" if name.startswith(("blocks.", "bigram.", "value_embed.")) else "other"


def _frame(state: dict[str, torch.Tensor], cfg: Config, packing: str, plans: dict[str, tuple[str, int]],
           quantized: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> tuple[bytes, list[dict], list[bytes], dict[str, GroupReport]]:
    """The uncompressed artifact with int codes laid out `packing` ("dense" | "bytes")."""
    entries, chunks, offset = [], [], 0
    groups: dict[str, GroupReport] = {}
    for name, t in state.items():
        kind, bits = plans[name]
        g = groups.setdefault(_group_of(name), GroupReport())
        if kind in ("int", "int_tensor"):  # per-row fp16 scales, or the baseline's one fp32 scale
            q, s = quantized[name]
            codes = pack_codes(q.numpy(), bits) if packing == "dense" else q.numpy().astype(np.int8).tobytes()
            scales = s.numpy().astype("<f2" if kind == "int" else "<f4").tobytes()
            blob = codes + scales
            entry = {"name": name, "kind": kind, "bits": bits, "packing": packing, "shape": list(t.shape),
                     "offset": offset, "codes_bytes": len(codes), "scales_bytes": len(scales)}
            g.entropy_bytes += _entropy_bytes(q.numpy()) + len(scales)
        else:
            dtype = "<f2" if kind == "fp16" else "<f4"
            blob = t.float().numpy().astype(dtype).tobytes()
            entry = {"name": name, "kind": kind, "bits": bits, "shape": list(t.shape), "offset": offset,
                     "nbytes": len(blob)}
            g.entropy_bytes += len(blob)  # floats are counted raw: no symbol model for them
        entries.append(entry)
        chunks.append(blob)
        offset += len(blob)
        g.tensors += 1
        g.params += t.numel()
        g.bits.add(bits)
        g.raw_bytes += len(blob)
    payload = b"".join(chunks)
    header = json.dumps({"format": FORMAT_VERSION, "config": cfg.to_dict(), "tensors": entries,
                         "payload_sha256": hashlib.sha256(payload).hexdigest()}, separators=(",", ":")).encode("utf-8")
    return MAGIC + len(header).to_bytes(4, "little") + header + payload, entries, chunks, groups


def _compress(frame: bytes, cfg: Config) -> bytes:
    """The file's bytes: the seal, then one zstd frame that declares its size and checksums its content."""
    zc = zstandard.ZstdCompressor(level=cfg.quant.zstd_level, write_checksum=True, write_content_size=True)
    return _sealed(zc.compress(frame))


def _sealed(zframe: bytes) -> bytes:
    return SEAL_PREFIX + hashlib.sha256(zframe).digest() + zframe


def _is_ours(path: Path) -> bool:
    """Whether the file at path is a recur-golf artifact of any format, damaged or not: only those may be
    replaced without being asked. Reads a few bytes, never the whole file."""
    with open(path, "rb") as f:
        head = f.read(len(SEAL_PREFIX))
        if head == SEAL_PREFIX:
            return True
        if not head.startswith(ZSTD_MAGIC):
            return False
        f.seek(0)
        try:  # format 1 had no seal: its first decompressed bytes are the magic
            return zstandard.ZstdDecompressor().stream_reader(f).read(len(MAGIC)) == MAGIC
        except zstandard.ZstdError:
            return False


def check_artifact_target(path: str | Path, overwrite: bool = False) -> None:
    """Refuse a target path that holds something other than a recur-golf artifact (unless overwrite), so
    that a mistyped --artifact never destroys a checkpoint, a config or a notebook."""
    path = Path(path)
    if overwrite or not path.exists():
        return
    if path.is_dir():
        raise ArtifactError(f"{path} is a folder, not an artifact file; give a file path such as "
                            f"{path / 'model.rgolf'}")
    if not _is_ours(path):
        raise ArtifactError(
            f"{path} exists and is not a recur-golf artifact (its first bytes are neither the artifact's seal nor a "
            "zstd frame starting with its magic); refusing to overwrite it. Choose another path, move the file "
            "away, or pass overwrite=True (`recur eval --overwrite-artifact`) to replace it.")


def export_artifact(model: torch.nn.Module, cfg: Config, path: str | Path | None = None,
                    report_only: bool = False, overwrite: bool = False) -> ExportReport:
    """Build the artifact and return its report; write it to path (atomically) only once it is accepted.
    Over budget raises ArtifactError naming the excess, and writes nothing, unless report_only. A file
    already at path that is not an artifact of ours is never replaced unless overwrite. quant.pack = auto
    builds the dense and the byte-aligned layout and keeps whichever compresses smaller (neither wins
    everywhere: LOG.md)."""
    if path is not None:
        check_artifact_target(path, overwrite)  # before the work, so a refused path costs nothing
    state = {n: t.detach().cpu() for n, t in model.state_dict().items()}
    plans = {n: tensor_plan(n, t, cfg) for n, t in state.items()}
    quantized = {n: quantize_tensor(state[n], bits, cfg) for n, (kind, bits) in plans.items() if kind == "int"}
    quantized.update({n: quantize_tensor_baseline(state[n], bits, cfg.quant.clip_percentile)
                      for n, (kind, bits) in plans.items() if kind == "int_tensor"})
    best = None
    for packing in (("dense", "bytes") if cfg.quant.pack == "auto" else (cfg.quant.pack,)):
        frame, entries, chunks, groups = _frame(state, cfg, packing, plans, quantized)
        compressed = _compress(frame, cfg)
        if best is None or len(compressed) < len(best[0]):
            best = (compressed, entries, chunks, groups, len(frame))
    assert best is not None
    compressed, entries, chunks, groups, frame_bytes = best
    zc = zstandard.ZstdCompressor(level=cfg.quant.zstd_level)
    for gname in groups:  # each group's payload compressed alone, to compare with its entropy bound
        blob = b"".join(c for c, e in zip(chunks, entries) if _group_of(e["name"]) == gname)
        groups[gname].zstd_bytes = len(zc.compress(blob))
    report = ExportReport(Path(path) if path else None, len(compressed), code_bytes(), cfg.quant.budget_bytes, groups)
    if frame_bytes > MAX_CONTENT_BYTES:  # the loader would refuse it: never write what cannot be read back
        raise ArtifactError(
            f"the artifact decompresses to {frame_bytes:,} bytes, over the {MAX_CONTENT_BYTES:,}-byte ceiling "
            "every loader enforces against decompression bombs; lower quant.export_bits or the model's size.")
    if report.over_budget_by > 0 and not report_only:
        raise ArtifactError(
            f"artifact is {report.total_bytes:,} bytes (model {report.model_bytes:,} + code {report.code_bytes:,}), "
            f"over the {report.budget_bytes:,}-byte budget by {report.over_budget_by:,}. Lower quant.export_bits "
            "or quant.embed_bits, turn on QAT (quant.qat_bits) so codes compress better, or shrink model.dim / "
            "unique blocks; pass report_only=True (--report-only) to just measure. Nothing was written"
            + (f"; {path} is unchanged." if path is not None else "."))
    if path is not None:
        atomic_write(path, compressed)
    return report


# -- reading: every check passes before anything large is allocated -------------------------------------

REEXPORT = "re-export it from its run with `recur eval RUN_DIR` (or `recur eval RUN_DIR --artifact PATH`)"


def _entry_sizes(kind: str, bits: int, shape: tuple[int, ...], packing: str | None) -> dict[str, int]:
    """The byte counts an entry of this plan and shape must declare (as `_frame` writes them)."""
    n = math.prod(shape)
    if kind in ("int", "int_tensor"):
        codes = packed_size(n, bits) if packing == "dense" else n
        return {"codes_bytes": codes, "scales_bytes": 2 * shape[0] if kind == "int" else 4}
    return {"nbytes": n * (2 if kind == "fp16" else 4)}


def _expected_tensors(cfg: Config) -> list[tuple[str, tuple[int, ...], str, int]]:
    """(name, shape, kind, bits) of every tensor the config's model has, from a model on the meta device:
    shapes without a byte of storage, however large the config says the model is."""
    with torch.device("meta"):
        model = build_model(cfg)
    return [(n, tuple(t.shape), *tensor_plan(n, t, cfg)) for n, t in model.state_dict().items()]


def _check_table(path: Path, cfg: Config, entries: Any) -> int:
    """Check the header's tensor table against the config's model, entry by entry; the payload size."""
    def bad(what: str) -> ArtifactError:
        return ArtifactError(f"{path}: the header's tensor table disagrees with its own config ({what}): a damaged "
                             f"or hand-edited file; {REEXPORT}")

    try:
        expected = _expected_tensors(cfg)
    except Exception as e:  # a config that validates field by field can still fail to build
        raise ArtifactError(f"{path}: the config in the header does not build a model ({e}); {REEXPORT}") from None
    if not isinstance(entries, list) or len(entries) != len(expected):
        count = len(entries) if isinstance(entries, list) else "no"
        raise bad(f"{count} entries for a model of {len(expected)} tensors")
    offset = 0
    for e, (name, shape, kind, bits) in zip(entries, expected):
        if not isinstance(e, dict):
            raise bad(f"an entry is a {type(e).__name__}, not an object")
        packing = e.get("packing") if kind in ("int", "int_tensor") else None
        if kind in ("int", "int_tensor") and packing not in ("dense", "bytes"):
            raise bad(f"tensor {name!r} has packing {packing!r}, not 'dense' or 'bytes'")
        want = {"name": name, "kind": kind, "bits": bits, "shape": list(shape), "offset": offset,
                **_entry_sizes(kind, bits, shape, packing)}
        for key, value in want.items():
            got = e.get(key)
            # exact types too: JSON's 1.0 or true would compare equal to 1 and then break slicing
            if (type(got) is not type(value) or got != value
                    or (key == "shape" and any(type(d) is not int for d in got))):
                raise bad(f"tensor {name!r}: {key} is {got!r}, the model needs {value!r}")
        offset += sum(v for k, v in want.items() if k in ("codes_bytes", "scales_bytes", "nbytes"))
    return offset


def _read_exact(reader: Any, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = reader.read(n - len(out))
        if not chunk:
            break
        out += chunk
    return bytes(out)


def _open_frame(path: Path) -> bytes:
    """The file's zstd frame, once the seal proves the bytes are the ones export wrote."""
    size = path.stat().st_size
    if size > MAX_CONTENT_BYTES:
        raise ArtifactError(f"{path}: {size:,} bytes, larger than any artifact this loader reads "
                            f"({MAX_CONTENT_BYTES:,}); not an artifact, or not one of ours")
    raw = path.read_bytes()
    if not raw.startswith(SEAL_PREFIX):
        if raw.startswith(ZSTD_MAGIC):
            try:
                head = zstandard.ZstdDecompressor().stream_reader(raw).read(len(MAGIC))
            except zstandard.ZstdError:
                head = b""
            if head == MAGIC:
                raise ArtifactError(
                    f"{path}: an artifact in format 1, which carried no checksums or size checks; this recur_lib "
                    f"reads format {FORMAT_VERSION} only: {REEXPORT}")
            raise ArtifactError(f"{path}: a zstd file but not a recur-golf artifact (no {MAGIC!r} magic); "
                                "check the path")
        raise ArtifactError(f"{path}: not a zstd-compressed artifact (no artifact seal, no zstd frame); check the path")
    digest, zframe = raw[len(SEAL_PREFIX):SEAL_BYTES], raw[SEAL_BYTES:]
    if hashlib.sha256(zframe).digest() != digest:
        raise ArtifactError(
            f"{path}: the file does not match its SHA-256 seal: it was changed or damaged after export (a cut-short "
            f"copy, a flipped bit). Copy it again from where it was written, or {REEXPORT}")
    return zframe


def read_artifact(path: str | Path) -> tuple[Config, dict[str, torch.Tensor]]:
    """Check and parse an artifact: the config and the dequantized state dict.

    In order, and before anything the file declares is allocated: the seal (SHA-256 of every stored
    byte), the frame's declared size (present, under MAX_CONTENT_BYTES), the header (magic, format,
    config), its tensor table against the config's model built on the meta device, and the declared
    size against exactly what that table implies. Then the frame is decompressed (zstd verifies its
    content checksum) and the payload checked against the header's SHA-256. Any failure is an
    ArtifactError naming the file."""
    path = Path(path)
    zframe = _open_frame(path)
    try:
        fp = zstandard.get_frame_parameters(zframe)
    except zstandard.ZstdError as e:
        raise ArtifactError(f"{path}: the sealed data is not a zstd frame ({e}); {REEXPORT}") from None
    size = fp.content_size
    if size == zstandard.CONTENTSIZE_UNKNOWN or size == zstandard.CONTENTSIZE_ERROR:
        raise ArtifactError(f"{path}: the zstd frame does not declare its decompressed size, which every artifact "
                            f"does; refusing to inflate it blind (a decompression bomb?); {REEXPORT}")
    if size > MAX_CONTENT_BYTES:
        raise ArtifactError(f"{path}: the zstd frame declares {size:,} decompressed bytes, over the "
                            f"{MAX_CONTENT_BYTES:,}-byte ceiling (a decompression bomb?); not decompressed")
    if not fp.has_checksum or fp.dict_id:
        raise ArtifactError(f"{path}: the zstd frame has {'a dictionary' if fp.dict_id else 'no content checksum'}, "
                            f"which no exported artifact has; {REEXPORT}")
    lead = len(MAGIC) + 4
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(zframe)
        head = _read_exact(reader, lead)
        if head[:len(MAGIC)] != MAGIC:
            raise ArtifactError(f"{path}: missing the {MAGIC!r} magic: not a recur-golf artifact")
        n = int.from_bytes(head[len(MAGIC):], "little")
        if n > min(size - lead, MAX_HEADER_BYTES):
            raise ArtifactError(f"{path}: the header claims {n:,} bytes, more than the frame or the "
                                f"{MAX_HEADER_BYTES:,}-byte header limit allows; {REEXPORT}")
        header_bytes = _read_exact(reader, n)
    except zstandard.ZstdError as e:
        raise ArtifactError(f"{path}: the zstd frame is corrupt ({e}); {REEXPORT}") from None
    try:
        header = json.loads(header_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path}: the header is not valid JSON ({e}); {REEXPORT}") from None
    if not isinstance(header, dict):
        raise ArtifactError(f"{path}: the header is a JSON {type(header).__name__}, not an object; {REEXPORT}")
    if header.get("format") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: artifact format {header.get('format')!r}; this recur_lib reads format "
                            f"{FORMAT_VERSION} only: use the recur_lib that wrote it, or {REEXPORT}")
    try:
        cfg = Config.from_dict(header.get("config"))
    except (ConfigError, TypeError, ValueError) as e:
        raise ArtifactError(f"{path}: the config in the header is invalid ({e}); {REEXPORT}") from None
    payload_bytes = _check_table(path, cfg, header.get("tensors"))
    if size != lead + n + payload_bytes:
        raise ArtifactError(f"{path}: the zstd frame declares {size:,} bytes but the header and its tensor table "
                            f"make {lead + n + payload_bytes:,} (a decompression bomb, or a damaged file); "
                            f"not decompressed; {REEXPORT}")
    try:
        frame = zstandard.ZstdDecompressor().decompress(zframe, allow_extra_data=False)
    except zstandard.ZstdError as e:
        raise ArtifactError(f"{path}: the zstd frame is corrupt ({e}); {REEXPORT}") from None
    payload = memoryview(frame)[lead + n:]
    if len(frame) != size or hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
        raise ArtifactError(f"{path}: the payload does not match the SHA-256 in its header: the weights were "
                            f"changed after export; {REEXPORT}")
    state = {}
    for e in header["tensors"]:
        shape, off = e["shape"], e["offset"]
        if e["kind"] == "int":
            rows, cols = shape
            raw = bytes(payload[off:off + e["codes_bytes"]])
            q = (unpack_codes(raw, e["bits"], rows * cols) if e["packing"] == "dense"
                 else np.frombuffer(raw, dtype=np.int8)).reshape(rows, cols)
            s = np.frombuffer(payload[off + e["codes_bytes"]:off + e["codes_bytes"] + e["scales_bytes"]], dtype="<f2")
            state[e["name"]] = dequantize_rows(torch.from_numpy(q.astype(np.int8)), torch.from_numpy(s.copy()))
        elif e["kind"] == "int_tensor":
            n_codes = math.prod(shape)
            raw = bytes(payload[off:off + e["codes_bytes"]])
            q = unpack_codes(raw, e["bits"], n_codes) if e["packing"] == "dense" else np.frombuffer(raw, dtype=np.int8)
            s = np.frombuffer(payload[off + e["codes_bytes"]:off + e["codes_bytes"] + e["scales_bytes"]], dtype="<f4")
            state[e["name"]] = torch.from_numpy(q.astype(np.float32).reshape(shape) * s[0])
        else:
            dtype = "<f2" if e["kind"] == "fp16" else "<f4"
            arr = np.frombuffer(payload[off:off + e["nbytes"]], dtype=dtype).reshape(shape)
            state[e["name"]] = torch.from_numpy(arr.astype(np.float32))
    return cfg, state


def load_artifact(path: str | Path) -> RecurGPT:
    """A fresh model holding the artifact's weights (read_artifact's checks all pass first)."""
    cfg, state = read_artifact(path)
    model = build_model(cfg)
    model.load_state_dict(state, strict=True)
    return model
