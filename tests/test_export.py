"""Export: dense packing, round trip for every bit width and schedule family, no pickle, the budget,
per-group report, the exact list of code files; and what the loader checks (every bit flip, decompression
bombs, headers that disagree with their config, old formats) and what export never overwrites."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from recur_lib import Config, build_model
from recur_lib.export import (CODE_FILES, MAGIC, MAX_CONTENT_BYTES, SEAL_BYTES, ArtifactError, code_bytes,
                              export_artifact, load_artifact, pack_codes, packed_size, quantize_tensor,
                              quantized_state_dict, read_artifact, tensor_plan, unpack_codes)
from recur_lib.quant import qmax

FAMILIES = {
    "flat": {"schedule.kind": "flat", "schedule.n_layers": 3},
    "looped": {"schedule.kind": "looped", "schedule.n_prelude": 0, "schedule.n_coda": 0, "schedule.n_core": 2,
               "schedule.n_loops": 3},
    "hybrid": {"model.loop_lora_rank": 2, "model.loop_lora_form": "matrices", "model.use_loop_scales": True,
               "model.bigram_buckets": 64, "model.bigram_dim": 16, "model.ve_last_n": 1, "model.ve_dim": 16,
               "model.use_smear_gate": True},
    "repeat": {"schedule.kind": "repeat", "schedule.n_layers": 4, "schedule.repeat_layers": (1, 2),
               "schedule.n_loops": 2},
}


def trained_like(cfg: Config, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    m = build_model(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m.eval()


@pytest.mark.parametrize("bits", [3, 4, 5, 6, 8])
def test_pack_unpack_is_exact_and_dense(bits: int) -> None:
    rng = np.random.default_rng(bits)
    q = rng.integers(-qmax(bits), qmax(bits) + 1, size=1001).astype(np.int8)
    buf = pack_codes(q, bits)
    assert len(buf) == packed_size(1001, bits) == -(-1001 * bits // 8)
    assert np.array_equal(unpack_codes(buf, bits, 1001), q)


def assert_round_trip(cfg: Config, tmp_path: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Export a trained-like model and load it back: its logits equal the in-memory quantizer's, bitwise."""
    m = trained_like(cfg)
    export_artifact(m, cfg, tmp_path / "a.rgolf")
    loaded = load_artifact(tmp_path / "a.rgolf")
    ref = build_model(cfg)
    ref.load_state_dict(quantized_state_dict(m, cfg))
    x = torch.randint(0, 1024, (2, 32))
    assert torch.equal(loaded(x), ref(x))
    return m, loaded


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("bits", [4, 5, 6, 8])
@pytest.mark.parametrize("pack", ["auto", "dense", "bytes"])
def test_round_trip_equals_the_in_memory_quantizer(tmp_path: Path, family: str, bits: int, pack: str) -> None:
    cfg = Config.from_name("smoke", {**FAMILIES[family], "quant.export_bits": bits, "quant.embed_bits": bits,
                                     "quant.pack": pack})
    m, loaded = assert_round_trip(cfg, tmp_path)
    assert loaded.cfg == cfg
    kinds = {tensor_plan(n, t, cfg)[0] for n, t in m.state_dict().items()}
    assert {"int", "fp32"} <= kinds and (family != "hybrid" or "fp16" in kinds)


@pytest.mark.parametrize("scheme", ["baseline", "rowmax"])
@pytest.mark.parametrize("bits", [3, 8])
def test_round_trip_of_each_scheme_including_per_tensor_codes(tmp_path: Path, scheme: str, bits: int) -> None:
    """keep_float_max_numel 0: under the baseline's rule every vector gets per-tensor codes (int_tensor)."""
    cfg = Config.from_name("smoke", {"quant.scheme": scheme, "quant.export_bits": bits, "quant.embed_bits": bits,
                                     "quant.keep_float_max_numel": 0})
    m, _ = assert_round_trip(cfg, tmp_path)
    kinds = {tensor_plan(n, t, cfg)[0] for n, t in m.state_dict().items()}
    assert kinds == ({"int", "int_tensor"} if scheme == "baseline" else {"int", "fp32"})


def test_gptq_lite_never_increases_reconstruction_error(tmp_path: Path) -> None:
    cfg = Config.from_name("smoke", {"quant.export_bits": 4})
    m = trained_like(cfg)
    plain = quantized_state_dict(m, cfg)
    lite = quantized_state_dict(m, cfg.override({"quant.gptq_lite": True}))
    w = m.state_dict()
    for name in plain:
        if tensor_plan(name, w[name], cfg)[0] == "int":
            e_plain = (plain[name] - w[name]).pow(2).sum(dim=1)
            e_lite = (lite[name] - w[name]).pow(2).sum(dim=1)
            assert (e_lite <= e_plain + 1e-12).all()
    export_artifact(m, cfg.override({"quant.gptq_lite": True}), tmp_path / "g.rgolf")
    assert torch.equal(load_artifact(tmp_path / "g.rgolf").state_dict()["blocks.0.attn.q.weight"],
                       lite["blocks.0.attn.q.weight"])


def test_artifact_has_no_pickle_and_bad_files_are_refused(tmp_path: Path) -> None:
    import zstandard
    cfg = Config.from_name("smoke")
    export_artifact(trained_like(cfg), cfg, tmp_path / "a.rgolf")
    raw = (tmp_path / "a.rgolf").read_bytes()
    # a standard zstd reader skips the seal (a skippable frame) and sees the same bytes as the loader
    frame = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True).read()
    assert frame == zstandard.ZstdDecompressor().decompress(raw[SEAL_BYTES:])
    assert frame.startswith(b"RGOLF1\n") and b"\x80\x04\x95" not in frame[:64]  # no pickle protocol header
    header_len = int.from_bytes(frame[7:11], "little")
    header = json.loads(frame[11:11 + header_len])
    assert header["format"] == 2 and header["config"] == cfg.to_dict()
    (tmp_path / "junk.rgolf").write_bytes(b"not zstd")
    with pytest.raises(ArtifactError, match="not a zstd-compressed artifact"):
        read_artifact(tmp_path / "junk.rgolf")
    (tmp_path / "wrong.rgolf").write_bytes(zstandard.ZstdCompressor().compress(b"PICKLE" + b"\x00" * 20))
    with pytest.raises(ArtifactError, match="magic"):
        read_artifact(tmp_path / "wrong.rgolf")


def test_over_budget_says_by_how_much_and_what_to_change(tmp_path: Path) -> None:
    cfg = Config.from_name("smoke", {"quant.budget_bytes": 50_000})
    m = trained_like(cfg)
    with pytest.raises(ArtifactError, match=r"over the 50,000-byte budget by [\d,]+\. Lower quant\.export_bits"):
        export_artifact(m, cfg, tmp_path / "a.rgolf")
    assert not list(tmp_path.iterdir())  # refused before writing: not even a .tmp
    r = export_artifact(m, cfg, tmp_path / "b.rgolf", report_only=True)
    assert r.over_budget_by > 0 and r.total_bytes == r.model_bytes + r.code_bytes
    assert r.model_bytes == (tmp_path / "b.rgolf").stat().st_size
    assert "OVER by" in r.table()


def test_report_groups_and_entropy_bound(tmp_path: Path) -> None:
    cfg = Config.from_name("smoke", FAMILIES["hybrid"])
    r = export_artifact(trained_like(cfg), cfg, tmp_path / "a.rgolf")
    d = r.as_dict()
    assert set(d["groups"]) >= {"matrices", "embed", "control", "lora"}
    mat = d["groups"]["matrices"]
    assert 8 in mat["bits"] and mat["zstd_bytes"] > 0 and mat["entropy_bytes"] > 0
    assert 0.5 < mat["zstd_over_entropy"] < 1.5
    assert d["code_bytes"] == code_bytes() and d["fits"]


def test_code_files_are_exactly_what_loading_and_evaluating_imports(tmp_path: Path, tiny_data: Path) -> None:
    from conftest import TINY_VOCAB
    from recur_lib.train import train
    cfg = Config.from_name("smoke", {"data.root": str(tiny_data), "model.vocab_size": TINY_VOCAB, "run.out_dir": str(tmp_path),
                                     "run.name": "r", "train.iterations": 2, "eval.ttt": "score_first",
                                     "eval.ttt_optimizer": "muon", "eval.stride": 32, "eval.ttt_epochs": 1})
    train(cfg)
    script = (
        "import sys, json\n"
        "from recur_lib.evaluate import evaluate_run\n"
        f"evaluate_run({str(tmp_path / 'r')!r})\n"
        "mods = sorted(m.__file__ for n, m in sys.modules.items() if n.startswith('recur_lib') and getattr(m, '__file__', None))\n"
        "print(json.dumps(mods))\n")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0, res.stderr[-2000:]
    root = Path(__file__).resolve().parents[1] / "recur_lib"
    loaded = {Path(f).resolve().relative_to(root).as_posix() for f in json.loads(res.stdout.strip().splitlines()[-1])}
    assert loaded == set(CODE_FILES)


def test_auto_packing_keeps_the_smaller_layout(tmp_path: Path) -> None:
    """quant.pack = auto writes whichever layout compresses smaller. Both candidates are framed with the
    same config here (the header stores the config, and at zstd-22 a one-character change in it can
    move the compressed size by tens of bytes), so the comparison is exact."""
    from recur_lib.export import _compress, _frame
    cfg = Config.from_name("smoke", {"quant.export_bits": 6})
    m = trained_like(cfg)
    auto = export_artifact(m, cfg, tmp_path / "auto.rgolf").model_bytes
    state = {n: t.detach().cpu() for n, t in m.state_dict().items()}
    plans = {n: tensor_plan(n, t, cfg) for n, t in state.items()}
    quantized = {n: quantize_tensor(state[n], b, cfg) for n, (k, b) in plans.items() if k == "int"}
    sizes = {p: len(_compress(_frame(state, cfg, p, plans, quantized)[0], cfg)) for p in ("dense", "bytes")}
    assert auto == min(sizes.values())
    assert abs(sizes["dense"] - sizes["bytes"]) > 8  # so the choice above was a real one


# -- what the loader checks -------------------------------------------------------------------------------

TINY = {"model.vocab_size": 8, "model.dim": 8, "schedule.kind": "flat", "schedule.n_layers": 1}


def unseal(raw: bytes) -> tuple[dict, bytes]:
    """(header, payload) of an artifact's bytes, read without the loader's checks."""
    import zstandard
    frame = zstandard.ZstdDecompressor().decompress(raw[SEAL_BYTES:])
    n = int.from_bytes(frame[len(MAGIC):len(MAGIC) + 4], "little")
    return json.loads(frame[len(MAGIC) + 4:len(MAGIC) + 4 + n]), frame[len(MAGIC) + 4 + n:]


def reseal(header: dict, payload: bytes) -> bytes:
    """An artifact as a careful forger would write it: every checksum and hash recomputed."""
    import zstandard

    from recur_lib.export import _sealed
    h = json.dumps(header).encode()
    return _sealed(zstandard.ZstdCompressor(write_checksum=True).compress(MAGIC + len(h).to_bytes(4, "little") + h + payload))


def rle_frame(first: bytes, n_blocks: int, declared: int | None) -> bytes:
    """A zstd frame written by hand: `first` as one raw block, then n_blocks RLE blocks of 128 KiB of zeros
    (4 bytes each: a 65 KB file can inflate to 2 GB). declared: the content size in the frame header, or
    None to leave it out."""
    from zstandard import MAGIC_NUMBER
    # frame header: checksum flag, a 128 KiB window (small, so zstd's own window limit never trips), then
    # an 8-byte content size when declared
    out = bytearray(MAGIC_NUMBER.to_bytes(4, "little"))
    if declared is None:
        out += bytes([0b0000_0100, 7 << 3])
    else:
        out += bytes([0b1100_0100, 7 << 3]) + declared.to_bytes(8, "little")
    if first:
        out += ((len(first) << 3) | 0).to_bytes(3, "little") + first
    for i in range(n_blocks):
        out += ((131072 << 3) | (1 << 1) | (i == n_blocks - 1)).to_bytes(3, "little") + b"\0"
    return bytes(out)


def header_bytes(header: dict) -> bytes:
    h = json.dumps(header).encode()
    return MAGIC + len(h).to_bytes(4, "little") + h


def test_every_single_bit_flip_is_refused(tmp_path: Path) -> None:
    """Every bit of a small artifact, flipped one at a time: each is an ArtifactError naming the file
    (before format 2, 194 of 200 sampled flips loaded silently)."""
    cfg = Config.from_name("smoke", TINY)
    export_artifact(trained_like(cfg), cfg, tmp_path / "a.rgolf")
    raw = (tmp_path / "a.rgolf").read_bytes()
    bad = tmp_path / "flipped.rgolf"
    loaded = []
    for bit in range(len(raw) * 8):
        b = bytearray(raw)
        b[bit // 8] ^= 1 << (bit % 8)
        bad.write_bytes(b)
        try:
            read_artifact(bad)
            loaded.append(bit)
        except ArtifactError as e:
            assert str(bad) in str(e)
    assert len(raw) * 8 > 10_000 and loaded == []


def test_forged_flips_never_load_other_weights_and_each_hash_is_checked(tmp_path: Path) -> None:
    """Past the seal (re-computed here as a forger would), a flipped bit in the zstd frame is refused by
    zstd's content checksum or by the loader's checks, or else changes nothing; a changed payload with
    every zstd checksum correct is refused by the header's SHA-256."""
    import zstandard

    from recur_lib.export import _sealed
    cfg = Config.from_name("smoke", {"quant.export_bits": 6})
    export_artifact(trained_like(cfg), cfg, tmp_path / "a.rgolf")
    raw = (tmp_path / "a.rgolf").read_bytes()
    _, ref = read_artifact(tmp_path / "a.rgolf")
    zframe = raw[SEAL_BYTES:]
    bad = tmp_path / "forged.rgolf"
    rng = random.Random(0)
    n_bits = len(zframe) * 8
    bits = list(range(64)) + list(range(n_bits - 64, n_bits)) + rng.sample(range(n_bits), 300)
    loaded = set()
    for bit in bits:
        b = bytearray(zframe)
        b[bit // 8] ^= 1 << (bit % 8)
        bad.write_bytes(_sealed(bytes(b)))
        try:
            got_cfg, got = read_artifact(bad)
        except ArtifactError:
            continue
        assert got_cfg == cfg and all(torch.equal(got[k], ref[k]) for k in ref), f"bit {bit} loaded other weights"
        loaded.add(bit)
    # The only bits that load are ones zstd does not read (the frame header descriptor's unused bit 36,
    # padding inside a block, depending on the frame): the content checksum passed and nothing changed.
    assert len(loaded) <= 3, loaded
    b = bytearray(zframe)
    b[-1] ^= 0x10  # zstd's content checksum itself
    bad.write_bytes(_sealed(bytes(b)))
    with pytest.raises(ArtifactError, match="corrupt.*checksum"):
        read_artifact(bad)
    header, payload = unseal(raw)
    p = bytearray(payload)
    p[len(p) // 2] ^= 0x01
    bad.write_bytes(reseal(header, bytes(p)))
    with pytest.raises(ArtifactError, match="payload does not match the SHA-256"):
        read_artifact(bad)
    assert zstandard.get_frame_parameters(zframe).has_checksum


def test_decompression_bombs_are_refused_before_inflating(tmp_path: Path) -> None:
    """No declared size, a size over the ceiling, or one that is not what the header's tensor table makes:
    each refused in milliseconds, before the frame is inflated."""
    import time

    from recur_lib.export import _sealed
    cfg = Config.from_name("smoke", TINY)
    export_artifact(trained_like(cfg), cfg, tmp_path / "a.rgolf")
    header, _ = unseal((tmp_path / "a.rgolf").read_bytes())
    first = header_bytes(header)
    read_artifact(tmp_path / "a.rgolf")  # the process's first meta-device build imports torch._dynamo (~1 s)
    cases = {"undeclared": (rle_frame(first, 8000, None), "does not declare its decompressed size"),
             "over_ceiling": (rle_frame(first, 2_300_000_000 // 131072, 2_300_000_000),
                              r"declares 2,300,000,000 .* over the"),
             "under_ceiling": (rle_frame(first, 900, len(first) + 900 * 131072),
                               r"declares [\d,]+ bytes but the header and its tensor table make")}
    for name, (frame, match) in cases.items():
        path = tmp_path / f"{name}.rgolf"
        path.write_bytes(_sealed(frame))
        assert path.stat().st_size < 75_000
        t0 = time.perf_counter()
        with pytest.raises(ArtifactError, match=match):
            read_artifact(path)
        assert time.perf_counter() - t0 < 0.5, name
    assert len(first) + 900 * 131072 < MAX_CONTENT_BYTES


def huge_model_headers(tmp_path: Path) -> dict[str, Path]:
    """A few KB artifacts whose config declares a 177M-parameter model (0.7 GB as float32): one with an empty
    tensor table (the case that once allocated the model before any check), one with the model's true table
    but a small frame."""
    from recur_lib.export import _entry_sizes, _expected_tensors, _sealed
    big = Config.from_name("smoke", {"model.dim": 1024, "schedule.kind": "flat", "schedule.n_layers": 24,
                                     "quant.export_bits": 8})
    table, offset = [], 0
    for name, shape, kind, bits in _expected_tensors(big):
        sizes = _entry_sizes(kind, bits, shape, "bytes")
        table.append({"name": name, "kind": kind, "bits": bits, "shape": list(shape), "offset": offset, **sizes,
                      **({"packing": "bytes"} if kind.startswith("int") else {})})
        offset += sum(sizes.values())
    import zstandard
    out = {}
    for name, tensors in (("empty_table", []), ("true_table", table)):
        h = header_bytes({"format": 2, "config": big.to_dict(), "tensors": tensors, "payload_sha256": ""})
        out[name] = tmp_path / f"{name}.rgolf"
        out[name].write_bytes(_sealed(zstandard.ZstdCompressor(write_checksum=True).compress(h)))
    return out


def test_a_header_declaring_a_huge_model_is_refused_before_allocation(tmp_path: Path) -> None:
    files = huge_model_headers(tmp_path)
    assert all(p.stat().st_size < 8_000 for p in files.values())
    with pytest.raises(ArtifactError, match="disagrees with its own config .0 entries for a model of"):
        load_artifact(files["empty_table"])
    with pytest.raises(ArtifactError, match="declares [\\d,]+ bytes but the header and its tensor table make"):
        load_artifact(files["true_table"])


def test_bombs_and_huge_headers_cost_no_memory(tmp_path: Path) -> None:
    """Peak RSS of a fresh process loading each hostile file (after one real load, whose first meta-device
    build imports torch._dynamo): under 64 MB more than before it."""
    from recur_lib.export import _sealed
    cfg = Config.from_name("smoke", TINY)
    export_artifact(trained_like(cfg), cfg, tmp_path / "ok.rgolf")
    header, _ = unseal((tmp_path / "ok.rgolf").read_bytes())
    first = header_bytes(header)
    (tmp_path / "bomb.rgolf").write_bytes(_sealed(rle_frame(first, 900, len(first) + 900 * 131072)))
    files = [tmp_path / "bomb.rgolf", *huge_model_headers(tmp_path).values()]
    script = (
        "import json, resource, sys\n"
        "from recur_lib.export import ArtifactError, load_artifact\n"
        "peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "load_artifact(sys.argv[1])\n"
        "out = {}\n"
        "for p in sys.argv[2:]:\n"
        "    before = peak()\n"
        "    try:\n"
        "        load_artifact(p); err = None\n"
        "    except ArtifactError as e:\n"
        "        err = str(e)\n"
        "    out[p] = [err, peak() - before]\n"
        "print(json.dumps(out))\n")
    res = subprocess.run([sys.executable, "-c", script, str(tmp_path / "ok.rgolf"), *map(str, files)],
                         capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[1])
    assert res.returncode == 0, res.stderr[-2000:]
    for path, (err, grew) in json.loads(res.stdout.strip().splitlines()[-1]).items():
        assert err is not None and path in err, (path, err)
        assert grew < 64 << 20, (path, grew)


@pytest.mark.parametrize("change", ["shape", "kind", "bits", "offset", "bytes", "dropped", "config", "packing"])
def test_a_tensor_table_that_disagrees_with_the_config_is_refused(tmp_path: Path, change: str) -> None:
    cfg = Config.from_name("smoke", {"quant.export_bits": 6})
    export_artifact(trained_like(cfg), cfg, tmp_path / "a.rgolf")
    header, payload = unseal((tmp_path / "a.rgolf").read_bytes())
    i = next(i for i, e in enumerate(header["tensors"]) if e["kind"] == "int")
    e = header["tensors"][i]
    if change == "shape":
        e["shape"] = [e["shape"][1], e["shape"][0]]  # same byte count, other shape
    elif change == "kind":
        e["kind"] = "fp16"
    elif change == "bits":
        e["bits"] = 5 if e["bits"] != 5 else 4
    elif change == "offset":
        e["offset"] += 1
    elif change == "bytes":
        e["codes_bytes"] += 1
    elif change == "dropped":
        del header["tensors"][i]
    elif change == "config":
        header["config"]["model"]["mlp_mult"] = 3.0  # the table still describes the old model
    else:
        e["packing"] = "pickle"
    (tmp_path / "b.rgolf").write_bytes(reseal(header, payload))
    with pytest.raises(ArtifactError, match="tensor table disagrees with its own config"):
        read_artifact(tmp_path / "b.rgolf")


def test_an_old_format_artifact_says_to_re_export(tmp_path: Path) -> None:
    import zstandard
    cfg = Config.from_name("smoke", TINY)
    export_artifact(trained_like(cfg), cfg, tmp_path / "a.rgolf")
    header, payload = unseal((tmp_path / "a.rgolf").read_bytes())
    header["format"] = 1
    del header["payload_sha256"]
    (tmp_path / "v1.rgolf").write_bytes(zstandard.ZstdCompressor(level=22).compress(header_bytes(header) + payload))
    with pytest.raises(ArtifactError, match=r"v1\.rgolf: an artifact in format 1.*re-export it .*`recur eval RUN_DIR`"):
        read_artifact(tmp_path / "v1.rgolf")
    header["format"] = 3
    (tmp_path / "v3.rgolf").write_bytes(reseal(header, payload))
    with pytest.raises(ArtifactError, match="artifact format 3; this recur_lib reads format 2"):
        read_artifact(tmp_path / "v3.rgolf")
    export_artifact(trained_like(cfg), cfg, tmp_path / "v1.rgolf")  # an old artifact of ours: replaced unasked
    read_artifact(tmp_path / "v1.rgolf")


# -- what export never overwrites ---------------------------------------------------------------------------


def test_export_never_replaces_a_file_that_is_not_an_artifact(tmp_path: Path) -> None:
    cfg = Config.from_name("smoke", TINY)
    m = trained_like(cfg)
    for name, content in (("notes.txt", b"my notes"), ("ckpt.pt", b"PK\x03\x04" + b"\0" * 100), ("empty", b"")):
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ArtifactError, match=f"{path} exists and is not a recur-golf artifact.*overwrite=True"):
            export_artifact(m, cfg, path)
        assert path.read_bytes() == content
        export_artifact(m, cfg, path, overwrite=True)
        read_artifact(path)
    (tmp_path / "dir").mkdir()
    with pytest.raises(ArtifactError, match="is a folder"):
        export_artifact(m, cfg, tmp_path / "dir")
    export_artifact(m, cfg, tmp_path / "notes.txt")  # now an artifact of ours: replaced without asking
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt", "dir", "empty", "notes.txt"]


def test_an_over_budget_export_leaves_the_previous_artifact_alone(tmp_path: Path) -> None:
    cfg = Config.from_name("smoke", TINY)
    export_artifact(trained_like(cfg), cfg, tmp_path / "model.rgolf")
    before = (tmp_path / "model.rgolf").read_bytes()
    with pytest.raises(ArtifactError, match=r"over the 1,000-byte budget .* Nothing was written; .*model\.rgolf is unch"):
        export_artifact(trained_like(cfg, seed=1), cfg.override({"quant.budget_bytes": 1000}),
                        tmp_path / "model.rgolf")
    assert (tmp_path / "model.rgolf").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.rgolf"]
