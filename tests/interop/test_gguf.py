"""GGUF against the `gguf` package (llama.cpp's own Python reader and writer): files we write read
back in GGUFReader with llama.cpp's names, shapes, types and layout (Llama q/k rows permuted for
ggml's rope, GPT-2 Conv1D weights transposed, as convert_hf_to_gguf.py does), and files its
GGUFWriter makes load in llmopt and give transformers' logits. The writer side is driven by the
test executable gguf_convert (a model directory or .gguf in, GGUF out) until a stage writes GGUF."""

import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import MODEL_SPECS, ActivationsAsLlmopt, assert_logits_match_int8, load_reference_model

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as QT  # noqa: E402

LOGITS_ATOL = 1e-4
# GPT-2's attention-scale options have no GGUF key: gguf_write refuses those models
NO_GGUF = {"gpt2_scaled_by_layer": "scale_attn_by_inverse_layer_idx", "gpt2_unscaled_attn": "scale_attn_weights false"}
GGUF_MODELS = [n for n in MODEL_SPECS if n not in NO_GGUF]
IDS = np.random.default_rng(0).integers(0, 300, size=48).tolist()


@pytest.fixture(scope="session")
def convert(host_exe):
    exe = Path(host_exe).resolve().parents[1] / "tests" / "unit" / "gguf_convert"
    if not os.access(exe, os.X_OK):
        pytest.skip(f"no gguf_convert at {exe} (built with the unit tests)")

    def run(src, dst):
        p = subprocess.run([str(exe), str(src), str(dst)], capture_output=True, timeout=300)
        assert p.returncode == 0, p.stderr.decode(errors="replace")
        return dst

    return run


def hf_tensors(model_dir):
    from safetensors.numpy import load_file

    return load_file(str(Path(model_dir) / "model.safetensors"))


def permute(w, n_head):
    """llama.cpp's q/k row order: each head's [x0..x(D/2-1), y0..] becomes [x0, y0, x1, y1, ...]."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def is_llama3(cfg):
    rs = cfg.get("rope_scaling") or {}
    return rs.get("rope_type", rs.get("type")) == "llama3"


def llama3_rope_factors(cfg):
    """rope_freqs.weight as convert_hf_to_gguf.py computes it from Llama 3.1's rope_scaling: the
    divisor of each rotary pair's frequency."""
    rs, base = cfg["rope_scaling"], cfg["rope_theta"]
    dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    factor, lo, hi, ctx = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"], rs["original_max_position_embeddings"]
    out = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi / (1.0 / base ** (i / dim))
        if wavelen < ctx / hi:
            out.append(1.0)
        elif wavelen > ctx / lo:
            out.append(factor)
        else:
            smooth = (ctx / wavelen - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def gguf_names(cfg):
    """{GGUF name: (HF name, numpy transform)} the way convert_hf_to_gguf.py maps a checkpoint;
    rope_freqs.weight, made from the config alone, has no HF name."""
    same = lambda w: w  # noqa: E731
    if cfg["model_type"] == "gpt2":
        g = {"token_embd.weight": "transformer.wte.weight", "position_embd.weight": "transformer.wpe.weight",
             "output_norm.weight": "transformer.ln_f.weight", "output_norm.bias": "transformer.ln_f.bias"}
        out = {k: (v, same) for k, v in g.items()}
        out["output.weight"] = ("transformer.wte.weight", same)  # tied: written out, as the converter does
        per = {"attn_norm": ("ln_1", same), "attn_qkv": ("attn.c_attn", np.transpose),
               "attn_output": ("attn.c_proj", np.transpose), "ffn_norm": ("ln_2", same),
               "ffn_up": ("mlp.c_fc", np.transpose), "ffn_down": ("mlp.c_proj", np.transpose)}
        for b in range(cfg["n_layer"]):
            for k, (v, f) in per.items():
                out[f"blk.{b}.{k}.weight"] = (f"transformer.h.{b}.{v}.weight", f)
                out[f"blk.{b}.{k}.bias"] = (f"transformer.h.{b}.{v}.bias", same)
        return out
    nh, nkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    # qwen2: llama.cpp rotates halves as transformers does, so q/k rows are not permuted; q/k/v
    # always have biases, o never
    qwen2 = cfg["model_type"] == "qwen2"
    if qwen2:
        permute_q = permute_k = same
    else:
        permute_q, permute_k = (lambda w: permute(w, nh)), (lambda w: permute(w, nkv))
    out = {"token_embd.weight": ("model.embed_tokens.weight", same),
           "output_norm.weight": ("model.norm.weight", same)}
    if is_llama3(cfg):
        out["rope_freqs.weight"] = (None, lambda _: llama3_rope_factors(cfg))
    if not cfg.get("tie_word_embeddings"):
        out["output.weight"] = ("lm_head.weight", same)
    per = {"attn_norm": ("input_layernorm", same), "attn_q": ("self_attn.q_proj", permute_q),
           "attn_k": ("self_attn.k_proj", permute_k), "attn_v": ("self_attn.v_proj", same),
           "attn_output": ("self_attn.o_proj", same), "ffn_norm": ("post_attention_layernorm", same),
           "ffn_gate": ("mlp.gate_proj", same), "ffn_up": ("mlp.up_proj", same), "ffn_down": ("mlp.down_proj", same)}
    # attention_bias / mlp_bias: the converter permutes the q and k biases as their weights' rows
    biased = {"attn_q", "attn_k", "attn_v", "attn_output"} if cfg.get("attention_bias") else set()
    biased |= {"ffn_gate", "ffn_up", "ffn_down"} if cfg.get("mlp_bias") else set()
    biased |= {"attn_q", "attn_k", "attn_v"} if qwen2 else set()
    for b in range(cfg["num_hidden_layers"]):
        for k, (v, f) in per.items():
            out[f"blk.{b}.{k}.weight"] = (f"model.layers.{b}.{v}.weight", f)
            if k in biased:
                out[f"blk.{b}.{k}.bias"] = (f"model.layers.{b}.{v}.bias", f)
    return out


def field(reader, key):
    f = reader.get_field(key)
    assert f is not None, f"missing key {key}"
    return f.contents()


def as_array(t):
    """A ReaderTensor's values in HF (row-major, outermost-first) shape, dequantized."""
    shape = tuple(int(d) for d in reversed(t.shape))
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape).astype(np.float32)


# ---- files we write, read by GGUFReader ----

@pytest.mark.parametrize("name", GGUF_MODELS)
def test_gguf_reader_reads_our_metadata(models, convert, tmp_path, name):
    cfg = json.loads((models[name] / "config.json").read_text())
    r = gguf.GGUFReader(convert(models[name], tmp_path / "m.gguf"))
    arch = cfg["model_type"]
    assert field(r, "general.architecture") == arch
    assert field(r, "general.alignment") == 32
    assert field(r, "general.file_type") == 0  # all F32
    if arch == "gpt2":
        want = {"block_count": cfg["n_layer"], "embedding_length": cfg["n_embd"], "attention.head_count": cfg["n_head"],
                "context_length": cfg["n_positions"], "feed_forward_length": 4 * cfg["n_embd"]}
        assert field(r, "gpt2.attention.layer_norm_epsilon") == pytest.approx(cfg["layer_norm_epsilon"])
    else:
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        want = {"block_count": cfg["num_hidden_layers"], "embedding_length": cfg["hidden_size"],
                "attention.head_count": cfg["num_attention_heads"],
                "attention.head_count_kv": cfg["num_key_value_heads"],
                "feed_forward_length": cfg["intermediate_size"], "context_length": cfg["max_position_embeddings"],
                "rope.dimension_count": head_dim, "vocab_size": cfg["vocab_size"]}
        assert field(r, f"{arch}.rope.freq_base") == pytest.approx(cfg["rope_theta"])
        assert field(r, f"{arch}.attention.layer_norm_rms_epsilon") == pytest.approx(cfg["rms_norm_eps"])
        if cfg.get("rope_scaling") and not is_llama3(cfg):  # llama3: the rope_freqs.weight tensor instead
            assert field(r, f"{arch}.rope.scaling.type") == "linear"
            assert field(r, f"{arch}.rope.scaling.factor") == pytest.approx(cfg["rope_scaling"]["factor"])
        else:
            assert r.get_field(f"{arch}.rope.scaling.type") is None
    for k, v in want.items():
        assert field(r, f"{arch}.{k}") == v, k


@pytest.mark.parametrize("name", GGUF_MODELS)
def test_gguf_reader_reads_our_tensors_in_llama_cpp_layout(models, convert, tmp_path, name):
    cfg = json.loads((models[name] / "config.json").read_text())
    r = gguf.GGUFReader(convert(models[name], tmp_path / "m.gguf"))
    hf = hf_tensors(models[name])
    names = gguf_names(cfg)
    assert sorted(t.name for t in r.tensors) == sorted(names)
    for t in r.tensors:
        src, f = names[t.name]
        want = f(hf[src] if src else None)
        assert t.tensor_type == QT.F32, t.name
        assert tuple(int(d) for d in t.shape) == tuple(reversed(want.shape)), t.name  # ne[0] is the row length
        if src:
            np.testing.assert_array_equal(as_array(t), want, err_msg=t.name)
        else:  # computed on both sides, in double, then stored as f32
            np.testing.assert_allclose(as_array(t), want, rtol=1e-6, err_msg=t.name)
        assert t.data_offset % 32 == 0


@pytest.mark.parametrize("name", list(NO_GGUF))
def test_gguf_write_refuses_an_attention_scale_gguf_cannot_carry(models, host_exe, tmp_path, name):
    exe = Path(host_exe).resolve().parents[1] / "tests" / "unit" / "gguf_convert"
    if not os.access(exe, os.X_OK):
        pytest.skip(f"no gguf_convert at {exe}")
    out = tmp_path / "m.gguf"
    p = subprocess.run([str(exe), str(models[name]), str(out)], capture_output=True, timeout=300)
    assert p.returncode != 0 and NO_GGUF[name] in p.stderr.decode(), p.stderr.decode(errors="replace")
    assert not out.exists() and not list(tmp_path.glob("m.gguf.tmp-*"))


# ---- files the gguf package writes, run by llmopt ----

def write_with_gguf_package(model_dir, out, wtype=QT.F32, only=lambda name, f: True):
    """A GGUF of a transformers checkpoint made with GGUFWriter, named and laid out as llama.cpp's
    converter does; 2-D weights in wtype where only(name, transform) (norms and biases stay F32)."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    arch = cfg["model_type"]
    w = gguf.GGUFWriter(str(out), arch)
    if arch == "gpt2":
        w.add_block_count(cfg["n_layer"])
        w.add_context_length(cfg["n_positions"])
        w.add_embedding_length(cfg["n_embd"])
        w.add_feed_forward_length(4 * cfg["n_embd"])
        w.add_head_count(cfg["n_head"])
        w.add_layer_norm_eps(cfg["layer_norm_epsilon"])
    else:
        w.add_block_count(cfg["num_hidden_layers"])
        w.add_context_length(cfg["max_position_embeddings"])
        w.add_embedding_length(cfg["hidden_size"])
        w.add_feed_forward_length(cfg["intermediate_size"])
        w.add_head_count(cfg["num_attention_heads"])
        w.add_head_count_kv(cfg["num_key_value_heads"])
        w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
        w.add_rope_freq_base(cfg["rope_theta"])
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        w.add_rope_dimension_count(head_dim)
        if head_dim * cfg["num_attention_heads"] != cfg["hidden_size"]:
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)
        if cfg.get("rope_scaling") and not is_llama3(cfg):
            w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            w.add_rope_scaling_factor(cfg["rope_scaling"]["factor"])
    w.add_file_type({QT.F32: 0, QT.F16: 1, QT.Q4_0: 2, QT.Q4_1: 3, QT.Q8_0: 7}[wtype])
    hf = hf_tensors(model_dir)
    for name, (src, f) in gguf_names(cfg).items():
        data = np.ascontiguousarray(f(hf[src] if src else None))
        if not only(name, f):
            w.add_tensor(name, data)
        elif data.ndim == 2 and wtype == QT.F16:
            w.add_tensor(name, data.astype(np.float16))
        elif data.ndim == 2 and wtype != QT.F32 and data.shape[-1] % 32 == 0:  # else F32, as llama.cpp falls back
            q = gguf.quants.quantize(data, wtype)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=wtype)
        else:
            w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def run_forward(host, model, out):
    host.run("forward", model, "--ids", ",".join(map(str, IDS)), "--out", out)
    return np.fromfile(out, dtype="<f4")


@pytest.mark.parametrize("name", GGUF_MODELS)
def test_gguf_written_by_gguf_package_gives_transformers_logits(host, models, tmp_path, name):
    host.require_command("forward")
    path = write_with_gguf_package(models[name], tmp_path / "ref.gguf")
    with torch.no_grad():
        ref = load_reference_model(models[name])(torch.tensor([IDS])).logits[0].numpy()
    got = run_forward(host, path, tmp_path / "logits.f32").reshape(ref.shape)
    err = np.abs(got - ref)
    assert err.max() <= LOGITS_ATOL, f"max |ours - transformers| = {err.max():.3g}"


@pytest.mark.parametrize("wtype", [QT.F16, QT.Q8_0, QT.Q4_0, QT.Q4_1], ids=lambda t: t.name)
def test_quantized_gguf_round_trips_through_llmopt(models, convert, tmp_path, wtype):
    # gguf package -> llmopt (gguf_load) -> gguf_write -> GGUFReader: every tensor keeps its type
    # and dequantizes to the values the gguf package wrote.
    src = write_with_gguf_package(models["llama_gqa"], tmp_path / "ref.gguf", wtype)
    ours = gguf.GGUFReader(convert(src, tmp_path / "ours.gguf"))
    ref = {t.name: t for t in gguf.GGUFReader(src).tensors}
    assert sorted(ref) == sorted(t.name for t in ours.tensors)
    for t in ours.tensors:
        assert t.tensor_type == ref[t.name].tensor_type, t.name
        assert list(t.shape) == list(ref[t.name].shape), t.name
        np.testing.assert_array_equal(as_array(t), as_array(ref[t.name]), err_msg=t.name)


def test_quantized_gpt2_conv1d_weights_run_as_gguf_stores_them(host, models, tmp_path):
    # Q8_0 Conv1D weights stay the [out, in] blocks GGUF holds (the runtime runs quantized GPT-2
    # weights in that layout), so the logits are those of transformers on the blocks' values.
    host.require_command("forward")
    path = write_with_gguf_package(models["gpt2"], tmp_path / "q8.gguf", QT.Q8_0, lambda n, f: f is np.transpose)
    r = gguf.GGUFReader(path)
    assert {t.tensor_type for t in r.tensors} == {QT.F32, QT.Q8_0}
    model = load_reference_model(models["gpt2"])
    sd = model.state_dict()
    names = gguf_names(json.loads((models["gpt2"] / "config.json").read_text()))
    q8 = {}  # the Conv1D modules llmopt runs on Q8_0 blocks: their inputs quantized where llmopt's are
    with torch.no_grad():
        for t in r.tensors:
            src, f = names[t.name]
            v = as_array(t)
            sd[src].copy_(torch.from_numpy(np.ascontiguousarray(v.T if f is np.transpose else v)))
            if t.tensor_type == QT.Q8_0:
                q8[src[: -len(".weight")]] = "q8_0"
        plain = model(torch.tensor([IDS])).logits[0].numpy()
        with ActivationsAsLlmopt(host, model, q8, len(IDS)):
            ref = model(torch.tensor([IDS])).logits[0].numpy()
    got = run_forward(host, path, tmp_path / "logits.f32").reshape(ref.shape)
    assert_logits_match_int8(got, ref, plain, LOGITS_ATOL)


# ---- tokenizers ----

GGUF_PRE = {"gpt2_byte_level": "gpt-2", "llama3_llama_bpe": "llama-bpe", "qwen2_qwen2_bpe": "qwen2",
            "smollm_smollm_bpe": "smollm"}


@pytest.mark.parametrize("name", ["gpt2_byte_level", "llama_llama_bpe", "llama3_llama_bpe", "qwen2_qwen2_bpe",
                                  "smollm_smollm_bpe"])
def test_gguf_carries_the_tokenizer(models_with_tokenizer, convert, tmp_path, name):
    d = models_with_tokenizer[name]
    tj = json.loads((d / "tokenizer.json").read_text())
    r = gguf.GGUFReader(convert(d, tmp_path / "m.gguf"))
    spm = tj["model"].get("byte_fallback", False)
    assert field(r, "tokenizer.ggml.model") == ("llama" if spm else "gpt2")
    tokens = field(r, "tokenizer.ggml.tokens")
    vocab = {t["content"]: t["id"] for t in tj["added_tokens"]} | tj["model"]["vocab"]
    assert len(tokens) == max(vocab.values()) + 1
    assert all(tokens[i] == t for t, i in vocab.items())
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    assert field(r, "tokenizer.ggml.merges") == merges
    types = field(r, "tokenizer.ggml.token_type")
    control = {"gpt2_byte_level": "<|endoftext|>", "llama_llama_bpe": "<s>", "llama3_llama_bpe": "<|begin_of_text|>",
               "qwen2_qwen2_bpe": "<|endoftext|>", "smollm_smollm_bpe": "<|endoftext|>"}[name]
    assert types[vocab[control]] == 3  # CONTROL
    if spm:
        assert types[vocab["<0x41>"]] == 6  # BYTE
        assert types[vocab["<unk>"]] == 2   # UNKNOWN
        assert field(r, "tokenizer.ggml.bos_token_id") == vocab["<s>"]
        assert field(r, "tokenizer.ggml.add_bos_token") is True
        assert len(field(r, "tokenizer.ggml.scores")) == len(tokens)
    else:
        assert field(r, "tokenizer.ggml.pre") == GGUF_PRE[name]


@pytest.mark.parametrize("name", ["gpt2_byte_level", "llama_llama_bpe", "llama3_llama_bpe", "qwen2_qwen2_bpe",
                                  "smollm_smollm_bpe"])
def test_generate_from_gguf_matches_the_directory(host, models_with_tokenizer, convert, tmp_path, name):
    host.require_command("generate")
    d = models_with_tokenizer[name]
    path = convert(d, tmp_path / "m.gguf")
    args = ["-p", "In the beginning God created", "--max-tokens", 12, "--greedy", "--print-ids"]
    p = host.run("generate", path, *args, check=False)
    if b"has no tokenizer.json" in p.stderr:
        pytest.skip("generate reads tokenizer.json from a directory, not the model's side files (host/cli/cmd_model.c)")
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    want = host.run("generate", d, *args).stdout
    assert json.loads(p.stdout)["ids"] == json.loads(want)["ids"]


# ---- llama-cpp-python (optional: tests/interop/requirements-llama-cpp.txt) ----

# llama.cpp needs a vocabulary; llama3_llama_bpe's rope scaling reaches it as rope_freqs.weight
@pytest.mark.parametrize("name", ["llama_llama_bpe", "llama3_llama_bpe", "qwen2_qwen2_bpe", "smollm_smollm_bpe"])
def test_llama_cpp_python_logits_match_transformers(models_with_tokenizer, convert, tmp_path, name):
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (optional: pip install -r "
        "tests/interop/requirements-llama-cpp.txt; it builds llama.cpp from source)")
    path = convert(models_with_tokenizer[name], tmp_path / "m.gguf")
    # F32 KV cache (llama.cpp defaults to F16, which alone moves logits by ~1e-2)
    llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=128, n_threads=2, verbose=False,
                          type_k=0, type_v=0)
    llm.eval(IDS)
    got = np.array(llm.scores[: len(IDS)], dtype=np.float32)
    with torch.no_grad():
        ref = load_reference_model(models_with_tokenizer[name])(torch.tensor([IDS])).logits[0].numpy()
    assert np.abs(got - ref).max() <= LOGITS_ATOL


# text llama.cpp's pre-tokenizers and tokenizers' agree on (no NFC-changed marks: llama.cpp does not
# normalize): verses with references and numbers, contractions, runs of spaces and newlines
LLAMA_CPP_TEXT = ("Ge1:1 In the beginning God created the heaven and the earth.\n"
                  "Ex12:40 Now the sojourning ... was four hundred and thirty years (430), in 1611 or 2024!\n"
                  "I'm sure they'll say it's fine;   don't you think?\n\n\n  12345678 3.14159 x1y22z333 caf\u00e9")


@pytest.mark.parametrize("name", ["gpt2_byte_level", "llama3_llama_bpe", "qwen2_qwen2_bpe", "smollm_smollm_bpe"])
def test_llama_cpp_python_tokenizes_our_gguf_as_tokenizers_does(models_with_tokenizer, convert, tmp_path, name):
    """The vocabulary, merges and tokenizer.ggml.pre we write make llama.cpp cut and merge the
    text as the checkpoint's own tokenizer.json does (a wrong pre, e.g. gpt-2 for SmolLM's,
    merges digits that tokenizers keeps apart)."""
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (optional: pip install -r "
        "tests/interop/requirements-llama-cpp.txt; it builds llama.cpp from source)")
    from tokenizers import Tokenizer

    # Where the pre-tokenizer isolates digits (Qwen2's, SmolLM's), two merges across digits in
    # place of the last two learned ones, "1 2" and "Ġ 1", must never apply; a GGUF whose pre
    # lets digits form one word (gpt-2's) would apply them
    src = models_with_tokenizer[name]
    d = tmp_path / "model"
    d.mkdir()
    for f in src.iterdir():
        if f.name != "tokenizer.json" or name not in ("qwen2_qwen2_bpe", "smollm_smollm_bpe"):
            (d / f.name).symlink_to(f)
    if not (d / "tokenizer.json").exists():
        _add_merges_across_digits(src / "tokenizer.json", d / "tokenizer.json")
    llm = llama_cpp.Llama(model_path=str(convert(d, tmp_path / "m.gguf")), vocab_only=True, verbose=False)
    got = llm.tokenize(LLAMA_CPP_TEXT.encode(), add_bos=False, special=False)
    want = Tokenizer.from_file(str(d / "tokenizer.json")).encode(LLAMA_CPP_TEXT, add_special_tokens=False).ids
    assert got == want


@pytest.mark.parametrize("pattern,pre", [("tekken", "tekken"), ("o200k", "gpt-4o")])
def test_case_aware_split_goes_to_gguf_as_llama_cpp_names_it(host, models_with_tokenizer, convert, tmp_path, pattern,
                                                             pre):
    """Mistral's tekken and GPT-4o's o200k Split regexes: written as llama.cpp's pre-tokenizer
    names, read back into the same regex (generation from the GGUF equals the directory's, on a
    prompt whose cuts differ from Llama 3's), and llama.cpp cuts text without marks as tokenizers
    does (its tekken regex is a rewrite that treats marks its own way)."""
    from conftest import LLAMA3_SPLIT, O200K_SPLIT, TEKKEN_SPLIT
    from tokenizers import Tokenizer

    src = models_with_tokenizer["llama3_llama_bpe"]
    d = tmp_path / "model"
    d.mkdir()
    for f in src.iterdir():
        if f.name != "tokenizer.json":
            (d / f.name).symlink_to(f)
    tj = json.loads((src / "tokenizer.json").read_text())
    split = tj["pre_tokenizer"]["pretokenizers"][0]
    assert split["pattern"]["Regex"] == LLAMA3_SPLIT
    split["pattern"]["Regex"] = TEKKEN_SPLIT if pattern == "tekken" else O200K_SPLIT
    (d / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
    path = convert(d, tmp_path / "m.gguf")
    assert field(gguf.GGUFReader(path), "tokenizer.ggml.pre") == pre
    prompt = "IN THE Beginning GodCreated the HEAVEN'S and 1611 earths"
    args = ["-p", prompt, "--max-tokens", 8, "--greedy", "--print-ids"]
    p = host.run("generate", path, *args, check=False)
    if b"has no tokenizer.json" in p.stderr:
        pytest.skip("generate reads tokenizer.json from a directory, not the model's side files (host/cli/cmd_model.c)")
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    assert json.loads(p.stdout)["ids"] == json.loads(host.run("generate", d, *args).stdout)["ids"]
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (optional: pip install -r "
        "tests/interop/requirements-llama-cpp.txt; it builds llama.cpp from source)")
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    text = prompt + " HELLO World iPhone McDonald CamelCaseWORDS ABCdef aBC path/to/file\n/ x//\r\n//b"
    want = Tokenizer.from_file(str(d / "tokenizer.json")).encode(text, add_special_tokens=False).ids
    assert llm.tokenize(text.encode(), add_bos=False, special=False) == want


def _add_merges_across_digits(src, dst):
    tj = json.loads(src.read_text())
    vocab, merges = tj["model"]["vocab"], tj["model"]["merges"]
    as_pair = (lambda m: m) if isinstance(merges[0], list) else (lambda m: " ".join(m))
    by_id = {i: t for t, i in vocab.items()}
    top = max(vocab.values())
    for new_id, (a, b) in zip((top - 1, top), (("1", "2"), ("\u0120", "1"))):
        del vocab[by_id[new_id]]
        vocab[a + b] = new_id
    merges[-2:] = [as_pair([a, b]) for a, b in (("1", "2"), ("\u0120", "1"))]
    dst.write_text(json.dumps(tj, ensure_ascii=False))


@pytest.mark.parametrize("fmt", ["q8_0", "q4_0"])
def test_llama_cpp_python_runs_our_quantized_gguf_as_we_do(host, models_with_tokenizer, tmp_path, fmt):
    """quantize.rtn into a ggml block type, then quantize.gguf: llama.cpp loads the file and its
    logits agree with ours on the same quantized model (token by token: both quantize the
    activations per 32 for these dot products) within half of what quantizing the weights moved
    them from the f32 model."""
    llama_cpp = pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (optional: pip install -r "
        "tests/interop/requirements-llama-cpp.txt; it builds llama.cpp from source)")
    if not host.has_stage("quantize.gguf"):
        pytest.skip("no quantize.gguf stage in this build")
    src = models_with_tokenizer["llama_llama_bpe"]
    cfg = tmp_path / "q.yaml"
    cfg.write_text(f"name: q\nmodel: {src}\nstages:\n"
                   # down_proj reads the MLP's 176 features, not a whole number of 32-blocks
                   f"  - {{id: q, uses: quantize.rtn, with: {{format: {fmt}, exclude: ['*down_proj*', "
                   "'*embed_tokens*', '*lm_head*']}}\n"
                   "  - {id: g, uses: quantize.gguf, inputs: {model: q}}\n"
                   "outputs: [q]\n")
    run = tmp_path / "run"
    host.run("-q", "run", cfg, "--out", run)
    # token by token: our decode path quantizes activations per 32 with ggml's Q8_0 rule, as
    # llama.cpp's CPU dot products do for these weight types
    host.run("forward", run / "q" / "model", "--ids", ",".join(map(str, IDS)), "--out", tmp_path / "ours.bin",
             "--kv-cache")
    ours = np.fromfile(tmp_path / "ours.bin", dtype="<f4").reshape(len(IDS), -1)
    # llama.cpp token by token too (batches of 1): a batch takes other kernels on some CPUs; on
    # an AMX Xeon (Emerald Rapids) its batched q4_0 logits were 10.3 from ours and from its own
    # one-token ones, where token by token they agree as below
    llm = llama_cpp.Llama(model_path=str(run / "g" / "model.gguf"), logits_all=True, n_ctx=128, n_threads=2,
                          verbose=False, type_k=0, type_v=0, n_batch=1, n_ubatch=1)
    llm.eval(IDS)
    theirs = np.array(llm.scores[: len(IDS)], dtype=np.float32)
    with torch.no_grad():
        f32 = load_reference_model(src)(torch.tensor([IDS])).logits[0].numpy()
    quant_err = np.abs(ours - f32).max()  # what quantizing the weights moved
    err = np.abs(theirs - ours).max()
    assert quant_err > 1e-4, "the quantized model should differ from the f32 one"
    # Measured (llama-cpp-python 0.3.16): q8_0 0.147 of the weights' 0.51, q4_0 0.176 of 4.26 (these
    # random-init logits are large). The two differ in how they round the activations too: ggml
    # stores each activation block's scale as f16 (block_q8_0), ours keeps it f32.
    assert err <= 0.5 * quant_err, f"{fmt}: llama.cpp vs ours {err:.3g} (the weights' quantization moved {quant_err:.3g})"
