"""llmopt's training engine against torch autograd on the same checkpoints: the gradient of every
parameter of transformers' loss (mean cross-entropy over the shifted labels), ten AdamW steps
against torch.optim.AdamW, global-norm gradient clipping against torch.nn.utils.clip_grad_norm_,
gradient accumulation against one big batch, and LoRA adapter gradients against a hand-made
torch LoRA on the same adapter weights. The C side is <build>/tests/unit/train_driver (tests/interop/train_driver.c).
Errors are norm-wise per tensor: ||ours - torch|| / ||torch||."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from conftest import MODEL_SPECS, load_reference_model

GRAD_RTOL = 1e-4
ADAMW_RTOL = 1e-5
SEQ = 24
BATCH = 2


@pytest.fixture(scope="session")
def driver(host_exe):
    exe = Path(host_exe).parent.parent / "tests" / "unit" / "train_driver"
    if not os.access(exe, os.X_OK):
        pytest.skip(f"no train driver at {exe}")
    return exe


@pytest.fixture(scope="session")
def train_models(models, half_models):
    """The shared tiny models (llama_bias among them) and their half-precision saves."""
    return dict(models, **half_models)


def token_batch(vocab, seed=0, batch=BATCH):
    ids = np.random.default_rng(seed).integers(0, vocab, size=(batch, SEQ))
    # transformers shifts labels inside the model: position t predicts ids[t + 1]
    targets = np.concatenate([ids[:, 1:], np.full((batch, 1), -100)], axis=1)
    targets[0, 5] = -100  # an ignored target inside a sequence
    return ids, targets


def run_driver(driver, plugin_dir, model_dir, out, ids, targets, **job):
    job = dict(model=str(model_dir), out=str(out), inputs=ids.tolist(), targets=targets.tolist(), threads=2, **job)
    p = subprocess.run([str(driver), str(plugin_dir)], input=json.dumps(job).encode(), capture_output=True, timeout=600)
    if p.returncode != 0:
        pytest.fail(f"train_driver exited {p.returncode}: {p.stderr.decode(errors='replace')[-2000:]}")
    return json.loads((out / "result.json").read_text())


def torch_loss(model, ids, targets):
    labels = torch.tensor(ids)
    # transformers' labels are the inputs; our ignored target at [0, 5] is label [0, 6]
    labels[0, 6] = -100
    return model(torch.tensor(ids), labels=labels).loss


def rel_err(ours, ref):
    return float(np.linalg.norm(ours - ref) / max(np.linalg.norm(ref), 1e-30))


@pytest.mark.parametrize("name", ["gpt2", "gpt2_scaled_by_layer", "llama_gqa", "llama_tied_odd_heads", "llama_rope_linear",
                                  "llama_rope_llama3", "llama_bias", "qwen2", "gpt2_bfloat16", "llama_gqa_float16"])
def test_gradients_of_every_parameter_match_torch_autograd(driver, plugin_dir, train_models, tmp_path, name):
    model = load_reference_model(train_models[name])
    ids, targets = token_batch(model.config.vocab_size)
    run_driver(driver, plugin_dir, train_models[name], tmp_path, ids, targets, steps=0, grads=True)
    ours = load_file(tmp_path / "grads" / "model.safetensors")
    model.zero_grad()
    torch_loss(model, ids, targets).backward()
    params = dict(model.named_parameters())
    assert set(ours) == set(params), f"ours {sorted(set(ours) ^ set(params))} differ"
    errs = {n: rel_err(ours[n], p.grad.numpy()) for n, p in params.items()}
    worst = max(errs, key=errs.get)
    print(f"{name}: max gradient error {errs[worst]:.3g} ({worst})")
    assert errs[worst] < GRAD_RTOL, f"{worst}: ||ours - torch|| / ||torch|| = {errs[worst]:.3g}"


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
def test_gradient_checkpointing_gives_torch_autograd_gradients_and_the_same_bits(driver, plugin_dir, train_models,
                                                                                 tmp_path, name):
    # recompute: each layer's activations again in the backward from its saved input
    model = load_reference_model(train_models[name])
    ids, targets = token_batch(model.config.vocab_size, seed=5)
    run_driver(driver, plugin_dir, train_models[name], tmp_path / "saved", ids, targets, steps=0, grads=True)
    run_driver(driver, plugin_dir, train_models[name], tmp_path / "recomputed", ids, targets, steps=0, grads=True,
               recompute=1)
    saved = load_file(tmp_path / "saved" / "grads" / "model.safetensors")
    ours = load_file(tmp_path / "recomputed" / "grads" / "model.safetensors")
    model.zero_grad()
    torch_loss(model, ids, targets).backward()
    params = dict(model.named_parameters())
    assert set(ours) == set(params)
    for n, p in params.items():
        assert rel_err(ours[n], p.grad.numpy()) < GRAD_RTOL, n
        assert np.array_equal(ours[n], saved[n]), f"{n}: recomputing changed the gradient"


@pytest.mark.parametrize("name", ["gpt2_bfloat16", "llama_gqa_bfloat16"])
def test_medium_precision_gradients_are_closer_to_f32_than_torch_in_bfloat16(driver, plugin_dir, host, train_models,
                                                                              tmp_path, name):
    # matmul_precision medium rounds both sides of the forward matmuls and of dx to bf16 (weight
    # gradients stay exact). The reference is torch autograd in float32 on the checkpoint's
    # values; the peer, autograd of the model in bfloat16. Every parameter's gradient must be
    # nearer the reference than the peer's worst, and, where the kernel says it rounds, off
    # highest's (the bf16 path ran).
    model = load_reference_model(train_models[name])
    ids, targets = token_batch(model.config.vocab_size, seed=3)
    run_driver(driver, plugin_dir, train_models[name], tmp_path / "medium", ids, targets, steps=0, grads=True,
               matmul_precision="medium")
    run_driver(driver, plugin_dir, train_models[name], tmp_path / "highest", ids, targets, steps=0, grads=True)
    medium = load_file(tmp_path / "medium" / "grads" / "model.safetensors")
    highest = load_file(tmp_path / "highest" / "grads" / "model.safetensors")
    model.zero_grad()
    torch_loss(model, ids, targets).backward()
    ref = {n: p.grad.numpy().copy() for n, p in model.named_parameters()}
    peer_model = load_reference_model(train_models[name]).to(torch.bfloat16)
    torch_loss(peer_model, ids, targets).backward()
    peer = {n: p.grad.float().numpy() for n, p in peer_model.named_parameters()}
    err_medium = {n: rel_err(medium[n], ref[n]) for n in ref}
    err_peer = {n: rel_err(peer[n], ref[n]) for n in ref}
    worst_m, worst_p = max(err_medium, key=err_medium.get), max(err_peer, key=err_peer.get)
    rounded = host.bf16_gemm("f32")
    print(f"{name}: worst gradient error vs f32 autograd: llmopt medium {err_medium[worst_m]:.3g} ({worst_m}, "
          f"{'bf16 GEMM' if rounded else 'computed as highest'}), torch bfloat16 {err_peer[worst_p]:.3g} ({worst_p})")
    assert err_medium[worst_m] < err_peer[worst_p], (worst_m, err_medium[worst_m], worst_p, err_peer[worst_p])
    off = max(float(np.abs(medium[n] - highest[n]).max()) for n in ref)
    if rounded:
        assert off > 0, "medium gave highest's gradients: the bf16 GEMM did not run"
    else:
        assert off == 0


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa", "llama_bias"])
def test_ten_adamw_steps_end_at_torch_adamw_weights(driver, plugin_dir, train_models, tmp_path, name):
    model = load_reference_model(train_models[name])
    ids, targets = token_batch(model.config.vocab_size, seed=1)
    res = run_driver(driver, plugin_dir, train_models[name], tmp_path, ids, targets, steps=10, lr=1e-3,
                     weight_decay=0.01, betas=[0.9, 0.999], eps=1e-8, clip=0, grads=False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = torch_loss(model, ids, targets)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    np.testing.assert_allclose(res["losses"], losses, rtol=1e-4)
    ours = load_file(tmp_path / "params" / "model.safetensors")
    errs = {}
    for n, p in model.named_parameters():
        o, t = ours[n].copy(), p.detach().numpy().copy()
        key = key_bias_slice(n, model.config)
        if key is not None:
            # Without rope the key bias adds q.b_k to every score of a query row, which softmax
            # ignores: its true gradient is exactly 0 and both sides see only rounding noise,
            # which AdamW normalises into steps of up to lr. Bounded there; compared elsewhere.
            assert np.abs(o[key] - t[key]).max() <= 2 * 10 * 1e-3 + 1e-6
            o[key], t[key] = 0, 0
        errs[n] = rel_err(o, t)
    worst = max(errs, key=errs.get)
    print(f"{name}: max weight error after 10 AdamW steps {errs[worst]:.3g} ({worst})")
    assert errs[worst] < ADAMW_RTOL, f"{worst}: relative error {errs[worst]:.3g}"


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
def test_ten_adamw_8bit_steps_stay_near_torch_adamw(driver, plugin_dir, train_models, tmp_path, name):
    """optimizer_bits 8 with every tensor's moments in 8 bits (min_8bit 1): the weights move as
    torch.optim.AdamW moves them, to the rounding of the moments: per tensor the 8-bit move is
    within 5% of torch's (norm-wise), and the losses within 1e-3 relative."""
    model = load_reference_model(train_models[name])
    w0 = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    ids, targets = token_batch(model.config.vocab_size, seed=1)
    res = run_driver(driver, plugin_dir, train_models[name], tmp_path, ids, targets, steps=10, lr=1e-3,
                     weight_decay=0.01, betas=[0.9, 0.999], eps=1e-8, clip=0, grads=False, optimizer_bits=8,
                     min_8bit=1)
    losses, _ = torch_adamw_run(model, ids, targets, 10, 1e-3, 0)
    np.testing.assert_allclose(res["losses"], losses, rtol=1e-3)
    ours = load_file(tmp_path / "params" / "model.safetensors")
    errs = {}
    for n, p in model.named_parameters():
        d_ours, d_torch = ours[n] - w0[n], p.detach().numpy() - w0[n]
        key = key_bias_slice(n, model.config)
        if key is not None:  # true gradient 0: rounding noise on both sides (see above)
            d_ours[key], d_torch[key] = 0, 0
        errs[n] = rel_err(d_ours, d_torch)
    worst = max(errs, key=errs.get)
    print(f"{name}: after 10 steps with 8-bit moments the worst tensor's move is {errs[worst]:.3g} off torch's "
          f"({worst}); median {np.median(list(errs.values())):.3g}")
    assert errs[worst] < 0.05, f"{worst}: the move is {errs[worst]:.3g} off torch's"
    # f32 moments end within 1e-5 of torch (the test above): these must show the rounding
    assert np.median(list(errs.values())) > 1e-3, "the moves are f32 AdamW's: were the moments 8-bit?"


def key_bias_slice(param, cfg):
    """GPT-2's key bias in c_attn (true gradient 0), or None. (With rope, Llama's k_proj bias
    rotates differently at each position and has a real gradient.)"""
    if param.endswith("attn.c_attn.bias"):
        return slice(cfg.n_embd, 2 * cfg.n_embd)
    return None


# The half checkpoints have half norm gains and biases, which stay frozen under LoRA and must reach
# the f32 kernels as f32 copies.
LORA_TARGETS = {"gpt2": ["c_attn", "c_fc"], "llama_gqa": ["q_proj", "v_proj", "down_proj"],
                "gpt2_float16": ["c_attn", "c_fc"], "llama_gqa_bfloat16": ["q_proj", "v_proj", "down_proj"]}


@pytest.mark.parametrize("name", list(LORA_TARGETS))
def test_lora_gradients_match_a_torch_lora_on_the_same_adapters(driver, plugin_dir, train_models, tmp_path, name):
    model = load_reference_model(train_models[name])
    for p in model.parameters():
        p.requires_grad_(False)
    ids, targets = token_batch(model.config.vocab_size, seed=2)
    rank, alpha = 4, 8.0
    # one step first, so B is no longer zero and dA is not trivially zero
    run_driver(driver, plugin_dir, train_models[name], tmp_path, ids, targets, steps=1, lr=1e-2, grads=True,
               lora={"rank": rank, "alpha": alpha, "targets": LORA_TARGETS[name]})
    adapters = load_file(tmp_path / "params" / "model.safetensors")
    grads = load_file(tmp_path / "grads" / "model.safetensors")
    weights = {}
    for mod_name, mod in model.named_modules():
        full = f"base_model.model.{mod_name}"
        if f"{full}.lora_A.weight" not in adapters:
            continue
        A = torch.tensor(adapters[f"{full}.lora_A.weight"], requires_grad=True)
        B = torch.tensor(adapters[f"{full}.lora_B.weight"], requires_grad=True)
        weights[f"{full}.lora_A.weight"], weights[f"{full}.lora_B.weight"] = A, B
        # PEFT's LoRA: y = base(x) + (alpha / r) * (x A^T) B^T (GPT-2's Conv1D too: A is [r, in])
        mod.register_forward_hook(lambda m, inp, out, A=A, B=B: out + (alpha / rank) * (inp[0] @ A.T) @ B.T)
    assert set(weights) == set(adapters) and len(weights) > 0
    torch_loss(model, ids, targets).backward()
    errs = {n: rel_err(grads[n], w.grad.numpy()) for n, w in weights.items()}
    worst = max(errs, key=errs.get)
    print(f"{name}: max LoRA gradient error {errs[worst]:.3g} ({worst})")
    assert errs[worst] < GRAD_RTOL, f"{worst}: relative error {errs[worst]:.3g}"


def torch_adamw_run(model, ids, targets, steps, lr, clip):
    """steps of AdamW on the whole batch, clipping with clip_grad_norm_ when clip > 0: (losses, norms)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    losses, norms = [], []
    for _ in range(steps):
        opt.zero_grad()
        loss = torch_loss(model, ids, targets)
        loss.backward()
        if clip > 0:
            norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip)))
        opt.step()
        losses.append(loss.item())
    return losses, norms


def weight_errors(ours, model):
    errs = {}
    for n, p in model.named_parameters():
        o, t = ours[n].copy(), p.detach().numpy().copy()
        key = key_bias_slice(n, model.config)
        if key is not None:  # true gradient 0 (see test_ten_adamw_steps_end_at_torch_adamw_weights)
            o[key], t[key] = 0, 0
        errs[n] = rel_err(o, t)
    return errs


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
def test_gradient_clipping_by_global_norm_matches_torch_clip_grad_norm(driver, plugin_dir, train_models, tmp_path,
                                                                      name):
    ids, targets = token_batch(load_reference_model(train_models[name]).config.vocab_size, seed=3)
    steps, lr = 5, 1e-3
    # the global norm of the first step's gradient, to pick a clip that binds at every step
    first = run_driver(driver, plugin_dir, train_models[name], tmp_path / "probe", ids, targets, steps=1, lr=0.0,
                       clip=0, grads=False)
    clip = first["norms"][0] / 4
    res = run_driver(driver, plugin_dir, train_models[name], tmp_path / "clipped", ids, targets, steps=steps, lr=lr,
                     weight_decay=0.01, betas=[0.9, 0.999], eps=1e-8, clip=clip, grads=False)
    model = load_reference_model(train_models[name])
    losses, norms = torch_adamw_run(model, ids, targets, steps, lr, clip)
    # the norm each step reports is the pre-clip total norm clip_grad_norm_ returns
    np.testing.assert_allclose(res["norms"], norms, rtol=1e-4)
    assert min(norms) > clip, "the clip never binds: the comparison would not test clipping"
    np.testing.assert_allclose(res["losses"], losses, rtol=1e-4)
    errs = weight_errors(load_file(tmp_path / "clipped" / "params" / "model.safetensors"), model)
    worst = max(errs, key=errs.get)
    # and the clipped run is measurably not the unclipped one, so the tolerance can tell them apart
    unclipped = load_reference_model(train_models[name])
    torch_adamw_run(unclipped, ids, targets, steps, lr, 0)
    apart = weight_errors({n: p.detach().numpy() for n, p in unclipped.named_parameters()}, model)
    print(f"{name}: clip {clip:.4g}, max weight error {errs[worst]:.3g} ({worst}); clipped vs unclipped "
          f"{max(apart.values()):.3g}")
    assert errs[worst] < ADAMW_RTOL, f"{worst}: relative error {errs[worst]:.3g}"
    assert max(apart.values()) > 10 * ADAMW_RTOL


@pytest.mark.parametrize("name", ["gpt2", "llama_gqa"])
def test_gradient_accumulation_equals_one_big_batch(driver, plugin_dir, train_models, tmp_path, name):
    """Four sequences as one batch, as 2 x 2 and as 4 x 1 micro-batches: the same gradients
    (the mean over every target of the step, whatever micro-batch holds it; sequence 0 has one
    target fewer) and the same weights after three AdamW steps, which equal torch's on the batch."""
    model = load_reference_model(train_models[name])
    ids, targets = token_batch(model.config.vocab_size, seed=4, batch=4)
    grads, params = {}, {}
    for accum in (1, 2, 4):
        out = tmp_path / f"accum{accum}"
        run_driver(driver, plugin_dir, train_models[name], out, ids, targets, steps=0, grads=True, accum=accum)
        grads[accum] = load_file(out / "grads" / "model.safetensors")
        out = tmp_path / f"steps{accum}"
        res = run_driver(driver, plugin_dir, train_models[name], out, ids, targets, steps=3, lr=1e-3, clip=1.0,
                         grads=False, accum=accum)
        params[accum] = (load_file(out / "params" / "model.safetensors"), res)
    for accum in (2, 4):
        errs = {n: rel_err(grads[accum][n], grads[1][n]) for n in grads[1]}
        worst = max(errs, key=errs.get)
        assert errs[worst] < 1e-5, f"accum {accum}: gradient of {worst} differs by {errs[worst]:.3g}"
        np.testing.assert_allclose(params[accum][1]["losses"], params[1][1]["losses"], rtol=1e-6)
        np.testing.assert_allclose(params[accum][1]["norms"], params[1][1]["norms"], rtol=1e-5)
    model.zero_grad()
    torch_loss(model, ids, targets).backward()
    errs = {n: rel_err(grads[2][n], p.grad.numpy()) for n, p in model.named_parameters()}
    assert max(errs.values()) < GRAD_RTOL, max(errs.items(), key=lambda kv: kv[1])
    losses, _ = torch_adamw_run(model, ids, targets, 3, 1e-3, 1.0)
    np.testing.assert_allclose(params[4][1]["losses"], losses, rtol=1e-4)
    errs = weight_errors(params[4][0], model)
    worst = max(errs, key=errs.get)
    assert errs[worst] < ADAMW_RTOL, f"{worst}: relative error {errs[worst]:.3g} after 3 steps of 4 x 1"
