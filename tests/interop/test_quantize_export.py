"""quantize.export (format: gptq) against AutoGPTQ's v1 checkpoint format, on a Llama and a GPT-2
quantized here by quantize.gptq, quantize.awq and quantize.rtn (GQ, 2, 3, 4 and 8 bits, sym and
asym, with and without act_order):

- the files follow the format: config.json's quantization_config and quantize_config.json carry
  GPTQConfig's fields as the stage recorded them (bits, group_size, sym, desc_act, static_groups,
  damp_percent as a fraction, true_sequential, checkpoint_format "gptq"); every quantized
  `<layer>.weight` became `<layer>.qweight` int32 [in * bits / 32, out], `.qzeros` int32
  [in / group, out * bits / 32], `.scales` f16 [in / group, out], `.g_idx` int32 [in]; the other
  tensors are the llmopt checkpoint's, byte for byte;
- AutoGPTQ's documented dequantization (QuantLinear in auto_gptq/nn_modules/qlinear/
  qlinear_cuda_old.py: shift out the codes, `zeros = (qzeros field & mask) + 1`,
  `W = scales[g_idx] * (code - zeros[g_idx])`), done here in numpy in float32, equals bit for
  bit what llmopt's reference dequantizer (quant_rows d, host/runtime/quant.c) makes of the
  llmopt checkpoint's GQ blocks;
- a zero point of 0, which v1 cannot store, is refused with the tensor, output and group named
  when it cannot be shifted;
- when transformers can load it (optimum + auto-gptq importable: requirements-gptq.txt), the
  exported directory loads in transformers 4.47.1 as a GPTQ model whose QuantLinear buffers are
  the file's, and whose logits, with each QuantLinear's weight dequantized in float32, equal
  `llmopt-host forward` on the llmopt checkpoint within 1e-4; and auto-gptq's own CPU forward,
  run with its float16 matmul done in float32 (Debian's torch 1.13 has no float16 matmul on the
  CPU), unpacks each layer to exactly our weights."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import (TOKENIZER_VOCAB, ActivationsAsLlmopt, MatmulInFloat32, assert_logits_match_int8, _gpt2_config, _llama_config, read_safetensors,
                      save_random_model, transformers_gptq_available)

IDS = [5, 17, 300, 42, 1999, 7, 256, 1000, 3, 77, 12, 640]


@pytest.fixture(scope="module")
def ckpts(session_dir, tokenizers):
    """A Llama (hidden 128, ff 256, GQA 4/2) and a GPT-2 (n_embd 64) with the trained tokenizers."""
    out = {}
    specs = {"llama": ("LlamaForCausalLM", _llama_config(vocab_size=TOKENIZER_VOCAB, hidden_size=128,
                                                          intermediate_size=256), 11, "llama_bpe"),
             "gpt2": ("GPT2LMHeadModel", _gpt2_config(vocab_size=TOKENIZER_VOCAB), 12, "byte_level_bpe")}
    for name, (cls, cfg, seed, tok) in specs.items():
        d = session_dir / "export" / name
        if not (d / "model.safetensors").exists():
            save_random_model(cls, cfg, seed, d)
            for f in ("tokenizer.json", "tokenizer_config.json"):
                shutil.copy(tokenizers[tok] / f, d / f)
        out[name] = d
    return out


CAL = "data: train, n_samples: 8, seq_len: 64"
# stage id: (model, quantize stage, its parameters)
CASES = {
    "llama_gptq4_sym": ("llama", "quantize.gptq", f"bits: 4, group_size: 32, sym: true, {CAL}"),
    "llama_gptq8_asym_act": ("llama", "quantize.gptq", f"bits: 8, group_size: 64, sym: false, act_order: true, "
                                                        f"damp_percent: 2, {CAL}"),
    "llama_rtn4_asym": ("llama", "quantize.rtn", "format: gq, bits: 4, group_size: 32, sym: false"),
    "llama_gptq3_asym": ("llama", "quantize.gptq", f"bits: 3, group_size: 32, sym: false, {CAL}"),
    "gpt2_rtn3_sym": ("gpt2", "quantize.rtn", "format: gq, bits: 3, group_size: 64, sym: true"),
    "gpt2_rtn2_asym": ("gpt2", "quantize.rtn", "format: gq, bits: 2, group_size: 32, sym: false"),
    "gpt2_gptq4_asym": ("gpt2", "quantize.gptq", f"bits: 4, group_size: 32, sym: false, {CAL}"),
    "gpt2_awq4_sym": ("gpt2", "quantize.awq", f"bits: 4, group_size: 64, sym: true, {CAL}"),
}


# the 4-bit cases also go through format: awq (AutoAWQ's GEMM layout is 4-bit only)
AWQ_CASES = ("llama_gptq4_sym", "llama_rtn4_asym", "gpt2_awq4_sym")


@pytest.fixture(scope="module")
def exported(host, ckpts, kjv_file, tmp_path_factory):
    """One run per model: each quantize stage, and quantize.export of its output.
    {case: (llmopt checkpoint dir, exported dir, source checkpoint dir)}"""
    if not host.has_stage("quantize.export"):
        pytest.skip("no quantize.export stage in this build")
    tmp = tmp_path_factory.mktemp("export")
    out = {}
    for model in ("llama", "gpt2"):
        lines = [f"name: x\nmodel: {ckpts[model]}\n",
                 f"data:\n  train: {{path: {kjv_file}, split: '0:90%'}}\n", "stages:\n"]
        ids = []
        for case, (m, uses, params) in CASES.items():
            if m != model:
                continue
            lines.append(f"  - {{id: {case}, uses: {uses}, with: {{{params}}}}}\n")
            lines.append(f"  - {{id: {case}_x, uses: quantize.export, inputs: {{model: {case}}}}}\n")
            if case in AWQ_CASES:
                lines.append(f"  - {{id: {case}_a, uses: quantize.export, inputs: {{model: {case}}}, "
                             "with: {format: awq}}\n")
            ids.append(case)
        lines.append(f"outputs: [{', '.join(ids)}]\n")
        cfg = tmp / f"{model}.yaml"
        cfg.write_text("".join(lines))
        run = tmp / f"{model}-run"
        host.run("-q", "run", cfg, "--out", run, "--jobs", "2")
        for case in ids:
            out[case] = (run / case / "model", run / f"{case}_x" / "gptq", ckpts[model])
            if case in AWQ_CASES:
                out[case + "/awq"] = (run / case / "model", run / f"{case}_a" / "awq", ckpts[model])
    return out


@pytest.fixture(scope="session")
def quant_rows(host_exe):
    exe = Path(host_exe).resolve().parents[1] / "tests" / "unit" / "quant_rows"
    if not os.access(exe, os.X_OK):
        pytest.fail(f"no quant_rows at {exe}: build the tests (tests/unit/CMakeLists.txt)")

    def dequantize(dtype, raw, rows, cols):
        p = subprocess.run([str(exe), "d", dtype, str(cols)], input=raw, capture_output=True, timeout=120)
        assert p.returncode == 0, p.stderr.decode(errors="replace")
        return np.frombuffer(p.stdout, dtype=np.float32).reshape(rows, cols)

    return dequantize


def _codes(words, bits, axis):
    """The b-bit codes of int32 words read as one little-endian bit string along axis (AutoGPTQ's
    packing: for b = 2, 4, 8 code j of a word at bits b * j; for b = 3, 32 codes in 3 words, codes
    10 and 21 straddling two words, as QuantLinear.pack writes and its forward's shifts read)."""
    w = np.moveaxis(words.view(np.uint32), axis, -1)
    bitstr = ((w[..., :, None] >> np.arange(32, dtype=np.uint32)) & 1).reshape(*w.shape[:-1], -1, bits)
    return np.moveaxis((bitstr << np.arange(bits, dtype=np.uint32)).sum(-1), -1, axis)


def autogptq_dequantize(qweight, qzeros, scales, g_idx, bits):
    """AutoGPTQ v1's QuantLinear (qlinear_cuda_old.py) unpacking, in float32: [in, out]:
    W = scales[g_idx] * (code - ((qzeros field & mask) + 1))."""
    codes = _codes(qweight, bits, 0).astype(np.float32)               # [in, out]
    zeros = (_codes(qzeros, bits, 1) + 1).astype(np.float32)          # [groups, out]
    g = g_idx.astype(np.int64)
    return scales.astype(np.float32)[g] * (codes - zeros[g])


AWQ_REVERSE_ORDER = [0, 4, 1, 5, 2, 6, 3, 7]


def autoawq_dequantize(qweight, qzeros, scales, group):
    """AutoAWQ's dequantize_gemm (awq/utils/packing_utils.py: unpack_awq, reverse_awq_order,
    (iweight - izeros) * scales), 4 bits, in float32: [in, out]."""
    shifts = np.arange(0, 32, 4, dtype=np.uint32)

    def unpack(q):
        v = (q.view(np.uint32)[:, :, None] >> shifts[None, None, :]) & 15
        v = v.reshape(q.shape[0], -1)
        rev = np.arange(v.shape[1]).reshape(-1, 8)[:, AWQ_REVERSE_ORDER].reshape(-1)
        return v[:, rev].astype(np.float32)

    w, z = unpack(qweight), unpack(qzeros)
    return (w - np.repeat(z, group, axis=0)) * np.repeat(scales.astype(np.float32), group, axis=0)


def load_np(path):
    from safetensors.numpy import load_file

    return load_file(str(path))


def test_quantization_config_has_gptq_fields(exported):
    for case, (ours, gdir, _) in exported.items():
        if case.endswith("/awq"):
            continue
        qc = json.loads((gdir / "config.json").read_text())["quantization_config"]
        assert json.loads((gdir / "quantize_config.json").read_text()) == qc, case
        rec = json.loads((ours / "config.json").read_text())["quantization_config"]
        assert qc["quant_method"] == "gptq" and qc["checkpoint_format"] == "gptq", case
        assert (qc["bits"], qc["group_size"], qc["sym"]) == (rec["bits"], rec["group_size"], rec["sym"]), case
        method = CASES[case][1].split(".")[1]
        if method == "rtn":  # round to nearest records no method: the dtypes say it all
            assert "method" not in rec and qc["meta"]["method"] == "unknown", case
        else:
            assert rec["method"] == method and qc["meta"]["method"] == method, case
        if method == "gptq":
            act = "act_order: true" in CASES[case][2]
            assert qc["desc_act"] is act and qc["static_groups"] is act, case
            assert qc["damp_percent"] == pytest.approx(0.02 if "damp_percent: 2" in CASES[case][2] else 0.01), case
            seq = "sequential: false" not in CASES[case][2]  # the default: AutoGPTQ's true_sequential order
            assert qc["true_sequential"] is seq and rec["sequential"] is seq, case
        else:
            assert qc["desc_act"] is False and "damp_percent" not in qc, case
        if method == "awq":
            assert rec["zero_point"] is (not qc["sym"]), case
    qc = json.loads((exported["llama_gptq8_asym_act"][1] / "config.json").read_text())["quantization_config"]
    assert (qc["bits"], qc["group_size"], qc["sym"]) == (8, 64, False)


def test_packed_tensors_dequantize_to_our_weights_exactly(exported, quant_rows):
    for case, (ours, gdir, _) in exported.items():
        if case.endswith("/awq"):
            continue
        tdt = json.loads((ours / "config.json").read_text())["quantization_config"]["tensor_dtypes"]
        bits = json.loads((gdir / "config.json").read_text())["quantization_config"]["bits"]
        group = json.loads((gdir / "config.json").read_text())["quantization_config"]["group_size"]
        mine = read_safetensors(ours / "model.safetensors")
        raw = read_safetensors(gdir / "model.safetensors")
        g = load_np(gdir / "model.safetensors")
        assert tdt, case
        for name, dtype in tdt.items():
            base = name[: -len(".weight")]
            _, shape, blocks = mine[name]
            out_f, in_f = shape[0], g[base + ".g_idx"].shape[0]  # shape[1]: bytes of a row of blocks
            assert name not in raw, f"{case}: {name} still in the export"
            assert raw[base + ".qweight"][:2] == ("I32", [in_f * bits // 32, out_f]), (case, name)
            assert raw[base + ".qzeros"][:2] == ("I32", [in_f // group, out_f * bits // 32]), (case, name)
            assert raw[base + ".scales"][:2] == ("F16", [in_f // group, out_f]), (case, name)
            assert raw[base + ".g_idx"][:2] == ("I32", [in_f]), (case, name)
            np.testing.assert_array_equal(g[base + ".g_idx"], np.arange(in_f) // group)
            want = quant_rows(dtype, blocks, out_f, in_f)                       # [out, in]
            got = autogptq_dequantize(g[base + ".qweight"], g[base + ".qzeros"], g[base + ".scales"],
                                      g[base + ".g_idx"], bits).T
            np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32), err_msg=f"{case}: {name}")
        for name, entry in mine.items():  # everything else is carried over as it was
            if name not in tdt:
                assert raw[name] == entry, f"{case}: {name}"


def test_awq_gemm_export_dequantizes_to_our_weights_exactly(exported, quant_rows):
    """format: awq: quantization_config as AwqConfig reads it, WQLinear_GEMM's buffers (qweight
    int32 [in, out / 8], qzeros int32 [in / group, out / 8], scales f16 [in / group, out]), and
    AutoAWQ's dequantize_gemm of them equals llmopt's dequantization bit for bit."""
    cases = [c for c in exported if c.endswith("/awq")]
    assert len(cases) == len(AWQ_CASES)
    for case in cases:
        ours, adir, _ = exported[case]
        rec = json.loads((ours / "config.json").read_text())["quantization_config"]
        qc = json.loads((adir / "config.json").read_text())["quantization_config"]
        assert qc == {"quant_method": "awq", "bits": 4, "group_size": rec["group_size"], "zero_point": True,
                      "version": "gemm", "modules_to_not_convert": None,
                      "llmopt_method": rec.get("method", "unknown")}, case
        assert rec.get("method") == {"quantize.rtn": None}.get(CASES[case[:-4]][1], CASES[case[:-4]][1][9:]), case
        group = qc["group_size"]
        mine = read_safetensors(ours / "model.safetensors")
        raw = read_safetensors(adir / "model.safetensors")
        a = load_np(adir / "model.safetensors")
        for name, dtype in rec["tensor_dtypes"].items():
            base = name[: -len(".weight")]
            out_f = mine[name][1][0]
            in_f = a[base + ".qweight"].shape[0]
            assert raw[base + ".qweight"][:2] == ("I32", [in_f, out_f // 8]), (case, name)
            assert raw[base + ".qzeros"][:2] == ("I32", [in_f // group, out_f // 8]), (case, name)
            assert raw[base + ".scales"][:2] == ("F16", [in_f // group, out_f]), (case, name)
            assert base + ".g_idx" not in raw and name not in raw, (case, name)
            want = quant_rows(dtype, mine[name][2], out_f, in_f)
            got = autoawq_dequantize(a[base + ".qweight"], a[base + ".qzeros"], a[base + ".scales"], group).T
            np.testing.assert_array_equal(got.view(np.uint32), want.view(np.uint32), err_msg=f"{case}: {name}")
        for name, entry in mine.items():
            if name not in rec["tensor_dtypes"]:
                assert raw[name] == entry, f"{case}: {name}"


def test_awq_export_refuses_8_bits(exported, host, ckpts, tmp_path):
    src, _, _ = exported["llama_gptq8_asym_act"]
    cfg = tmp_path / "a8.yaml"
    cfg.write_text(f"name: a8\nmodel: {src}\nstages:\n  - {{id: x, uses: quantize.export, with: {{format: awq}}}}\n")
    p = host.run("-q", "run", cfg, "--out", tmp_path / "run", check=False)
    err = p.stderr.decode(errors="replace")
    assert p.returncode != 0 and "is gq8g64a: AutoAWQ's GEMM layout is 4-bit only" in err, err


def test_two_methods_on_one_model_record_no_method(host, ckpts, kjv_file, tmp_path):
    """RTN on the attention weights, then GPTQ on the MLP ones, both GQ4 g32 sym: one dtype, but
    no one method made it, so neither the checkpoint nor the export claims one."""
    cfg = tmp_path / "two.yaml"
    cfg.write_text(f"name: two\nmodel: {ckpts['llama']}\n"
                   f"data:\n  train: {{path: {kjv_file}, split: '0:90%'}}\nstages:\n"
                   "  - {id: r, uses: quantize.rtn, with: {format: gq, bits: 4, group_size: 32, include: ['*self_attn*']}}\n"
                   "  - {id: g, uses: quantize.gptq, inputs: {model: r}, with: {bits: 4, group_size: 32, "
                   "include: ['*mlp*'], n_samples: 4, seq_len: 32}}\n"
                   "  - {id: x, uses: quantize.export, inputs: {model: g}}\noutputs: [g]\n")
    host.run("-q", "run", cfg, "--out", tmp_path / "run")
    rec = json.loads((tmp_path / "run" / "g" / "model" / "config.json").read_text())["quantization_config"]
    assert rec["dtype"] == "gq4g32s" and len(rec["tensor_dtypes"]) == 14
    assert "method" not in rec and "desc_act" not in rec
    qc = json.loads((tmp_path / "run" / "x" / "gptq" / "config.json").read_text())["quantization_config"]
    assert qc["meta"]["method"] == "unknown" and qc["desc_act"] is False and "damp_percent" not in qc


def test_round_to_nearest_after_gptq_leaves_no_gptq_record(host, ckpts, kjv_file, tmp_path):
    """GPTQ on the attention weights, then RTN on the MLP ones into the same GQ4 g32 sym: one
    dtype everywhere, so only the record says how; GPTQ's must not stand for RTN's layers."""
    cfg = tmp_path / "gr.yaml"
    cfg.write_text(f"name: gr\nmodel: {ckpts['llama']}\n"
                   f"data:\n  train: {{path: {kjv_file}, split: '0:90%'}}\nstages:\n"
                   "  - {id: g, uses: quantize.gptq, with: {bits: 4, group_size: 32, include: ['*self_attn*'], "
                   "n_samples: 4, seq_len: 32}}\n"
                   "  - {id: r, uses: quantize.rtn, inputs: {model: g}, with: {format: gq, bits: 4, group_size: 32, "
                   "include: ['*mlp*']}}\noutputs: [g, r]\n")
    host.run("-q", "run", cfg, "--out", tmp_path / "run")
    g = json.loads((tmp_path / "run" / "g" / "model" / "config.json").read_text())["quantization_config"]
    r = json.loads((tmp_path / "run" / "r" / "model" / "config.json").read_text())["quantization_config"]
    assert g["method"] == "gptq" and len(g["tensor_dtypes"]) == 8
    assert r["dtype"] == "gq4g32s" and len(r["tensor_dtypes"]) == 14
    assert "method" not in r and "desc_act" not in r


def test_zero_point_zero_that_v1_cannot_store_is_refused(host, ckpts, tmp_path):
    """A group of non-negative weights whose largest code is 2^b - 1 gets zero point 0 under asym
    RTN; AutoGPTQ v1 stores zero - 1, so the export must refuse it, naming the place."""
    from safetensors.numpy import load_file, save_file

    src = tmp_path / "pos"
    shutil.copytree(ckpts["llama"], src)
    w = load_file(str(src / "model.safetensors"))
    name = "model.layers.0.mlp.up_proj.weight"
    w[name][3, 64:96] = np.abs(w[name][3, 64:96]) + 0.01  # output 3, group 2 of 32
    save_file(w, str(src / "model.safetensors"), metadata={"format": "pt"})
    cfg = tmp_path / "z.yaml"
    cfg.write_text(f"name: z\nmodel: {src}\nstages:\n"
                   "  - {id: r, uses: quantize.rtn, with: {format: gq, bits: 4, group_size: 32, sym: false}}\n"
                   "  - {id: x, uses: quantize.export, inputs: {model: r}}\n")
    p = host.run("-q", "run", cfg, "--out", tmp_path / "run", check=False)
    err = p.stderr.decode(errors="replace")
    assert p.returncode != 0
    assert f"'{name}': output 3, group 2 has zero point 0" in err, err
    assert not (tmp_path / "run" / "x" / "gptq" / "model.safetensors").exists()


def test_export_refuses_a_corrupt_zero_point(exported, host, tmp_path):
    """A GQ block whose f16 zero point is no integer code (a hand-edited checkpoint) stops the
    export with the place named, instead of a masked, wrong zero."""
    src, _, _ = exported["llama_rtn4_asym"]
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    raw = bytearray((bad / "model.safetensors").read_bytes())
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    name = "model.layers.1.self_attn.o_proj.weight"
    at = 8 + n + header[name]["data_offsets"][0] + 2  # the first block's zero point (after its scale)
    raw[at:at + 2] = np.float16(300.0).tobytes()
    (bad / "model.safetensors").write_bytes(bytes(raw))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"name: c\nmodel: {bad}\nstages:\n  - {{id: x, uses: quantize.export}}\n")
    p = host.run("-q", "run", cfg, "--out", tmp_path / "run", check=False)
    err = p.stderr.decode(errors="replace")
    assert p.returncode != 0 and f"'{name}': output 0, group 0:" in err and "zero point 300" in err, err
    assert not (tmp_path / "run" / "x" / "gptq" / "model.safetensors").exists()


def test_export_refuses_ggml_blocks(host, ckpts, tmp_path):
    cfg = tmp_path / "g.yaml"
    cfg.write_text(f"name: g\nmodel: {ckpts['llama']}\nstages:\n"
                   "  - {id: r, uses: quantize.rtn, with: {format: q4_0}}\n"
                   "  - {id: x, uses: quantize.export, inputs: {model: r}}\n")
    p = host.run("-q", "run", cfg, "--out", tmp_path / "run", check=False)
    err = p.stderr.decode(errors="replace")
    assert p.returncode != 0 and "is q4_0; AutoGPTQ's format holds group-quantized weights" in err, err


@pytest.mark.parametrize("case", list(CASES))
def test_transformers_loads_the_export(exported, host, quant_rows, case, tmp_path, monkeypatch):
    if not transformers_gptq_available():
        pytest.skip("optimum + auto-gptq not importable (tests/interop/requirements-gptq.txt)")
    import torch
    from transformers import AutoModelForCausalLM, GPTQConfig

    ours, gdir, _ = exported[case]
    qc = json.loads((gdir / "config.json").read_text())["quantization_config"]
    model = AutoModelForCausalLM.from_pretrained(
        gdir, torch_dtype=torch.float32, device_map="cpu",
        quantization_config=GPTQConfig(bits=qc["bits"], use_exllama=False)).eval()
    g = load_np(gdir / "model.safetensors")
    tdt = json.loads((ours / "config.json").read_text())["quantization_config"]["tensor_dtypes"]
    mine = read_safetensors(ours / "model.safetensors")
    modules = dict(model.named_modules())
    out = tmp_path / "logits.bin"
    host.run("forward", ours, "--ids", ",".join(map(str, IDS)), "--out", out)
    got = np.fromfile(out, dtype=np.float32).reshape(len(IDS), -1)
    # the whole model through auto-gptq's QuantLinear forward (its float16 matmul done in float32;
    # each layer rounds its output to float16): measured at most 2.8e-5 from llmopt on these eight
    # models, whose logits reach 6 to 10
    qmod = sys.modules[type(modules[next(iter(tdt))[: -len(".weight")]]).__module__]
    monkeypatch.setattr(qmod, "torch", MatmulInFloat32(torch))
    # the QuantLinear inputs quantized per 32 where llmopt's CPU plugin quantizes them
    acts = {n[: -len(".weight")]: dt for n, dt in tdt.items()}
    with torch.no_grad():
        plain = model(torch.tensor([IDS])).logits[0].float().numpy()
        with ActivationsAsLlmopt(host, model, acts, len(IDS)):
            through = model(torch.tensor([IDS])).logits[0].float().numpy()
    monkeypatch.undo()
    print(f"{case}: max |auto-gptq forward - llmopt| = {np.abs(through - got).max():.3g}, "
          f"max |logit| = {np.abs(got).max():.3g}")
    assert_logits_match_int8(got, through, plain, 1e-4)
    for name, dtype in tdt.items():
        base = name[: -len(".weight")]
        ql = modules[base]
        assert type(ql).__name__ == "QuantLinear", (base, type(ql))
        assert (ql.bits, ql.group_size) == (qc["bits"], qc["group_size"])
        for buf in ("qweight", "qzeros", "scales", "g_idx"):
            np.testing.assert_array_equal(getattr(ql, buf).numpy(), g[f"{base}.{buf}"], err_msg=f"{base}.{buf}")
        w = autogptq_dequantize(ql.qweight.numpy(), ql.qzeros.numpy(), ql.scales.numpy(), ql.g_idx.numpy(), ql.bits).T
        want = quant_rows(dtype, mine[name][2], ql.outfeatures, ql.infeatures)
        np.testing.assert_array_equal(w, want)
        # AutoGPTQ's own unpacking (its CPU forward) makes scale * (code - zero) in the scales'
        # dtype (float32 here: transformers casts the buffers to torch_dtype; float16 in a
        # float16 model): an f16 scale times a small integer is exact in float32, so it must be
        # our weights in that dtype, to the bit
        spy = MatmulInFloat32(torch)
        monkeypatch.setattr(sys.modules[type(ql).__module__], "torch", spy)
        with torch.no_grad():
            ql(torch.zeros(1, ql.infeatures))
        monkeypatch.undo()
        assert len(spy.weights) == 1, base
        unpacked = spy.weights[0].numpy().T
        np.testing.assert_array_equal(unpacked, want.astype(unpacked.dtype), err_msg=f"{base} (auto-gptq)")
        bias = g.get(base + ".bias")
        assert (ql.bias is None) == (bias is None), base
        if bias is not None:  # QuantLinear's bias buffer, in the dtype transformers gave it
            np.testing.assert_array_equal(ql.bias.numpy(), bias.astype(ql.bias.numpy().dtype))
        lin = torch.nn.Linear(ql.infeatures, ql.outfeatures, bias=bias is not None)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(w))
            if bias is not None:  # the file's float32 bias, which llmopt runs with
                lin.bias.copy_(torch.from_numpy(bias))
        parent, _, child = base.rpartition(".")
        setattr(modules[parent], child, lin)
    with torch.no_grad():
        plain = model(torch.tensor([IDS])).logits[0].numpy()
        with ActivationsAsLlmopt(host, model, acts, len(IDS)):
            ref = model(torch.tensor([IDS])).logits[0].numpy()
    assert_logits_match_int8(got, ref, plain, 1e-4)
