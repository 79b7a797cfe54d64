"""Our ggml quantizers byte for byte against the reference: the same f32 rows quantized to Q8_0,
Q4_0 and Q4_1 by llmopt (host/runtime/quant.c, through the filter <build>/tests/unit/quant_rows,
tests/interop/quant_rows.c) and by the `gguf` package's gguf.quants.quantize (llama.cpp's numpy
port of ggml-quants.c's quantize_row_*_ref) must give identical blocks, and the same blocks must
dequantize to identical f32 values on both sides. The rows are chosen where the rules bite:
normal values at several scales, outliers, all-zero and constant blocks, values so small that
the f16 scale is subnormal or zero, ties in magnitude with both signs, and codes that land
exactly on .5. Then quantize.rtn end to end: the blocks a stage saves for a checkpoint's weights
are the gguf package's blocks of those weights."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import read_safetensors

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as QT  # noqa: E402

TYPES = {"q8_0": QT.Q8_0, "q4_0": QT.Q4_0, "q4_1": QT.Q4_1}
N = 256  # values per row: 8 blocks of 32


@pytest.fixture(scope="session")
def quant_rows(host_exe):
    exe = Path(host_exe).resolve().parents[1] / "tests" / "unit" / "quant_rows"
    if not os.access(exe, os.X_OK):
        pytest.fail(f"no quant_rows at {exe}: build the tests (tests/unit/CMakeLists.txt)")

    def run(mode, dtype, data, n=N):
        p = subprocess.run([str(exe), mode, dtype, str(n)], input=data.tobytes(), capture_output=True, timeout=120)
        assert p.returncode == 0, p.stderr.decode(errors="replace")
        return np.frombuffer(p.stdout, dtype=np.uint8 if mode == "q" else np.float32)

    return run


def rows():
    """{case: f32 [rows, N]}"""
    rng = np.random.default_rng(1234)
    out = {}
    for scale in (1e-3, 0.02, 1.0, 300.0):
        out[f"normal_{scale:g}"] = rng.standard_normal((64, N)) * scale
    w = rng.standard_normal((64, N)) * 0.05
    idx = rng.integers(0, N, size=(64, 3))
    np.put_along_axis(w, idx, rng.choice([-1, 1], size=(64, 3)) * rng.uniform(2, 40, size=(64, 3)), axis=1)
    out["outliers"] = w
    z = rng.standard_normal((16, N))
    z[:, 32:96] = 0.0  # whole zero blocks beside normal ones
    z[::2, :] = 0.0    # and whole zero rows
    out["zero_blocks"] = z
    c = np.repeat(rng.standard_normal((16, N // 32)), 32, axis=1)  # constant blocks: max == min
    out["constant_blocks"] = c
    out["tiny"] = rng.standard_normal((32, N)) * np.array([1e-5, 1e-7, 1e-9, 1e-30])[rng.integers(0, 4, size=(32, 1))]
    out["f32_subnormal"] = rng.standard_normal((8, N)) * 1e-40
    t = rng.standard_normal((16, N)) * 0.1
    t[:, 0], t[:, 5] = 0.9, -0.9      # equal magnitude, + first
    t[:, 40], t[:, 33] = 0.7, -0.7    # equal magnitude, - first
    out["magnitude_ties"] = t
    # integers and half-integers: x / d lands exactly on .5 and on whole codes
    out["halves"] = rng.integers(-16, 17, size=(32, N)) / 2.0
    out["large"] = rng.standard_normal((8, N)) * 6e6  # the f16 scale overflows to inf
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


ROWS = rows()


@pytest.mark.parametrize("case", sorted(ROWS))
@pytest.mark.parametrize("dtype", sorted(TYPES))
def test_quantized_blocks_equal_gguf_quants(quant_rows, dtype, case):
    x = ROWS[case]
    ours = quant_rows("q", dtype, x)
    with np.errstate(all="ignore"):  # the reference divides by 0 and overflows in the cases above
        ref = gguf.quants.quantize(x, TYPES[dtype]).reshape(-1)
    assert ours.size == ref.size
    bad = np.flatnonzero(ours != ref)
    if bad.size:
        bs = gguf.constants.GGML_QUANT_SIZES[TYPES[dtype]][1]
        b = bad[0] // bs
        pytest.fail(f"{dtype} {case}: {bad.size} bytes differ; first in block {b}: ours "
                    f"{ours[b * bs:(b + 1) * bs].tobytes().hex()} ref {ref[b * bs:(b + 1) * bs].tobytes().hex()}")


@pytest.mark.parametrize("dtype", sorted(TYPES))
def test_dequantized_values_equal_gguf_quants(quant_rows, dtype):
    """Random blocks (every code, scales and minimums of either sign, f16 subnormals; no inf or
    NaN scales) dequantize to the same f32 bits on both sides."""
    qt = TYPES[dtype]
    bsize = gguf.constants.GGML_QUANT_SIZES[qt][1]
    rng = np.random.default_rng(99)
    blocks = rng.integers(0, 256, size=(512, bsize), dtype=np.uint8)
    nf = 2 if qt == QT.Q8_0 or qt == QT.Q4_0 else 4
    halfs = blocks[:, :nf].copy().view(np.float16)
    halfs[~np.isfinite(halfs)] = np.float16(1.5)
    blocks[:, :nf] = halfs.view(np.uint8)
    ours = quant_rows("d", dtype, blocks, n=32 * 16).reshape(-1)
    ref = gguf.quants.dequantize(blocks.reshape(32, -1), qt).reshape(-1).astype(np.float32)
    np.testing.assert_array_equal(ours.view(np.uint32), ref.view(np.uint32))


def test_quant_rows_rejects_a_partial_row(quant_rows, host_exe):
    exe = Path(host_exe).resolve().parents[1] / "tests" / "unit" / "quant_rows"
    p = subprocess.run([str(exe), "q", "q4_0", "64"], input=b"\0" * (64 * 4 + 12), capture_output=True, timeout=60)
    assert p.returncode == 1
    assert "12 bytes at the end of stdin are not a whole row of 256" in p.stderr.decode()


@pytest.mark.parametrize("dtype", sorted(TYPES))
def test_rtn_stage_saves_the_reference_blocks(host, models, tmp_path, dtype):
    """quantize.rtn on a float32 Llama checkpoint: every converted weight's saved U8 rows are
    gguf.quants.quantize of the checkpoint's weight ([out, in], rows of blocks along the inputs)."""
    if not host.has_stage("quantize.rtn"):
        pytest.skip("no quantize plugin in this build")
    from safetensors.numpy import load_file

    src = models["llama_gqa"]
    cfg = tmp_path / "rtn.yaml"
    # down_proj reads 176 inputs, not a whole number of blocks of 32: left out
    cfg.write_text(f"name: b\nmodel: {src}\nstages:\n"
                   f"  - {{id: r, uses: quantize.rtn, with: {{format: {dtype}, "
                   f"exclude: ['*embed_tokens*', '*lm_head*', '*down_proj*']}}}}\noutputs: [r]\n")
    out = tmp_path / "run"
    host.run("-q", "run", cfg, "--out", out)
    saved = out / "r" / "model"
    tdt = json.loads((saved / "config.json").read_text())["quantization_config"]["tensor_dtypes"]
    w = load_file(str(src / "model.safetensors"))
    got = read_safetensors(saved / "model.safetensors")
    assert sorted(tdt) == sorted(k for k in w if k.endswith("_proj.weight") and "down_proj" not in k)
    for name in tdt:
        assert tdt[name] == dtype
        st, shape, raw = got[name]
        ref = gguf.quants.quantize(w[name].astype(np.float32), TYPES[dtype])
        assert st == "U8" and shape == list(ref.shape), name
        assert raw == ref.tobytes(), f"{name}: saved blocks differ from gguf.quants.quantize"
