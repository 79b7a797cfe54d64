"""k-quants in GGUF files against the `gguf` package: Llama and GPT-2 files written by its
GGUFWriter whose block weights are Q4_K, Q5_K, Q6_K (or all three) load in llmopt, dequantized to
f32 (host/runtime/kquant.c), with exactly the values gguf.quants.dequantize gives for the blocks,
in llama.cpp's layout once written back (gguf_convert), and run to transformers' logits on those
values. gguf 0.19 has no k-quant quantizer, so the blocks are random bytes with small f16
super-block scales. The helpers are test_gguf.py's."""

import json

import numpy as np
import pytest
import torch

from conftest import load_reference_model
from test_gguf import IDS, LOGITS_ATOL, as_array, convert, field, gguf_names, run_forward, write_with_gguf_package  # noqa: F401

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as QT  # noqa: E402


KQ = {QT.Q4_K: (144, (0, 2)), QT.Q5_K: (176, (0, 2)), QT.Q6_K: (210, (208,))}  # bytes; offsets of f16 scales


def kquant_blocks(shape, qt, rng):
    """Random k-quant super-blocks for a [rows, cols] weight (cols a multiple of 256): every code,
    scale and min byte random (gguf.quants.quantize has no k-quant quantizer), the f16 super-block
    scales small and positive so the weights are a few tenths, as a trained model's."""
    size, f16_at = KQ[qt]
    b = rng.integers(0, 256, size=(shape[0], shape[1] // 256, size), dtype=np.uint8)
    top = 63 * 15 if qt == QT.Q4_K else 63 * 31 if qt == QT.Q5_K else 127 * 32
    for off in f16_at:
        b[..., off:off + 2] = (rng.uniform(0.1, 0.4, size=b.shape[:2]) / top).astype(np.float16)[..., None].view(np.uint8)
    return b.reshape(shape[0], -1)


def unpermute(w, n_head):
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.fixture(scope="module")
def kquant_models(tmp_path_factory):
    """A Llama (hidden 256, GQA 4/2 heads) and a GPT-2 (n_embd 256) whose rows are whole
    super-blocks of 256."""
    from transformers import GPT2Config

    from conftest import INIT_STD, _llama_config, save_random_model

    d = tmp_path_factory.mktemp("kquant")
    gpt2 = GPT2Config(n_layer=1, n_embd=256, n_head=4, vocab_size=300, n_positions=128, initializer_range=INIT_STD,
                      bos_token_id=None, eos_token_id=None)
    llama = _llama_config(hidden_size=256, intermediate_size=256, num_hidden_layers=1)
    return {"llama": save_random_model("LlamaForCausalLM", llama, 21, d / "llama"),
            "gpt2": save_random_model("GPT2LMHeadModel", gpt2, 22, d / "gpt2")}


def write_kquant_gguf(model_dir, out, qts):
    """write_with_gguf_package's file with every 2-D block weight (q/k/v/o, MLP; Conv1D for GPT-2)
    replaced by random k-quant blocks of the types in qts (cycled); returns {gguf name: type}."""
    rng = np.random.default_rng(3)
    path = write_with_gguf_package(model_dir, out.with_suffix(".f32.gguf"))
    r = gguf.GGUFReader(path)
    w = gguf.GGUFWriter(str(out), field(r, "general.architecture"))
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture":
            continue
        v = f.contents()
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            w.add_array(k, v)
        else:
            w.add_key_value(k, v, f.types[0])
    types, i = {}, 0
    for t in r.tensors:
        data = as_array(t)
        if t.name.startswith("blk.") and data.ndim == 2:
            qt = qts[i % len(qts)]
            i += 1
            blocks = kquant_blocks(data.shape, qt, rng)
            w.add_tensor(t.name, blocks, raw_shape=blocks.shape, raw_dtype=qt)
            types[t.name] = qt
        else:
            w.add_tensor(t.name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return types


KQ_SETS = {"q4_k": [QT.Q4_K], "q5_k": [QT.Q5_K], "q6_k": [QT.Q6_K], "mixed": [QT.Q4_K, QT.Q5_K, QT.Q6_K]}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("kset", list(KQ_SETS))
def test_kquant_gguf_imports_as_gguf_quants_dequantize_gives(kquant_models, convert, tmp_path, arch, kset):
    # gguf package (k-quant blocks) -> llmopt (gguf_load: dequantized to f32) -> gguf_write ->
    # GGUFReader: each k-quant tensor is now F32, in the same llama.cpp layout, with exactly the
    # values gguf.quants.dequantize gives for the blocks; the other tensors are unchanged.
    src = tmp_path / "kq.gguf"
    types = write_kquant_gguf(kquant_models[arch], src, KQ_SETS[kset])
    assert len(types) >= 4
    ref = {t.name: t for t in gguf.GGUFReader(src).tensors}
    assert {ref[n].tensor_type for n in types} == set(KQ_SETS[kset])
    ours = gguf.GGUFReader(convert(src, tmp_path / "ours.gguf"))
    assert sorted(t.name for t in ours.tensors) == sorted(ref)
    for t in ours.tensors:
        assert t.tensor_type == QT.F32, t.name
        assert list(t.shape) == list(ref[t.name].shape), t.name
        want = as_array(ref[t.name])
        np.testing.assert_array_equal(as_array(t).view(np.uint32), want.view(np.uint32), err_msg=t.name)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_kquant_gguf_gives_transformers_logits_on_the_dequantized_weights(host, kquant_models, tmp_path, arch):
    host.require_command("forward")
    src = tmp_path / "kq.gguf"
    types = write_kquant_gguf(kquant_models[arch], src, KQ_SETS["mixed"])
    cfg = json.loads((kquant_models[arch] / "config.json").read_text())
    model = load_reference_model(kquant_models[arch])
    sd = model.state_dict()
    names = gguf_names(cfg)
    with torch.no_grad():
        for t in gguf.GGUFReader(src).tensors:
            if t.name not in types:
                continue
            hf_name, f = names[t.name]
            v = as_array(t)
            if f is np.transpose:
                v = v.T
            elif ".attn_q." in t.name:
                v = unpermute(v, cfg["num_attention_heads"])
            elif ".attn_k." in t.name:
                v = unpermute(v, cfg["num_key_value_heads"])
            sd[hf_name].copy_(torch.from_numpy(np.ascontiguousarray(v)))
        ref = model(torch.tensor([IDS])).logits[0].numpy()
    got = run_forward(host, src, tmp_path / "logits.f32").reshape(ref.shape)
    assert np.abs(got - ref).max() <= LOGITS_ATOL
