"""Export: quantize, pack, serialise without pickle, compress with zstd-22, check the byte budget.

Artifact layout (before compression): b"RGOLF1\\n", a little-endian uint32 header length, a JSON
header (format version, the config, one entry per tensor: name, kind, shape, bits, byte offsets), then
the raw payload. The whole is one zstandard frame (level quant.zstd_level, 22 by default). Loading
parses JSON and numpy buffers only: nothing in the file is ever executed.

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

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zstandard

from .config import Config
from .model import RecurGPT, build_model
from .paths import atomic_write
from .quant import dequantize_rows, qmax, quantize_rows, quantize_tensor_baseline

MAGIC = b"RGOLF1\n"
FORMAT_VERSION = 1
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
    header = json.dumps({"format": FORMAT_VERSION, "config": cfg.to_dict(), "tensors": entries},
                        separators=(",", ":")).encode("utf-8")
    return MAGIC + len(header).to_bytes(4, "little") + header + b"".join(chunks), entries, chunks, groups


def export_artifact(model: torch.nn.Module, cfg: Config, path: str | Path | None = None,
                    report_only: bool = False) -> ExportReport:
    """Write the artifact (atomically, if path is given) and return its report. Over budget raises
    ArtifactError naming the excess, unless report_only. quant.pack = auto builds the dense and the
    byte-aligned layout and keeps whichever compresses smaller (neither wins everywhere: LOG.md)."""
    zc = zstandard.ZstdCompressor(level=cfg.quant.zstd_level)
    state = {n: t.detach().cpu() for n, t in model.state_dict().items()}
    plans = {n: tensor_plan(n, t, cfg) for n, t in state.items()}
    quantized = {n: quantize_tensor(state[n], bits, cfg) for n, (kind, bits) in plans.items() if kind == "int"}
    quantized.update({n: quantize_tensor_baseline(state[n], bits, cfg.quant.clip_percentile)
                      for n, (kind, bits) in plans.items() if kind == "int_tensor"})
    best = None
    for packing in (("dense", "bytes") if cfg.quant.pack == "auto" else (cfg.quant.pack,)):
        frame, entries, chunks, groups = _frame(state, cfg, packing, plans, quantized)
        compressed = zc.compress(frame)
        if best is None or len(compressed) < len(best[0]):
            best = (compressed, entries, chunks, groups)
    assert best is not None
    compressed, entries, chunks, groups = best
    for gname in groups:  # each group's payload compressed alone, to compare with its entropy bound
        blob = b"".join(c for c, e in zip(chunks, entries) if _group_of(e["name"]) == gname)
        groups[gname].zstd_bytes = len(zc.compress(blob))
    report = ExportReport(Path(path) if path else None, len(compressed), code_bytes(), cfg.quant.budget_bytes, groups)
    if path is not None:
        atomic_write(path, compressed)
    if report.over_budget_by > 0 and not report_only:
        raise ArtifactError(
            f"artifact is {report.total_bytes:,} bytes (model {report.model_bytes:,} + code {report.code_bytes:,}), "
            f"over the {report.budget_bytes:,}-byte budget by {report.over_budget_by:,}. Lower quant.export_bits "
            "or quant.embed_bits, turn on QAT (quant.qat_bits) so codes compress better, or shrink model.dim / "
            "unique blocks; pass report_only=True (--report-only) to just measure.")
    return report


def read_artifact(path: str | Path) -> tuple[Config, dict[str, torch.Tensor]]:
    """Decompress and parse an artifact: the config and the dequantized state dict."""
    path = Path(path)
    try:
        frame = zstandard.ZstdDecompressor().decompress(path.read_bytes())
    except zstandard.ZstdError as e:
        raise ArtifactError(f"{path}: not a zstd-compressed artifact ({e})") from None
    if not frame.startswith(MAGIC):
        raise ArtifactError(f"{path}: missing the {MAGIC!r} magic: not a recur-golf artifact")
    n = int.from_bytes(frame[len(MAGIC):len(MAGIC) + 4], "little")
    start = len(MAGIC) + 4
    header = json.loads(frame[start:start + n].decode("utf-8"))
    if header.get("format") != FORMAT_VERSION:
        raise ArtifactError(f"{path}: artifact format {header.get('format')} is not {FORMAT_VERSION}")
    payload = memoryview(frame)[start + n:]
    cfg = Config.from_dict(header["config"])
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
        elif e["kind"] in ("fp16", "fp32"):
            dtype = "<f2" if e["kind"] == "fp16" else "<f4"
            arr = np.frombuffer(payload[off:off + e["nbytes"]], dtype=dtype).reshape(shape)
            state[e["name"]] = torch.from_numpy(arr.astype(np.float32))
        else:
            raise ArtifactError(f"{path}: tensor {e['name']!r} has an unknown kind {e['kind']!r}")
    return cfg, state


def load_artifact(path: str | Path) -> RecurGPT:
    """A fresh model holding the artifact's weights."""
    cfg, state = read_artifact(path)
    model = build_model(cfg)
    model.load_state_dict(state, strict=True)
    return model
