"""llmopt's transformer against transformers on the same checkpoints: the logits of every position
(full-sequence forward and token-by-token through the KV cache) within 1e-4, and greedy
generation token for token."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import HALF_MODEL_SPECS, MODEL_SPECS, _llama_config, load_reference_model, save_random_model

LOGITS_ATOL = 1e-4
PROMPT_LEN = 64  # long enough that rope positions (and linear rope scaling) matter
GEN_PROMPT = [1, 2, 3]
GEN_TOKENS = 20


def prompt_ids(vocab, n=PROMPT_LEN, seed=0):
    return np.random.default_rng(seed).integers(0, vocab, size=n).tolist()


def reference_logits(model_dir, ids):
    model = load_reference_model(model_dir)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


def our_logits(host, model_dir, ids, out, kv_cache):
    args = ["forward", model_dir, "--ids", ",".join(map(str, ids)), "--out", out]
    host.run(*args, *(["--kv-cache"] if kv_cache else []))
    return np.fromfile(out, dtype="<f4")


@pytest.mark.parametrize("name", list(MODEL_SPECS))
def test_reference_models_are_fit_for_comparison(models, name):
    # The comparisons below mean something only if the logits are far from uniform and the
    # checkpoint has no end-of-sequence id that could stop either side's generation early.
    cfg = json.loads((models[name] / "config.json").read_text())
    assert cfg.get("eos_token_id") is None and cfg["torch_dtype"] == "float32"
    probs = torch.softmax(torch.from_numpy(reference_logits(models[name], prompt_ids(300))), -1)
    assert probs.max(-1).values.mean() > 10 / cfg["vocab_size"]


def test_llama3_rope_scaling_moves_the_logits(models, tmp_path):
    # llama_rope_llama3 matching transformers means something only if the scaling changes the
    # logits: the same weights without it must be far from them
    scaled = models["llama_rope_llama3"]
    plain = tmp_path / "unscaled"
    shutil.copytree(scaled, plain)
    cfg = json.loads((plain / "config.json").read_text())
    cfg["rope_scaling"] = None
    (plain / "config.json").write_text(json.dumps(cfg))
    ids = prompt_ids(300)
    assert np.abs(reference_logits(scaled, ids) - reference_logits(plain, ids)).max() > 100 * LOGITS_ATOL


def test_mistral_runs_within_its_sliding_window_and_refuses_longer(host, tmp_path):
    # MistralForCausalLM attends over the last sliding_window positions; llmopt has no windowed
    # attention, so its context stops at the window (where the two agree) and a longer input is
    # an error, not a different attention
    d = save_random_model("MistralForCausalLM", _llama_config("MistralConfig", sliding_window=24), 8, tmp_path / "mistral")
    ids = prompt_ids(300, n=24)
    ref = reference_logits(d, ids)
    for kv in (False, True):
        got = our_logits(host, d, ids, tmp_path / "logits.f32", kv).reshape(ref.shape)
        assert np.abs(got - ref).max() <= LOGITS_ATOL
    p = host.run("forward", d, "--ids", ",".join(map(str, prompt_ids(300, n=25))), "--out", tmp_path / "x.f32",
                 check=False)
    assert p.returncode != 0 and b"24" in p.stderr, p.stderr.decode(errors="replace")


@pytest.mark.parametrize("kv_cache", [False, True], ids=["full", "kv_cache"])
@pytest.mark.parametrize("name", list(MODEL_SPECS))
def test_logits_match_transformers(host, models, tmp_path, name, kv_cache):
    host.require_command("forward")
    ref = reference_logits(models[name], prompt_ids(300))
    got = our_logits(host, models[name], prompt_ids(300), tmp_path / "logits.f32", kv_cache)
    assert got.size == ref.size, f"got {got.size} floats, want {ref.shape} = {ref.size}"
    got = got.reshape(ref.shape)
    err = np.abs(got - ref)
    t, v = np.unravel_index(np.argmax(err), err.shape)
    assert err.max() <= LOGITS_ATOL, (
        f"max |ours - transformers| = {err.max():.3g} at token {t}, vocab id {v} "
        f"(ours {got[t, v]:.6g}, transformers {ref[t, v]:.6g}); logits spread {ref.std():.3g}"
    )


@pytest.mark.parametrize("name", list(HALF_MODEL_SPECS))
def test_half_checkpoint_logits_match_transformers_upcast(host, half_models, tmp_path, name):
    # Every tensor of the checkpoint is half, norm gains and biases included. Our kernels read the
    # half weights and compute in f32, so the reference is transformers in float32 on the same
    # half values (from_pretrained upcasts them exactly), and the fp32 tolerance holds.
    host.require_command("forward")
    cfg = json.loads((half_models[name] / "config.json").read_text())
    assert cfg["torch_dtype"] == HALF_MODEL_SPECS[name][1]
    with safe_open(str(half_models[name] / "model.safetensors"), "pt") as f:
        dtypes = {str(f.get_slice(k).get_dtype()) for k in f.keys()}
    assert dtypes == {{"float16": "F16", "bfloat16": "BF16"}[cfg["torch_dtype"]]}, dtypes

    ids = prompt_ids(300)
    ref = reference_logits(half_models[name], ids)
    got = our_logits(host, half_models[name], ids, tmp_path / "logits.f32", kv_cache=False)
    assert got.size == ref.size, f"got {got.size} floats, want {ref.shape} = {ref.size}"
    err = np.abs(got.reshape(ref.shape) - ref).max()
    print(f"{name}: max |ours - transformers upcast| = {err:.3g}")
    assert err <= LOGITS_ATOL, f"max |ours - transformers upcast| = {err:.3g}; logits spread {ref.std():.3g}"


@pytest.mark.parametrize("name", ["llama_gqa_bfloat16", "gpt2_bfloat16"])
def test_medium_precision_is_closer_to_f32_than_torch_in_bfloat16(host, half_models, tmp_path, name):
    # matmul_precision medium rounds the inputs of every prompt matmul to bf16 (the bf16 weights
    # are exact), sums in f32, and keeps everything else f32. The reference is transformers in
    # float32 on the checkpoint's values; the peer is transformers run in bfloat16, what a user
    # of the checkpoint gets from torch by default. Ours must be nearer the reference than the
    # peer is, and must be off highest's logits where the kernel says it rounds (so the bf16 path
    # ran), else equal to them.
    host.require_command("forward")
    ids = prompt_ids(300)
    ref = reference_logits(half_models[name], ids)
    peer_model = load_reference_model(half_models[name]).to(torch.bfloat16)
    with torch.no_grad():
        peer = peer_model(torch.tensor([ids])).logits[0].float().numpy()
    out = tmp_path / "logits.f32"
    host.run("forward", half_models[name], "--ids", ",".join(map(str, ids)), "--out", out, "--matmul-precision", "medium")
    medium = np.fromfile(out, dtype="<f4").reshape(ref.shape)
    highest = our_logits(host, half_models[name], ids, out, kv_cache=False).reshape(ref.shape)
    err_medium, err_peer = np.abs(medium - ref).max(), np.abs(peer - ref).max()
    rounded = host.bf16_gemm("bf16")
    print(f"{name}: max |logits - f32 reference|: llmopt medium {err_medium:.3g} "
          f"({'bf16 GEMM' if rounded else 'computed as highest'}), torch bfloat16 {err_peer:.3g}; "
          f"spread {ref.std():.3g}")
    assert err_medium < err_peer, f"medium is {err_medium:.3g} off the f32 logits, torch in bfloat16 {err_peer:.3g}"
    if rounded:
        assert np.abs(medium - highest).max() > 1e-5, "medium gave highest's logits: the bf16 GEMM did not run"
    else:
        np.testing.assert_array_equal(medium, highest)


@pytest.mark.parametrize("kv_cache", [False, True], ids=["full", "kv_cache"])
@pytest.mark.parametrize("name", list(MODEL_SPECS))
def test_batched_logits_match_transformers(host, models, tmp_path, name, kv_cache):
    # three different sequences in one batch: each must equal its own transformers forward
    host.require_command("forward")
    seqs = [prompt_ids(300, seed=s) for s in (1, 2, 3)]
    out = tmp_path / "logits.f32"
    args = ["forward", models[name], "--ids", ";".join(",".join(map(str, q)) for q in seqs), "--out", out]
    host.run(*args, *(["--kv-cache"] if kv_cache else []))
    got = np.fromfile(out, dtype="<f4")
    for b, ids in enumerate(seqs):
        ref = reference_logits(models[name], ids)
        mine = got.reshape(len(seqs), *ref.shape)[b]
        err = np.abs(mine - ref).max()
        assert err <= LOGITS_ATOL, f"sequence {b}: max |ours - transformers| = {err:.3g}"


@pytest.mark.parametrize("name", list(MODEL_SPECS))
def test_greedy_generation_matches_transformers(host, models, name):
    host.require_command("generate")
    model = load_reference_model(models[name])
    ids = torch.tensor([GEN_PROMPT])
    with torch.no_grad():
        # synced_gpus=False: left to None, generate() imports torch.distributed.fsdp, which fails
        # on Debian's torch 1.13 under Python 3.11 (a dataclass with a mutable default).
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=GEN_TOKENS,
                             min_new_tokens=GEN_TOKENS, do_sample=False, synced_gpus=False,
                             eos_token_id=None, pad_token_id=0)
    want = out[0, len(GEN_PROMPT):].tolist()
    assert len(want) == GEN_TOKENS

    p = host.run("generate", models[name], "--ids", ",".join(map(str, GEN_PROMPT)),
                 "--max-tokens", GEN_TOKENS, "--greedy", "--print-ids")
    lines = [ln for ln in p.stdout.decode().splitlines() if ln.strip()]
    assert len(lines) == 1, f"want one JSON line, got {p.stdout[:500]!r}"
    got = json.loads(lines[0])["ids"]
    assert got == want


@pytest.mark.parametrize("where", ["config.json", "generation_config.json"])
def test_generation_stops_at_any_id_of_an_eos_list(host, models, tmp_path, where):
    """eos_token_id may be a list (Llama 3 has three): generate stops after whichever comes first,
    as transformers' generate does with the same list."""
    host.require_command("generate")
    import shutil
    d = tmp_path / "gpt2_eos"
    shutil.copytree(models["gpt2"], d)
    model = load_reference_model(d)
    ids = torch.tensor([GEN_PROMPT])
    kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, synced_gpus=False, pad_token_id=0)
    with torch.no_grad():
        free = model.generate(ids, max_new_tokens=GEN_TOKENS, min_new_tokens=GEN_TOKENS, eos_token_id=None, **kw)
    free = free[0, len(GEN_PROMPT):].tolist()
    stop = free[7]  # the list's second id ends the run after 8 tokens (or earlier, where it occurs first)
    never = next(i for i in range(model.config.vocab_size) if i not in free)
    eos = [never, stop]
    with torch.no_grad():
        ref = model.generate(ids, max_new_tokens=GEN_TOKENS, eos_token_id=eos, **kw)[0, len(GEN_PROMPT):].tolist()
    assert ref == free[: free.index(stop) + 1]
    f = d / where
    cfg = json.loads(f.read_text()) if f.exists() else {}
    cfg["eos_token_id"] = eos
    f.write_text(json.dumps(cfg))
    p = host.run("generate", d, "--ids", ",".join(map(str, GEN_PROMPT)), "--max-tokens", GEN_TOKENS, "--greedy",
                 "--print-ids")
    assert json.loads(p.stdout.decode().strip().splitlines()[-1])["ids"] == ref
    p = host.run("generate", d, "--ids", ",".join(map(str, GEN_PROMPT)), "--max-tokens", GEN_TOKENS, "--greedy",
                 "--print-ids", "--ignore-eos")
    assert json.loads(p.stdout.decode().strip().splitlines()[-1])["ids"] == free


PPL_WINDOW, PPL_STRIDE = 128, 48
PPL_CHARS = 20000  # about 6000 tokens of KJV: some 120 windows


def reference_perplexity(model_dir, text):
    """transformers' sliding-window recipe (docs: "Perplexity of fixed-length models"): windows of
    PPL_WINDOW tokens moved by PPL_STRIDE; each token after the first is scored once, with the
    context its window gives; token-weighted mean NLL. Returns (ppl, nll, tokens scored)."""
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode(text).ids
    model = load_reference_model(model_dir)
    nll_sum, n_scored, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), PPL_STRIDE):
        end = min(begin + PPL_WINDOW, len(ids))
        window = torch.tensor([ids[begin:end]])
        with torch.no_grad():
            logp = torch.log_softmax(model(window).logits[0, :-1].double(), -1)
        nll = -logp.gather(1, window[0, 1:, None])[:, 0]
        new = end - max(prev_end, begin + 1)  # targets not scored by an earlier window
        nll_sum += nll[-new:].sum().item()
        n_scored += new
        prev_end = end
        if end == len(ids):
            break
    assert n_scored == len(ids) - 1
    return float(np.exp(nll_sum / n_scored)), nll_sum / n_scored, n_scored


@pytest.mark.parametrize("name", ["gpt2_byte_level", "llama_llama_bpe"])
def test_perplexity_matches_transformers(host, models_with_tokenizer, kjv_text, tmp_path, name):
    if not host.has_stage("eval.perplexity"):
        pytest.skip("no eval.perplexity stage yet: the perplexity comparison waits for it")
    model_dir = models_with_tokenizer[name]
    text = kjv_text[:PPL_CHARS]
    (tmp_path / "eval.txt").write_text(text, encoding="utf-8")
    cfg = tmp_path / "ppl.yaml"
    cfg.write_text(f"name: ppl\nmodel: {model_dir}\ndata: {{eval: {tmp_path / 'eval.txt'}}}\n"
                   "stages:\n  - {id: ppl, uses: eval.perplexity, "
                   f"with: {{window: {PPL_WINDOW}, stride: {PPL_STRIDE}}}}}\n")
    host.run("-q", "run", cfg, "--out", tmp_path / "run")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    metrics = {m["name"]: m["value"] for m in report["stages"][0]["metrics"]}

    ppl, nll, tokens = reference_perplexity(model_dir, text)
    assert metrics["tokens"] == tokens
    assert metrics["nll"] == pytest.approx(nll, rel=1e-5, abs=1e-6)
    assert metrics["ppl"] == pytest.approx(ppl, rel=1e-4)


def _peak_rss_bytes(host, *args):
    """The peak RSS `llmopt-host -v` reports for its own process (VmHWM; ru_maxrss would count
    this Python process, which forked it)."""
    import re
    p = host.run("-v", "--threads", "1", *args)
    m = re.search(rb"peak RSS ([0-9.]+) MiB", p.stderr)
    assert m, p.stderr[-2000:]
    return float(m.group(1)) * 2**20


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_loading_costs_about_the_file_size_in_memory(host, session_dir, models, dtype):
    """Weights are mapped from model.safetensors, not copied: running a checkpoint of ~90 MB adds
    about its size to the peak RSS over a tiny model's, not twice it (f16 matmul weights are read
    as they are; only norm gains and biases get f32 copies)."""
    host.require_command("forward")
    from transformers import GPT2Config
    from conftest import save_random_model
    d = session_dir / f"gpt2_rss_{dtype}"
    if not (d / "model.safetensors").exists():
        cfg = GPT2Config(n_layer=6, n_embd=512, n_head=8, vocab_size=8000, n_positions=256,
                         bos_token_id=None, eos_token_id=None)
        save_random_model("GPT2LMHeadModel", cfg, 0, d)
        if dtype == "float16":
            import transformers
            m = transformers.GPT2LMHeadModel.from_pretrained(d, torch_dtype=torch.float16)
            m.save_pretrained(d, safe_serialization=True)
    size = (d / "model.safetensors").stat().st_size
    tiny = models["gpt2"]
    tiny_size = (tiny / "model.safetensors").stat().st_size
    rss_tiny = _peak_rss_bytes(host, "forward", tiny, "--ids", "1,2,3")
    rss = _peak_rss_bytes(host, "forward", d, "--ids", "1,2,3")
    extra = rss - rss_tiny
    assert extra <= 1.15 * (size - tiny_size) + 8 * 2**20, \
        f"{dtype}: {size / 2**20:.1f} MiB file, peak RSS {rss / 2**20:.1f} MiB ({extra / 2**20:.1f} MiB over a tiny model)"
