"""NF4 and finetune.qlora against the paper's definition and the reference tools: (a) the 16 NF4
values are the QLoRA paper's construction (equal-area quantiles of N(0, 1), bitsandbytes'
create_normal_map) and the NF4 checkpoint quantize.rtn writes decodes, byte for byte, to what a
numpy implementation of the paper's blockwise quantization (absmax per 64, nearest value) makes
of the original weights, and reloads bit-exact; (b) a qlora run lowers the training loss, and
its adapter, loaded with PEFT onto the transformers model whose base weights are our dequantized
4-bit weights, gives the logits of our merged output (which transformers also loads alone); the
stage quantizes its base exactly as quantize.rtn does; and a model whose rows the NF4 block does
not divide is refused, naming the tensor."""

import json
from statistics import NormalDist

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from conftest import load_reference_model, read_safetensors, stage_metrics
from test_finetune import our_logits, run, stage_error, text_ids, write_config

LOGIT_ATOL = 1e-4
# bitsandbytes' NF4 table (functional.py get_4bit_type("nf4"); the paper's Appendix E values)
NF4 = np.array([-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
                -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
                0.7229568362236023, 1.0], dtype=np.float32)
TEXT = "And God said, Let there be light: and there was light. And God saw the light, that it was good."


@pytest.fixture(autouse=True)
def _qlora_stage(host):
    if not host.has_stage("finetune.qlora"):
        pytest.skip("this build has no finetune.qlora")


def test_nf4_values_are_the_papers_normal_quantiles():
    # QLoRA section 3 / bitsandbytes create_normal_map(offset=0.9677083): 8 positive quantiles of
    # N(0, 1) from offset down to 1/2, 7 negative ones, an exact zero, scaled into [-1, 1]
    offset, nd = 0.9677083, NormalDist()
    pos = [nd.inv_cdf(p) for p in np.linspace(offset, 0.5, 9)[:-1]]
    neg = [-nd.inv_cdf(p) for p in np.linspace(offset, 0.5, 8)[:-1]]
    v = np.array(sorted(pos + [0.0] + neg))
    v /= v.max()
    assert np.abs(v - NF4).max() < 1e-6  # bitsandbytes builds them from a float32 linspace


def gpt2_conv1d(name, model_type):
    return model_type == "gpt2" and ".h." in f".{name}" and name.endswith(".weight")


def nf4_quantize(w):
    """The paper's blockwise NF4 of a [rows, cols] f32 weight: absmax per 64 along a row, each
    normalized weight to the nearest NF4 value. Returns (absmax [rows*cols/64], codes)."""
    b = w.astype(np.float32).reshape(-1, 64)
    absmax = np.abs(b).max(axis=1)
    n = b / np.where(absmax > 0, absmax, 1)[:, None]
    codes = np.abs(n[..., None].astype(np.float64) - NF4.astype(np.float64)).argmin(axis=-1)
    codes[absmax == 0] = 7
    return absmax, codes


def decode_nf4(raw, rows, cols):
    """Our NF4 bytes: per 64 weights an f32 absmax and 32 bytes, element 2j high nibble."""
    blk = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 36)
    absmax = blk[:, :4].copy().view("<f4")[:, 0]
    q = blk[:, 4:]
    codes = np.stack([q >> 4, q & 15], axis=-1).reshape(-1, 64)
    return absmax, codes, (NF4[codes] * absmax[:, None]).reshape(rows, cols)


def decode_gq4_sym(raw, rows, cols, group):
    """Our GQ(4, group, sym) bytes: per group an f16 scale and codes at bit 4i (low nibble
    first); w = scale * (q - 8)."""
    blk = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 2 + group // 2)
    scale = blk[:, :2].copy().view("<f2")[:, 0].astype(np.float32)
    q = blk[:, 2:]
    codes = np.stack([q & 15, q >> 4], axis=-1).reshape(-1, group).astype(np.float32)
    return (scale[:, None] * (codes - 8)).reshape(rows, cols)


def dequantized_base(model_dir, model_type):
    """{name: f32 array in the float checkpoint's layout} of our quantized checkpoint."""
    cfg = json.loads((model_dir / "config.json").read_text())
    dtypes = cfg["quantization_config"]["tensor_dtypes"]
    out = {}
    for name, (st, shape, raw) in read_safetensors(model_dir / "model.safetensors").items():
        if name not in dtypes:
            continue
        assert st == "U8"
        dt = dtypes[name]
        if dt == "nf4":
            rows, cols = shape[0], shape[1] // 36 * 64
            w = decode_nf4(raw, rows, cols)[2]
        else:
            assert dt.startswith("gq4g") and dt.endswith("s"), dt
            g = int(dt[4:-1])
            rows, cols = shape[0], shape[1] // (2 + g // 2) * g
            w = decode_gq4_sym(raw, rows, cols, g)
        out[name] = w.T.copy() if gpt2_conv1d(name, model_type) else w  # stored [out, in]
    return out


def test_rtn_nf4_checkpoint_is_the_papers_quantization_and_reloads_bit_exact(
        host, models_with_tokenizer, kjv_file, tmp_path):
    base_dir = models_with_tokenizer["gpt2_byte_level"]
    cfg = write_config(tmp_path, base_dir, {"train": (kjv_file, "0:100")},
                       ["{id: q, uses: quantize.rtn, with: {format: nf4}}"], outputs=["q"], name="nf4")
    run(host, cfg, tmp_path / "run")
    qdir = tmp_path / "run" / "q" / "model"
    qc = json.loads((qdir / "config.json").read_text())["quantization_config"]
    assert (qc["quant_method"], qc["dtype"], qc["bits"], qc["group_size"]) == ("llmopt", "nf4", 4, 64)
    ref = load_file(base_dir / "model.safetensors")
    ours = read_safetensors(qdir / "model.safetensors")
    assert len(qc["tensor_dtypes"]) == 8  # 2 layers x c_attn, attn.c_proj, c_fc, mlp.c_proj
    for name in qc["tensor_dtypes"]:
        w = ref[name].T if gpt2_conv1d(name, "gpt2") else ref[name]  # Conv1D [in, out] -> [out, in]
        absmax_want, codes_want = nf4_quantize(w)
        st, shape, raw = ours[name]
        assert shape == [w.shape[0], w.shape[1] // 64 * 36], (name, shape)
        absmax, codes, deq = decode_nf4(raw, *w.shape)
        assert np.array_equal(absmax, absmax_want), name
        assert np.array_equal(codes, codes_want), (name, int((codes != codes_want).sum()))
        want = (NF4[codes_want] * absmax_want[:, None]).reshape(w.shape)
        assert np.array_equal(deq, want), name
        assert np.abs(deq - w).max() <= absmax.max() * np.diff(NF4).max() / 2 * 1.0001  # half the widest gap
    # reloaded and saved again (quantize.cast f32 passes quantized tensors through): the same bytes
    cfg2 = write_config(tmp_path, qdir, {"train": (kjv_file, "0:100")},
                        ["{id: c, uses: quantize.cast, with: {dtype: f32}}"], outputs=["c"], name="reload")
    run(host, cfg2, tmp_path / "run2")
    again = read_safetensors(tmp_path / "run2" / "c" / "model" / "model.safetensors")
    assert again.keys() == ours.keys()
    for k in ours:
        assert again[k] == ours[k], k
    qc2 = json.loads((tmp_path / "run2" / "c" / "model" / "config.json").read_text())["quantization_config"]
    assert qc2["tensor_dtypes"] == qc["tensor_dtypes"]
    # our forward on the NF4 checkpoint = transformers on the dequantized weights
    model = load_reference_model(base_dir)
    sd = model.state_dict()
    for name, w in dequantized_base(qdir, "gpt2").items():
        sd[name] = torch.from_numpy(w)
    model.load_state_dict(sd)
    ids = text_ids(base_dir, TEXT)
    with torch.no_grad():
        want = model(torch.tensor([ids])).logits[0].numpy()
    got = our_logits(host, qdir, ids, tmp_path)
    assert np.abs(got - want).max() < LOGIT_ATOL, np.abs(got - want).max()


CASES = {
    # name: (model, quantize.rtn params, finetune.qlora base params, LoRA targets, matmul_precision)
    "gpt2_nf4": ("gpt2_byte_level", "format: nf4", "base_format: nf4", ["c_attn", "c_proj", "c_fc"], "highest"),
    # the tiny Llama's MLP is 176 wide: groups of 16 divide it, NF4's 64 does not
    "llama_gq4": ("llama_llama_bpe", "format: gq, bits: 4, group_size: 16, sym: true",
                  "base_format: gq4, group_size: 16", ["q_proj", "v_proj", "down_proj"], "highest"),
    # medium: the NF4 base's forward and dx through the bf16 GEMM (on AVX-512 BF16); the adapter
    # it trains must still load in PEFT and match our merged checkpoint
    "gpt2_nf4_medium": ("gpt2_byte_level", "format: nf4", "base_format: nf4", ["c_attn", "c_proj", "c_fc"],
                        "medium"),
}


@pytest.mark.parametrize("case", CASES)
def test_qlora_lowers_the_loss_and_its_adapter_on_our_dequantized_base_matches_in_peft(
        host, models_with_tokenizer, kjv_file, tmp_path, case):
    from peft import PeftModel

    model_name, rtn, base, targets, precision = CASES[case]
    base_dir = models_with_tokenizer[model_name]
    model_type = json.loads((base_dir / "config.json").read_text())["model_type"]
    lora = f"rank: 4, alpha: 8, targets: [{', '.join(targets)}], seq_len: 32, batch: 4, lr: 0.02, seed: 3"
    cfg = write_config(
        tmp_path, base_dir, {"train": (kjv_file, "0:1500")},
        [f"{{id: q, uses: quantize.rtn, with: {{{rtn}}}}}",
         # an already quantized input: its weights are kept, the adapter merged into their dequantized values
         f"{{id: ql, uses: finetune.qlora, inputs: {{model: q}}, with: {{{lora}, steps: 30, merge: true}}}}",
         # the float input quantized in the stage: the same base as quantize.rtn's
         f"{{id: qb, uses: finetune.qlora, with: {{{base}, {lora}, steps: 1}}}}",
         "{id: before, uses: eval.perplexity, inputs: {model: q}, with: {data: train, window: 32}}",
         "{id: after, uses: eval.perplexity, inputs: {model: ql}, with: {data: train, window: 32}}"],
        outputs=["q", "ql", "qb"], name="qlora")
    cfg.write_text(cfg.read_text() + f"matmul_precision: {precision}\n")
    out = tmp_path / "run"
    _, report = run(host, cfg, out)
    m = stage_metrics(report, f"qlora {case}")
    assert m["ql"]["steps"] == 30 and m["ql"]["trainable_params"] > 0
    assert m["after"]["ppl"] < 0.95 * m["before"]["ppl"], (m["before"]["ppl"], m["after"]["ppl"])

    # the stage's base is quantize.rtn's, byte for byte; base_bytes counts its tensors
    q = read_safetensors(out / "q" / "model" / "model.safetensors")
    qb = read_safetensors(out / "qb" / "model" / "model.safetensors")
    assert q == qb
    assert m["qb"]["base_bytes"] == sum(len(raw) for _, _, raw in q.values())
    assert m["ql"]["base_bytes"] == m["qb"]["base_bytes"]
    assert m["qb"]["base_bytes_ratio"] < 1
    assert (json.loads((out / "q" / "model" / "config.json").read_text())["quantization_config"] ==
            json.loads((out / "qb" / "model" / "config.json").read_text())["quantization_config"])

    # merged: a plain HF checkpoint with the input's names, shapes and dtypes, no quantization_config
    merged_dir = out / "ql" / "model"
    assert "quantization_config" not in json.loads((merged_dir / "config.json").read_text())
    ref = load_file(base_dir / "model.safetensors")
    merged = load_file(merged_dir / "model.safetensors")
    assert merged.keys() == ref.keys()
    for k in ref:
        assert merged[k].shape == ref[k].shape and merged[k].dtype == ref[k].dtype, k

    # PEFT's adapter on the transformers model holding our dequantized 4-bit base
    deq = dequantized_base(out / "q" / "model", model_type)
    assert len(deq) > 0
    model = load_reference_model(base_dir)
    sd = model.state_dict()
    for name, w in deq.items():
        assert sd[name].shape == w.shape, name
        sd[name] = torch.from_numpy(w)
    model.load_state_dict(sd)
    ids = text_ids(base_dir, TEXT)
    with torch.no_grad():
        base_logits = model(torch.tensor([ids])).logits[0].numpy()
    peft_model = PeftModel.from_pretrained(model, out / "ql" / "adapter").eval()
    with torch.no_grad():
        peft_logits = peft_model(torch.tensor([ids])).logits[0].numpy()
    ours = our_logits(host, merged_dir, ids, tmp_path)
    tf_merged = load_reference_model(merged_dir)
    with torch.no_grad():
        tf_logits = tf_merged(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(peft_logits - base_logits).max() > 1e-3, "the adapter changes nothing: the check would be vacuous"
    assert np.abs(ours - peft_logits).max() < LOGIT_ATOL, np.abs(ours - peft_logits).max()
    assert np.abs(tf_logits - peft_logits).max() < LOGIT_ATOL, np.abs(tf_logits - peft_logits).max()


def test_qlora_refuses_rows_the_nf4_block_does_not_divide(host, models_with_tokenizer, kjv_file, tmp_path):
    base_dir = models_with_tokenizer["llama_llama_bpe"]  # intermediate_size 176
    cfg = write_config(tmp_path, base_dir, {"train": (kjv_file, "0:100")},
                       ["{id: ql, uses: finetune.qlora, with: {steps: 1, seq_len: 16, batch: 1}}"], name="bad")
    p, report = run(host, cfg, tmp_path / "run", check=False)
    assert p.returncode != 0
    status, err = stage_error(report, "ql")
    assert status == "failed"
    for want in ("down_proj", "176", "64", "nf4", "gq4"):
        assert want in err, (want, err)
