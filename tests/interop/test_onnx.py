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


def test_a_quantized_model_is_refused_naming_the_tensor(host, models, tmp_path):
    if not host.has_stage("onnx.export"):
        pytest.skip("no onnx plugin in this build")
    p, out = export(host, models["llama_gqa"], tmp_path,
                    stages=["{id: q, uses: quantize.rtn, with: {format: q8_0, include: ['*q_proj*']}}",
                            "{id: onnx, uses: onnx.export, inputs: {model: q}}"])
    err = p.stderr.decode()
    assert p.returncode != 0
    assert "'model.layers.0.self_attn.q_proj.weight' is q8_0: the ONNX export takes f32, f16 or bf16 weights" in err, err
    assert not (out / "onnx").exists()


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
