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
