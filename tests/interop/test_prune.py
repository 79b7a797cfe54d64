"""The prune plugin against the papers' procedures written here in torch, on the inputs that
transformers' own modules see: prune.wanda (Sun et al. 2023) removes the same weights as the
reference scoring |W| * ||X||_2 per output row; prune.sparsegpt (Frantar and Alistarh 2023)
gives the same masks and weights as Algorithm 1 in float64 and a lower layer error than Wanda;
N:M patterns hold in the saved checkpoints, which transformers loads with every zero in
place. Both run with `sequential: false`, so every layer's inputs come from the unpruned model
and can be captured with forward hooks. On our own model (models/kjv-tiny) the papers'
ordering holds: SparseGPT < Wanda < magnitude in KL divergence from the dense model."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import load_reference_model, stage_metrics

ROOT = Path(__file__).resolve().parents[2]
N_SAMPLES, SEQ_LEN, BLOCK = 8, 64, 32


def run(host, tmp_path, model, data, stages, name="p"):
    lines = [f"name: {name}\nmodel: {model}\n", f"data:\n  train: {{path: {data}}}\n", "stages:\n"]
    lines += [f"  - {s}\n" for s in stages]
    ids = [re.search(r"id: (\w+)", s).group(1) for s in stages]
    lines.append(f"outputs: [{', '.join(ids)}]\n")
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text("".join(lines))
    out = tmp_path / f"{name}-run"
    host.run("-q", "run", cfg, "--out", out, "--jobs", "2")
    rep = json.loads((out / "report.json").read_text())
    assert all(s["status"] == "ok" for s in rep["stages"]), [(s["id"], s.get("error")) for s in rep["stages"]]
    return out, stage_metrics(rep, name)


def calibration_ids(model_dir, text):
    """The sequences quantize's and prune's calibration take: the text tokenized without special
    tokens, N_SAMPLES windows of SEQ_LEN spread evenly over it."""
    from tokenizers import Tokenizer
    ids = Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(text, add_special_tokens=False).ids
    step = (len(ids) - SEQ_LEN) // (N_SAMPLES - 1)
    return torch.tensor([ids[i * step:i * step + SEQ_LEN] for i in range(N_SAMPLES)])


def linear_inputs(model, ids):
    """{checkpoint weight name: (W [out, in] float64, X [tokens, in] float64)} for every linear
    layer in the blocks, X captured by forward hooks on the unpruned model."""
    from transformers.pytorch_utils import Conv1D
    found, hooks = {}, []
    for name, mod in model.named_modules():
        if ".h." not in name and ".layers." not in name:
            continue
        if isinstance(mod, (torch.nn.Linear, Conv1D)):
            w = mod.weight.detach().double()
            w = w.t() if isinstance(mod, Conv1D) else w  # Conv1D stores [in, out]
            found[name + ".weight"] = [w, []]
            hooks.append(mod.register_forward_hook(
                lambda m, args, out, key=name + ".weight": found[key][1].append(args[0].detach().double())))
    with torch.no_grad():
        for seq in ids:
            model(seq[None])
    for h in hooks:
        h.remove()
    return {k: (w, torch.cat([x.reshape(-1, x.shape[-1]) for x in xs])) for k, (w, xs) in found.items()}


def pruned_weights(run_dir, stage):
    """{checkpoint weight name: W [out, in] float64} of a saved stage output, as transformers loads it."""
    from transformers.pytorch_utils import Conv1D
    m = load_reference_model(run_dir / stage / "model")
    out = {}
    for name, mod in m.named_modules():
        if isinstance(mod, (torch.nn.Linear, Conv1D)) and (".h." in name or ".layers." in name):
            w = mod.weight.detach().double()
            out[name + ".weight"] = w.t() if isinstance(mod, Conv1D) else w
    return out


def wanda_reference(W, X, sparsity):
    score = W.abs() * X.float().norm(dim=0).double()[None, :]
    k = int(W.shape[1] * sparsity)
    mask = torch.zeros_like(W, dtype=torch.bool)
    mask.scatter_(1, torch.sort(score, dim=1, stable=True)[1][:, :k], True)
    return mask


def sparsegpt_reference(W, X, sparsity, prunen=0, prunem=0, blocksize=BLOCK, percdamp=0.01):
    """SparseGPT's Algorithm 1 in float64 as its reference code runs it (H = 2 X^T X / n, the
    upper Cholesky factor of H^-1, masks per block from the weights as updated), except that an
    unstructured block prunes exactly floor(size * sparsity) weights."""
    W = W.contiguous().clone()
    H = 2 * X.t() @ X / X.shape[0]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(H.shape[0], dtype=H.dtype)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    cols = W.shape[1]
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, Q1, Err1 = W[:, i1:i2].clone(), torch.zeros_like(W[:, i1:i2]), torch.zeros_like(W[:, i1:i2])
        Hinv1 = Hinv[i1:i2, i1:i2]
        mask1 = torch.zeros_like(W1, dtype=torch.bool)
        if prunen == 0:
            tmp = (W1 ** 2 / torch.diag(Hinv1).reshape(1, -1) ** 2).float()
            k = int(tmp.numel() * sparsity)
            flat = torch.zeros(tmp.numel(), dtype=torch.bool)
            flat[torch.sort(tmp.flatten(), stable=True)[1][:k]] = True
            mask1 = flat.reshape(W1.shape)
        for i in range(i2 - i1):
            w, d = W1[:, i], Hinv1[i, i]
            if prunen and i % prunem == 0:
                tmp = (W1[:, i:i + prunem] ** 2 / torch.diag(Hinv1)[i:i + prunem].reshape(1, -1) ** 2).float()
                low = torch.sort(tmp, dim=1, stable=True)[1][:, :prunem - prunen]
                mask1.scatter_(1, i + low, True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err[:, None] @ Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W


def layer_error(W, What, X):
    return float(((X @ (W - What).t()) ** 2).sum())


@pytest.fixture(scope="module")
def calib_text(kjv_text, tmp_path_factory):
    path = tmp_path_factory.mktemp("prune_data") / "calib.txt"
    path.write_text(kjv_text[:20000], encoding="utf-8")
    return path


@pytest.fixture(scope="module", params=["gpt2_byte_level", "llama_llama_bpe"])
def pruned(request, host, models_with_tokenizer, calib_text, tmp_path_factory):
    """One model pruned by Wanda and SparseGPT (unstructured 50% and 2:4) in one-pass mode, with
    the reference's view of every layer: (run dir, metrics, layers, model dir)."""
    if not host.has_stage("prune.sparsegpt"):
        pytest.skip("no prune plugin in this build")
    model_dir = models_with_tokenizer[request.param]
    cal = f"data: train, n_samples: {N_SAMPLES}, seq_len: {SEQ_LEN}, sequential: false"
    stages = [f"{{id: wanda, uses: prune.wanda, with: {{sparsity: 0.5, {cal}}}}}",
              f"{{id: wanda24, uses: prune.wanda, with: {{pattern: '2:4', {cal}}}}}",
              f"{{id: sgpt, uses: prune.sparsegpt, with: {{sparsity: 0.5, block_size: {BLOCK}, {cal}}}}}",
              f"{{id: sgpt24, uses: prune.sparsegpt, with: {{pattern: '2:4', block_size: {BLOCK}, {cal}}}}}",
              f"{{id: sgpt_seq, uses: prune.sparsegpt, with: {{sparsity: 0.5, block_size: {BLOCK}, "
              f"data: train, n_samples: {N_SAMPLES}, seq_len: {SEQ_LEN}}}}}",
              "{id: mag, uses: prune.magnitude, with: {sparsity: 0.5}}"]
    out, m = run(host, tmp_path_factory.mktemp("prune_" + request.param), model_dir, calib_text, stages)
    ids = calibration_ids(model_dir, calib_text.read_text(encoding="utf-8"))
    layers = linear_inputs(load_reference_model(model_dir), ids)
    return out, m, layers, model_dir


def test_wanda_prunes_the_weights_the_reference_scores_lowest(pruned):
    out, m, layers, _ = pruned
    got = pruned_weights(out, "wanda")
    assert set(got) == set(layers) and len(got) in (8, 14)
    for name, (W, X) in layers.items():
        want = wanda_reference(W, X, 0.5)
        zero = got[name] == 0
        # measured: the same mask; our norms are summed in double, the reference's in float, so
        # a near-tie may flip a pair on another machine
        assert (zero != want).float().mean() <= 1e-3, name
        assert zero.sum(dim=1).eq(W.shape[1] // 2).all(), f"{name}: half of every row"
        assert torch.equal(got[name][~zero].float(), W[~zero].float()), f"{name}: kept weights are unchanged"
    assert m["wanda"]["sparsity"] == pytest.approx(0.5)


def test_sparsegpt_matches_algorithm_1_in_float64(pruned):
    out, _, layers, _ = pruned
    got = pruned_weights(out, "sgpt")
    wanda = pruned_weights(out, "wanda")
    for name, (W, X) in layers.items():
        want = sparsegpt_reference(W, X, 0.5)
        zero = got[name] == 0
        # measured: the same masks, weights within 2e-6 of max |W|, layer errors within 1e-7
        assert (zero != (want == 0)).float().mean() <= 1e-3, name
        ours, ref = layer_error(W, got[name], X), layer_error(W, want, X)
        assert ours == pytest.approx(ref, rel=1e-3), name
        assert ours < layer_error(W, wanda[name], X), f"{name}: SparseGPT's reconstruction beats Wanda's mask alone"


def test_two_of_four_holds_in_the_saved_checkpoints(pruned):
    out, m, layers, _ = pruned
    for stage in ("wanda24", "sgpt24"):
        got = pruned_weights(out, stage)
        for name, w in got.items():
            groups = (w != 0).reshape(w.shape[0], -1, 4).sum(dim=2)
            assert groups.max() <= 2, f"{stage} {name}"
        assert m[stage]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    got = pruned_weights(out, "sgpt24")
    for name, (W, X) in layers.items():
        want = sparsegpt_reference(W, X, 0.5, prunen=2, prunem=4)
        assert layer_error(W, got[name], X) == pytest.approx(layer_error(W, want, X), rel=1e-3), name


def test_sequential_mode_takes_each_group_inputs_from_the_pruned_groups_before_it(pruned):
    """sequential (the default): block 0's first group (c_attn | q/k/v) reads the embeddings in
    both modes, so it comes out the same; every later weight sees inputs that the pruned groups
    before it made, and differs."""
    out, _, layers, _ = pruned
    seq, one = pruned_weights(out, "sgpt_seq"), pruned_weights(out, "sgpt")
    first = [n for n in layers if re.search(r"\.(h|layers)\.0\.(attn\.c_attn|self_attn\.[qkv]_proj)\.", n)]
    assert first
    for name in layers:
        same = torch.equal(seq[name], one[name])
        assert same == (name in first), name


def test_magnitude_prunes_half_of_each_layer_by_abs_value(pruned):
    out, m, layers, _ = pruned
    got = pruned_weights(out, "mag")
    for name, (W, _) in layers.items():
        k = W.numel() // 2
        want = torch.zeros(W.numel(), dtype=torch.bool)
        want[torch.sort(W.abs().float().flatten(), stable=True)[1][:k]] = True
        assert torch.equal(got[name].flatten() == 0, want), name


@pytest.fixture(scope="module")
def kjv_prune_run(host, kjv_file, tmp_path_factory):
    """configs/prune-kjv.yaml on models/kjv-tiny, the table in docs/pruning.md."""
    if not host.has_stage("prune.sparsegpt"):
        pytest.skip("no prune plugin in this build")
    plain = tmp_path_factory.mktemp("prune_kjv") / "kjv.txt"
    plain.write_text("".join(re.sub(r"^[1-3A-Za-z]*[0-9]*:[0-9]* *", "", ln) + "\n"
                             for ln in kjv_file.read_text(encoding="utf-8").splitlines()), encoding="utf-8")
    out = plain.parent / "run"
    host.run("-q", "run", ROOT / "configs" / "prune-kjv.yaml", "--out", out, "--jobs", "2",
             "--set", f"model={ROOT / 'models' / 'kjv-tiny'}", "--set", f"data.train.path={plain}",
             "--set", f"data.eval.path={plain}")
    rep = json.loads((out / "report.json").read_text())
    assert all(s["status"] == "ok" for s in rep["stages"]), [(s["id"], s.get("error")) for s in rep["stages"]]
    return out, stage_metrics(rep, "prune-kjv")


def test_on_our_model_sparsegpt_beats_wanda_beats_magnitude(kjv_prune_run):
    _, m = kjv_prune_run
    for tag in ("50", "2of4", "70"):
        mag, wanda, sgpt = (m[f"{k}{tag}"]["kl_div"] for k in ("magnitude", "wanda", "sparsegpt"))
        assert sgpt < 0.5 * wanda and wanda < mag, (tag, sgpt, wanda, mag)
        assert m[f"sparsegpt{tag}"]["top1_agree"] > m[f"magnitude{tag}"]["top1_agree"]


def bad_config(tmp_path, model, data, stage):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"name: bad\nmodel: {model}\ndata:\n  train: {{path: {data}}}\nstages:\n  - {stage}\noutputs: [p]\n")
    return cfg


@pytest.mark.parametrize("params, message", [
    ("pattern: '4:2'", "pattern is '4:2'; 'unstructured' or N:M"),
    ("pattern: '2:4', sparsity: 0.7", "sparsity 0.7 disagrees with pattern 2:4, which prunes 0.5"),
    ("sparsity: 1.0", "sparsity is 1; below 1 expected"),
])
def test_a_bad_pattern_is_one_config_error_with_its_line(host, models_with_tokenizer, calib_text, tmp_path, params,
                                                           message):
    if not host.has_stage("prune.wanda"):
        pytest.skip("no prune plugin in this build")
    cfg = bad_config(tmp_path, models_with_tokenizer["gpt2_byte_level"], calib_text,
                     f"{{id: p, uses: prune.wanda, with: {{{params}}}}}")
    p = host.run("validate", cfg, check=False)
    err = p.stderr.decode()
    assert p.returncode != 0 and err.count("\n") == 1, err
    assert f"{cfg}:6:5: stage 'p' (prune.wanda): {message}" in err


def test_rows_that_are_not_whole_n_of_m_groups_fail_naming_the_tensor(host, models_with_tokenizer, calib_text,
                                                                       tmp_path):
    """GPT-2's layers here have 64 and 256 inputs: no whole groups of 7. The stage fails before any
    work and leaves no output behind."""
    if not host.has_stage("prune.sparsegpt"):
        pytest.skip("no prune plugin in this build")
    cfg = bad_config(tmp_path, models_with_tokenizer["gpt2_byte_level"], calib_text,
                     "{id: p, uses: prune.sparsegpt, with: {pattern: '3:7', n_samples: 2, seq_len: 32}}")
    out = tmp_path / "run"
    p = host.run("-q", "run", cfg, "--out", out, check=False)
    assert p.returncode != 0
    assert ("'transformer.h.0.attn.c_attn.weight' has 64 inputs, not a whole number of groups of 7 for pattern 3:7"
            in p.stderr.decode()), p.stderr.decode()
    assert not (out / "p").exists() and not list(out.glob("**/*.partial"))
