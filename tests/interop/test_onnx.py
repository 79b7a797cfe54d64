"""onnx.export against transformers through onnxruntime: every reference model of conftest
(GPT-2 with its attention-scale variants, GQA Llama, tied odd heads, linear and llama3 rope
scaling, Qwen2, Llama with biases) and the half-precision checkpoints, exported by llmopt and
run by onnxruntime's CPU provider, give transformers' float32 logits within 1e-4 at every
position, for two sequences of different tokens and for other batch and sequence sizes than
any the graph was made with. A quantized model is refused with a clear error, naming the tensor."""

import json

import numpy as np
import pytest
import torch

from conftest import HALF_MODEL_SPECS, MODEL_SPECS, load_reference_model

ort = pytest.importorskip("onnxruntime")


def export(host, model_dir, tmp_path, opset=17, stages=None):
    cfg = tmp_path / "onnx.yaml"
    body = stages or [f"{{id: onnx, uses: onnx.export, with: {{opset: {opset}}}}}"]
    cfg.write_text(f"name: onnx\nmodel: {model_dir}\nstages:\n" + "".join(f"  - {s}\n" for s in body))
    out = tmp_path / "run"
    p = host.run("-q", "run", cfg, "--out", out, check=False)
    return p, out


def ort_logits(path, ids):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in s.get_inputs()] == ["input_ids"] and [o.name for o in s.get_outputs()] == ["logits"]
    return s.run(["logits"], {"input_ids": ids})[0]


def reference_logits(model_dir, ids):
    with torch.no_grad():
        return load_reference_model(model_dir)(torch.tensor(ids)).logits.float().numpy()


def check(host, model_dir, tmp_path, opset=17):
    if not host.has_stage("onnx.export"):
        pytest.skip("no onnx plugin in this build (protoc-c, libprotobuf-c, libonnx-dev)")
    p, out = export(host, model_dir, tmp_path, opset)
    assert p.returncode == 0, p.stderr.decode()
    vocab = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    rng = np.random.default_rng(0)
    for shape in [(2, 37), (1, 1), (3, 64)]:
        ids = rng.integers(0, vocab, size=shape).astype(np.int64)
        got, want = ort_logits(out / "onnx" / "model.onnx", ids), reference_logits(model_dir, ids)
        assert got.shape == want.shape
        err = np.abs(got - want).max()
        assert err < 1e-4, (shape, err)


@pytest.mark.parametrize("name", list(MODEL_SPECS))
def test_onnxruntime_gives_transformers_logits(host, models, tmp_path, name):
    check(host, models[name], tmp_path)


@pytest.mark.parametrize("name", list(HALF_MODEL_SPECS))
def test_half_checkpoints_export_as_float32(host, half_models, tmp_path, name):
    check(host, half_models[name], tmp_path)


@pytest.mark.parametrize("opset", [18, 21])
def test_later_opsets(host, models, tmp_path, opset):
    """opset 18 moved ReduceMean's axes (RMSNorm) from an attribute to an input"""
    check(host, models["llama_gqa"], tmp_path, opset)


def dequantize(dtype, rows, shape):
    """f32 [N, K] of a quantized checkpoint tensor: ggml's Q4_0/Q8_0 through the gguf package,
    llmopt's GQ by host/runtime/quant.h's rules (per group: f16 scale, f16 zero when asym, codes
    little-endian at bit i * bits; w = scale * (q - zero), zero = 2^(bits-1) when sym)"""
    import re as _re
    if dtype in ("q4_0", "q8_0"):
        from gguf import GGMLQuantizationType as QT
        from gguf.quants import dequantize as gg
        return gg(rows, QT.Q4_0 if dtype == "q4_0" else QT.Q8_0).astype(np.float32)
    bits, group, kind = _re.fullmatch(r"gq(\d+)g(\d+)([as])", dtype).groups()
    bits, group, asym = int(bits), int(group), kind == "a"
    head = 4 if asym else 2
    blocks = rows.reshape(-1, head + group * bits // 8)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)[:, 0]
    zero = blocks[:, 2:4].copy().view(np.float16).astype(np.float32)[:, 0] if asym else np.full(len(blocks), 2.0 ** (bits - 1))
    bitstream = np.unpackbits(blocks[:, head:], axis=1, bitorder="little").reshape(len(blocks), group, bits)
    q = (bitstream * (1 << np.arange(bits))).sum(axis=2)
    return ((q - zero[:, None]) * scale[:, None]).astype(np.float32).reshape(shape[0], -1)


def dequantized_model(saved):
    """transformers' model of an llmopt quantized checkpoint, its weights dequantized (GPT-2's
    quantized Conv1D weights are stored [out, in], Conv1D takes [in, out])"""
    import transformers
    from conftest import read_safetensors
    cfg = json.loads((saved / "config.json").read_text())
    dtypes = cfg["quantization_config"]["tensor_dtypes"]
    gpt2 = cfg["model_type"] == "gpt2"
    sd = {}
    for name, (dt, shape, raw) in read_safetensors(saved / "model.safetensors").items():
        if name in dtypes:
            w = dequantize(dtypes[name], np.frombuffer(raw, np.uint8).reshape(shape), shape)
            sd[name] = torch.from_numpy((w.T if gpt2 else w).copy())
        else:
            sd[name] = torch.from_numpy(np.frombuffer(raw, np.float32).reshape(shape).copy())
    c = {k: v for k, v in cfg.items() if k not in ("quantization_config", "model_type", "architectures",
                                                    "llmopt_provenance", "transformers_version", "torch_dtype")}
    arch = cfg["architectures"][0]
    conf = getattr(transformers, "GPT2Config" if gpt2 else "LlamaConfig")(**c)
    model = getattr(transformers, arch)(conf).float().eval()
    missing, unexpected = model.load_state_dict(sd, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}, (missing, unexpected)  # a tied head
    return model


@pytest.mark.parametrize("fmt, matmul_nbits", [
    ("format: gq, bits: 4, group_size: 32, sym: false", True),
    ("format: gq, bits: 4, group_size: 64, sym: true", True),
    ("format: q4_0", True),
    # onnxruntime 1.20's CPU MatMulNBits takes 4-bit codes only: 8-bit weights are dequantized
    ("format: gq, bits: 8, group_size: 32, sym: false", False),
    ("format: q8_0", False),
    ("format: gq, bits: 3, group_size: 32, sym: false", False),  # no MatMulNBits form: dequantized
])
def test_quantized_weights_stay_quantized_as_matmulnbits(host, models, tmp_path, fmt, matmul_nbits):
    """4-bit GQ and Q4_0 weights become onnxruntime's MatMulNBits (com.microsoft)
    with the checkpoint's codes, scales and zero points, so the file is about as small as the
    checkpoint; onnxruntime's logits equal transformers' on the dequantized weights. Other types
    are dequantized to float32 MatMuls. (down_proj's 176 inputs are no whole number of groups.)"""
    if not host.has_stage("onnx.export"):
        pytest.skip("no onnx plugin in this build")
    run_quantized(host, models["llama_gqa"], tmp_path, fmt, matmul_nbits, "['*down_proj*', '*embed*', '*lm_head*']")


def test_quantized_gpt2_stays_quantized_as_matmulnbits(host, models, tmp_path):
    """GPT-2's quantized weights are stored [out, in] (Conv1D's float ones [in, out])"""
    if not host.has_stage("onnx.export"):
        pytest.skip("no onnx plugin in this build")
    run_quantized(host, models["gpt2"], tmp_path, "format: gq, bits: 4, group_size: 32, sym: false", True,
                  "['*wte*', '*wpe*']")


def run_quantized(host, model_dir, tmp_path, fmt, matmul_nbits, exclude):
    cfg = tmp_path / "q.yaml"
    cfg.write_text(f"name: q\nmodel: {model_dir}\nstages:\n"
                   f"  - {{id: q, uses: quantize.rtn, with: {{{fmt}, exclude: {exclude}}}}}\n"
                   "  - {id: onnx, uses: onnx.export, inputs: {model: q}}\n"
                   "  - {id: dense, uses: onnx.export}\noutputs: [q]\n")
    out = tmp_path / "run"
    host.run("-q", "run", cfg, "--out", out)
    path = out / "onnx" / "model.onnx"
    assert (b"MatMulNBits" in path.read_bytes()) == matmul_nbits
    if matmul_nbits:
        assert path.stat().st_size < 0.6 * (out / "dense" / "model.onnx").stat().st_size
    ids = np.random.default_rng(5).integers(0, 300, size=(2, 19)).astype(np.int64)
    with torch.no_grad():
        want = dequantized_model(out / "q" / "model")(torch.tensor(ids)).logits.numpy()
    assert np.abs(ort_logits(path, ids) - want).max() < 1e-4


def ort_greedy(path, prompt, n):
    """greedy decoding through the kv_cache graph: the prompt, then one token a step with the
    present keys and values fed back; (tokens, the last position's logits of every step)"""
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    past = {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32) for i in s.get_inputs()
            if i.name.startswith("past_key_values.")}
    assert len(past) % 2 == 0 and past
    outs = [o.name for o in s.get_outputs()]
    assert outs[0] == "logits" and sorted(outs[1:]) == sorted(n.replace("past_key_values", "present") for n in past)
    ids, tokens, steps = np.array([prompt], np.int64), [], []
    for _ in range(n):
        res = dict(zip(outs, s.run(outs, {"input_ids": ids, **past})))
        steps.append(res["logits"][0, -1])
        tokens.append(int(res["logits"][0, -1].argmax()))
        past = {k: res[k.replace("past_key_values", "present")] for k in past}
        ids = np.array([[tokens[-1]]], np.int64)
    return tokens, steps


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa", "llama_rope_llama3", "qwen2"])
def test_kv_cache_graph_decodes_as_transformers_generate(host, models, tmp_path, name):
    """kv_cache: the prompt in one call, then a token a step: the tokens are transformers'
    greedy generate()'s, and each step's logits those of the whole sequence run at once"""
    if not host.has_stage("onnx.export"):
        pytest.skip("no onnx plugin in this build")
    p, out = export(host, models[name], tmp_path, stages=["{id: onnx, uses: onnx.export, with: {kv_cache: true}}"])
    assert p.returncode == 0, p.stderr.decode()
    vocab = json.loads((models[name] / "config.json").read_text())["vocab_size"]
    prompt = np.random.default_rng(1).integers(0, vocab, size=9).tolist()
    tokens, steps = ort_greedy(out / "onnx" / "model.onnx", prompt, 12)
    model = load_reference_model(models[name])
    with torch.no_grad():
        ids = torch.tensor([prompt])
        # synced_gpus=False: see test_models.py (torch.distributed.fsdp fails to import on Debian's torch 1.13)
        want = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, min_new_tokens=12,
                              do_sample=False, synced_gpus=False, eos_token_id=None, pad_token_id=0)[0, 9:].tolist()
        full = model(torch.tensor([prompt + tokens[:-1]])).logits[0].numpy()
    assert tokens == want
    for i, logits in enumerate(steps):
        assert np.abs(logits - full[8 + i]).max() < 1e-4, i


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
def test_last_position_logits_are_the_last_row_of_all(host, models, tmp_path, name):
    if not host.has_stage("onnx.export"):
        pytest.skip("no onnx plugin in this build")
    p, out = export(host, models[name], tmp_path, stages=["{id: onnx, uses: onnx.export, with: {logits: last}}"])
    assert p.returncode == 0, p.stderr.decode()
    vocab = json.loads((models[name] / "config.json").read_text())["vocab_size"]
    ids = np.random.default_rng(2).integers(0, vocab, size=(3, 21)).astype(np.int64)
    got = ort_logits(out / "onnx" / "model.onnx", ids)
    want = reference_logits(models[name], ids)[:, -1:, :]
    assert got.shape == (3, 1, vocab) and np.abs(got - want).max() < 1e-4


def test_external_data_holds_the_weights_beside_the_graph(host, models, tmp_path):
    """external_data: always puts every weight in model.onnx.data (ONNX external data, offsets
    4096-aligned), which onnxruntime reads from beside the graph: the same logits; auto (the
    default) keeps a small model in one file."""
    if not host.has_stage("onnx.export"):
        pytest.skip("no onnx plugin in this build")
    p, out = export(host, models["llama_gqa"], tmp_path,
                    stages=["{id: ext, uses: onnx.export, with: {external_data: always}}",
                            "{id: one, uses: onnx.export}"])
    assert p.returncode == 0, p.stderr.decode()
    graph, data = out / "ext" / "model.onnx", out / "ext" / "model.onnx.data"
    assert data.exists() and not (out / "one" / "model.onnx.data").exists()
    assert graph.stat().st_size < 100_000 < data.stat().st_size
    assert not list(out.glob("**/*.tmp"))
    ids = np.random.default_rng(4).integers(0, 300, size=(2, 11)).astype(np.int64)
    np.testing.assert_array_equal(ort_logits(graph, ids), ort_logits(out / "one" / "model.onnx", ids))


def test_int8_compute_sets_matmulnbits_accuracy_level_4(host, models, tmp_path):
    """int8_compute: onnxruntime rounds the activations of the 4-bit layers to int8 per block (as
    llmopt's CPU kernels do), so its logits move by that rounding only (measured: 5% of the
    largest logit on this random-init model, whose logits spread over several units)"""
    if not host.has_stage("onnx.export"):
        pytest.skip("no onnx plugin in this build")
    cfg = tmp_path / "q.yaml"
    cfg.write_text(f"name: q\nmodel: {models['llama_gqa']}\nstages:\n"
                   "  - {id: q, uses: quantize.rtn, with: {format: q4_0, exclude: ['*down_proj*', '*embed*', '*lm_head*']}}\n"
                   "  - {id: f, uses: onnx.export, inputs: {model: q}}\n"
                   "  - {id: i8, uses: onnx.export, inputs: {model: q}, with: {int8_compute: true}}\n")
    out = tmp_path / "run"
    host.run("-q", "run", cfg, "--out", out)
    assert b"accuracy_level" in (out / "i8" / "model.onnx").read_bytes()
    assert b"accuracy_level" not in (out / "f" / "model.onnx").read_bytes()
    ids = np.random.default_rng(6).integers(0, 300, size=(2, 19)).astype(np.int64)
    exact, rounded = ort_logits(out / "f" / "model.onnx", ids), ort_logits(out / "i8" / "model.onnx", ids)
    assert np.abs(exact - rounded).max() < 0.1 * np.abs(exact).max()


def left_padded(vocab, lengths, seed):
    """a batch of random sequences of the given lengths, left-padded with token 0: ids, mask and
    transformers' position ids (cumsum of the mask - 1, padding at 1, as generate() makes them)"""
    rng = np.random.default_rng(seed)
    n = max(lengths)
    ids = np.zeros((len(lengths), n), np.int64)
    mask = np.zeros((len(lengths), n), np.int64)
    for i, k in enumerate(lengths):
        ids[i, n - k:] = rng.integers(1, vocab, size=k)
        mask[i, n - k:] = 1
    pos = np.cumsum(mask, axis=1) - 1
    pos[mask == 0] = 1
    return ids, mask, pos


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa", "qwen2"])
def test_attention_mask_runs_left_padded_batches_as_transformers(host, models, tmp_path, name):
    """attention_mask: a left-padded batch gives transformers' logits (with the same mask and
    position ids) at every real token; with the cache, greedy decoding of the batch gives
    generate()'s tokens for every row"""
    if not host.has_stage("onnx.export"):
        pytest.skip("no onnx plugin in this build")
    p, out = export(host, models[name], tmp_path, stages=[
        "{id: full, uses: onnx.export, with: {attention_mask: true}}",
        "{id: gen, uses: onnx.export, with: {attention_mask: true, kv_cache: true, logits: last}}"])
    assert p.returncode == 0, p.stderr.decode()
    vocab = json.loads((models[name] / "config.json").read_text())["vocab_size"]
    ids, mask, pos = left_padded(vocab, [13, 6, 9], 7)
    model = load_reference_model(models[name])
    with torch.no_grad():
        want = model(torch.tensor(ids), attention_mask=torch.tensor(mask), position_ids=torch.tensor(pos)).logits.numpy()
    s = ort.InferenceSession(str(out / "full" / "model.onnx"), providers=["CPUExecutionProvider"])
    got = s.run(["logits"], {"input_ids": ids, "attention_mask": mask, "position_ids": pos})[0]
    real = mask.astype(bool)
    assert np.abs(got[real] - want[real]).max() < 1e-4

    s = ort.InferenceSession(str(out / "gen" / "model.onnx"), providers=["CPUExecutionProvider"])
    outs = [o.name for o in s.get_outputs()]
    past = {i.name: np.zeros((3, i.shape[1], 0, i.shape[3]), np.float32) for i in s.get_inputs()
            if i.name.startswith("past_key_values.")}
    step_ids, step_mask, step_pos, tokens = ids, mask, pos, []
    for _ in range(8):
        res = dict(zip(outs, s.run(outs, {"input_ids": step_ids, "attention_mask": step_mask, "position_ids": step_pos,
                                          **past})))
        nxt = res["logits"][:, -1].argmax(-1)
        tokens.append(nxt)
        past = {k: res[k.replace("past_key_values", "present")] for k in past}
        step_ids = nxt[:, None].astype(np.int64)
        step_pos = step_pos[:, -1:] + 1
        step_mask = np.concatenate([step_mask, np.ones((3, 1), np.int64)], axis=1)
    with torch.no_grad():
        ref = model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=8, min_new_tokens=8,
                             do_sample=False, synced_gpus=False, eos_token_id=None, pad_token_id=0)[:, ids.shape[1]:]
    assert np.array_equal(np.stack(tokens, axis=1), ref.numpy())


def test_the_tokenizer_files_go_beside_the_graph(host, models_with_tokenizer, tmp_path):
    if not host.has_stage("onnx.export"):
        pytest.skip("no onnx plugin in this build")
    model = models_with_tokenizer["llama_llama_bpe"]
    p, out = export(host, model, tmp_path)
    assert p.returncode == 0, p.stderr.decode()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        assert (out / "onnx" / f).read_bytes() == (model / f).read_bytes(), f
