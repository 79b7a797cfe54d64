"""The quantize plugin end to end on a small Llama trained here (torch, a few hundred steps on
the KJV text with the trained Llama-style tokenizer), so that perplexity means something:
quantize.rtn (q8_0, q4_0, GQ), quantize.gptq and quantize.awq outputs run in `llmopt-host
forward` and give perplexities in the expected order; a saved quantized checkpoint reloads into
the same model (same perplexity, bit-identical re-save) and its logits match transformers run on
the dequantized weights; quantize.gguf writes a file the `gguf` package reads with the right
types; and bad inputs (too little calibration data, a group that does not divide a row, a
pattern that matches nothing) fail with a clear message. GPT-2 (our own model):
test_quantize_gpt2.py."""

import json
import shutil

import numpy as np
import pytest
import torch

from conftest import ActivationsAsLlmopt, _llama_config, assert_logits_match_int8, read_safetensors, stage_metrics

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as QT  # noqa: E402

TRAIN_STEPS = 800
EVAL_TOKENS = 4096


@pytest.fixture(scope="module")
def trained_llama(session_dir, tokenizers, kjv_text):
    """A 2-layer Llama (hidden 128, ff 256, GQA 4/2 heads, vocab 2000) trained on the first 90% of
    the KJV text; every linear weight's row is a multiple of 128, so all group sizes apply."""
    d = session_dir / "quantize" / "llama_trained"
    if (d / "model.safetensors").exists():
        return d
    from tokenizers import Tokenizer
    from transformers import LlamaForCausalLM

    tok = Tokenizer.from_file(str(tokenizers["llama_bpe"] / "tokenizer.json"))
    text = kjv_text[: int(len(kjv_text) * 0.9)]
    ids = torch.tensor(tok.encode(text, add_special_tokens=False).ids, dtype=torch.long)
    cfg = _llama_config(vocab_size=2000, hidden_size=128, intermediate_size=256, num_attention_heads=4,
                        num_key_value_heads=2, initializer_range=0.02)
    torch.manual_seed(7)
    model = LlamaForCausalLM(cfg).float().train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    seq, batch = 128, 16
    for step in range(TRAIN_STEPS):
        starts = torch.randint(0, len(ids) - seq - 1, (batch,), generator=gen)
        x = torch.stack([ids[s:s + seq] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().save_pretrained(d, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizers["llama_bpe"] / f, d / f)
    return d


def pipeline(model, kjv_file, stages):
    lines = [f"name: q\nmodel: {model}\n",
             f"data:\n  train: {{path: {kjv_file}, split: '0:90%'}}\n  eval: {{path: {kjv_file}, split: '90%:100%'}}\n",
             "stages:\n"]
    lines += [f"  - {s}\n" for s in stages]
    ids = [s.split(",")[0].split(":")[1].strip() for s in stages if "quantize.gguf" not in s]
    lines.append(f"outputs: [{', '.join(ids)}]\n")
    return "".join(lines)


def run(host, tmp_path, text, name="p", check=True):
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(text)
    out = tmp_path / f"{name}-run"
    p = host.run("-q", "run", cfg, "--out", out, "--jobs", "2", check=check)
    rep = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
    return p, out, rep


EV = f"eval_data: eval, eval_tokens: {EVAL_TOKENS}"
CAL = "data: train, n_samples: 32, seq_len: 128"


@pytest.fixture(scope="module")
def quantized(host, trained_llama, kjv_file, tmp_path_factory):
    """One run of every quantize stage on the trained model: (run directory, metrics by stage)."""
    if not host.has_stage("quantize.rtn"):
        pytest.skip("no quantize plugin in this build")
    tmp = tmp_path_factory.mktemp("quantize")
    stages = [
        f"{{id: f16, uses: quantize.cast, with: {{dtype: f16, {EV}}}}}",
        f"{{id: q8, uses: quantize.rtn, with: {{format: q8_0, {EV}}}}}",
        f"{{id: q4, uses: quantize.rtn, with: {{format: q4_0, {EV}}}}}",
        f"{{id: rtn_g4, uses: quantize.rtn, with: {{format: gq, bits: 4, group_size: 32, sym: true, {EV}}}}}",
        f"{{id: gptq4, uses: quantize.gptq, with: {{bits: 4, group_size: 32, sym: true, {CAL}, {EV}}}}}",
        f"{{id: gptq4_act, uses: quantize.gptq, with: {{bits: 4, group_size: 32, sym: true, act_order: true, {CAL}, {EV}}}}}",
        f"{{id: rtn_g3, uses: quantize.rtn, with: {{format: gq, bits: 3, group_size: 128, sym: false, {EV}}}}}",
        f"{{id: gptq3, uses: quantize.gptq, with: {{bits: 3, group_size: 128, sym: false, {CAL}, {EV}}}}}",
        f"{{id: awq3, uses: quantize.awq, with: {{bits: 3, group_size: 128, sym: false, {CAL}, {EV}}}}}",
        f"{{id: awq8, uses: quantize.awq, with: {{bits: 8, group_size: 128, sym: true, {CAL}, {EV}}}}}",
        "{id: gguf_q4, uses: quantize.gguf, inputs: {model: q4}}",
    ]
    p, out, rep = run(host, tmp, pipeline(trained_llama, kjv_file, stages))
    return out, stage_metrics(rep, "quantize")


def test_perplexity_order_f32_q8_q4(quantized):
    """f32 <= q8_0 < q4_0 within a margin: at this size the perplexity moves by a fraction of a
    percent either way, so the order is judged on the KL divergence from the f32 model."""
    _, m = quantized
    base = m["q8"]["ppl_input"]
    for sid in ("f16", "q4", "gptq4", "awq3"):
        assert m[sid]["ppl_input"] == pytest.approx(base, rel=1e-12)
    assert m["f16"]["ppl"] == pytest.approx(base, rel=1e-3)
    assert m["q8"]["ppl"] == pytest.approx(base, rel=0.01)
    assert m["q4"]["ppl"] == pytest.approx(base, rel=0.05)
    assert m["f16"]["kl_div"] < m["q8"]["kl_div"] < m["q4"]["kl_div"]
    assert m["q8"]["top1_agree"] > 0.97
    assert m["f16"]["top1_agree"] > m["q4"]["top1_agree"]


def test_gptq_beats_round_to_nearest_at_the_same_bits(quantized):
    _, m = quantized
    assert m["gptq4"]["kl_div"] < m["rtn_g4"]["kl_div"]
    assert m["gptq4_act"]["kl_div"] < m["rtn_g4"]["kl_div"]
    assert m["gptq3"]["kl_div"] < m["rtn_g3"]["kl_div"]


def test_awq_keeps_the_function_and_lowers_the_layer_error(quantized):
    """The scales folded into the norms and up_proj leave the model's function unchanged (at 8
    bits it is as close to f32 as q8_0, within 1.5x its KL divergence), and the chosen scales
    lower the calibration output error below round to nearest. On this small model without
    outlier channels that gain (~4%) does not carry through to the KL divergence: it is held
    within 10% of round to nearest, not below."""
    _, m = quantized
    # as close as q8_0 (groups of 32, where awq8's are 128): both carry the int8 rounding of the
    # activations too (about 1e-4 here), so a fixed bound is only a bound on the machine it was
    # read on; broken scales would move the KL divergence by orders of magnitude, not by 1.5x
    assert m["awq8"]["kl_div"] < 1.5 * m["q8"]["kl_div"]
    assert m["awq3"]["awq_error_ratio"] < 1.0
    assert m["awq3"]["kl_div"] < m["rtn_g3"]["kl_div"] * 1.1


def test_sizes_shrink_with_bits(quantized):
    _, m = quantized
    assert m["q8"]["bits_per_weight"] == pytest.approx(8.5)
    assert m["q4"]["bits_per_weight"] == pytest.approx(4.5)
    assert m["gptq4"]["bits_per_weight"] == pytest.approx(4.5)
    assert m["gptq3"]["bits_per_weight"] == pytest.approx(3 + 32 / 128)
    assert m["f16"]["size_ratio"] == pytest.approx(2.0, rel=1e-2)
    # the converted weights: 32 bits each before
    assert 32 / m["q8"]["bits_per_weight"] == pytest.approx(3.76, rel=0.01)
    assert 32 / m["q4"]["bits_per_weight"] == pytest.approx(7.1, rel=0.01)
    assert m["q8"]["size_bytes"] > m["q4"]["size_bytes"]


def test_quantized_checkpoint_records_its_dtypes(quantized):
    out, _ = quantized
    cfg = json.loads((out / "q4" / "model" / "config.json").read_text())
    q = cfg["quantization_config"]
    assert q["quant_method"] == "llmopt" and q["dtype"] == "q4_0" and q["bits"] == 4 and q["group_size"] == 32
    assert q["tensor_dtypes"]["model.layers.0.self_attn.q_proj.weight"] == "q4_0"
    assert "model.embed_tokens.weight" not in q["tensor_dtypes"]
    assert json.loads((out / "gptq4" / "model" / "config.json").read_text())["quantization_config"]["dtype"] == "gq4g32s"


def test_saved_quantized_checkpoint_reloads_into_the_same_model(host, quantized, kjv_file, tmp_path):
    out, m = quantized
    for sid in ("q4", "gptq4"):
        saved = out / sid / "model"
        stages = [f"{{id: same, uses: quantize.cast, with: {{dtype: f32, {EV}}}}}"]
        _, out2, rep = run(host, tmp_path, pipeline(saved, kjv_file, stages), name=sid)
        # the reloaded model scores exactly as the in-memory one did
        assert stage_metrics(rep)["same"]["ppl_input"] == m[sid]["ppl"]
        # and saves bit for bit the same
        a = (saved / "model.safetensors").read_bytes()
        b = (out2 / "same" / "model" / "model.safetensors").read_bytes()
        assert a == b


def test_quantized_logits_match_transformers_on_dequantized_weights(host, quantized, tmp_path):
    """q8_0/q4_0 blocks are ggml's: dequantize them with the gguf package, load the result in
    transformers and compare logits with `llmopt-host forward` on the quantized checkpoint. The
    CPU plugin quantizes activations per 32 for its integer kernels (as llama.cpp does), so the
    transformers model does the same to the inputs of the quantized layers where llmopt does."""
    from gguf.quants import dequantize
    from transformers import LlamaConfig, LlamaForCausalLM

    out, _ = quantized
    ids = np.random.default_rng(1).integers(0, 2000, size=40).tolist()
    for sid, qt in (("q8", QT.Q8_0), ("q4", QT.Q4_0)):
        saved = out / sid / "model"
        cfg = json.loads((saved / "config.json").read_text())
        dtypes = cfg["quantization_config"]["tensor_dtypes"]
        sd = {}
        for name, (dt, shape, raw) in read_safetensors(saved / "model.safetensors").items():
            if name in dtypes:
                rows = np.frombuffer(raw, dtype=np.uint8).reshape(shape)
                sd[name] = torch.from_numpy(dequantize(rows, qt).astype(np.float32).copy())
            else:
                assert dt == "F32"
                sd[name] = torch.from_numpy(np.frombuffer(raw, dtype=np.float32).reshape(shape).copy())
        c = dict(cfg)
        c.pop("quantization_config")
        for k in ("model_type", "architectures", "llmopt_provenance", "transformers_version", "torch_dtype"):
            c.pop(k, None)
        model = LlamaForCausalLM(LlamaConfig(**c)).float().eval()
        model.load_state_dict(sd, strict=True)
        with torch.no_grad():
            plain = model(torch.tensor([ids])).logits[0].numpy()
            linear = {n[: -len(".weight")]: dt for n, dt in dtypes.items() if n != "model.embed_tokens.weight"}
            with ActivationsAsLlmopt(host, model, linear, len(ids)):
                want = model(torch.tensor([ids])).logits[0].numpy()
        host.run("forward", saved, "--ids", ",".join(map(str, ids)), "--out", tmp_path / f"{sid}.f32")
        got = np.fromfile(tmp_path / f"{sid}.f32", dtype=np.float32).reshape(want.shape)
        assert_logits_match_int8(got, want, plain, 2e-3)


def test_gguf_export_has_the_quantized_types(quantized):
    out, m = quantized
    path = out / "gguf_q4" / "model.gguf"
    r = gguf.GGUFReader(str(path))
    types = {t.name: t.tensor_type for t in r.tensors}
    assert types["blk.0.attn_q.weight"] == QT.Q4_0
    assert types["blk.1.ffn_down.weight"] == QT.Q4_0
    assert types["token_embd.weight"] == QT.F32
    assert types["output.weight"] == QT.F32
    assert m["gguf_q4"]["size_bytes"] == path.stat().st_size


# ---- bad inputs: each a clear error ---------------------------------------------------------

def fails(host, tmp_path, model, kjv_file, stage, name):
    p, _, rep = run(host, tmp_path, pipeline(model, kjv_file, [stage]), name=name, check=False)
    assert p.returncode != 0
    return p.stderr.decode(errors="replace")


def test_calibration_set_too_small_is_an_error(host, trained_llama, kjv_file, tmp_path):
    err = fails(host, tmp_path, trained_llama, kjv_file,
                "{id: g, uses: quantize.gptq, with: {bits: 4, group_size: 32, data: train, n_samples: 100000, seq_len: 128}}",
                "small")
    assert "calibration data 'train' has" in err and "n_samples=100000" in err


def test_empty_calibration_set_is_an_error(host, trained_llama, kjv_file, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    text = pipeline(trained_llama, kjv_file, ["{id: g, uses: quantize.awq, with: {group_size: 32, data: nothing}}"])
    text = text.replace("stages:\n", f"  nothing: {{path: {empty}}}\nstages:\n")
    cfg = tmp_path / "empty.yaml"
    cfg.write_text(text)
    p = host.run("-q", "run", cfg, "--out", tmp_path / "empty-run", check=False)
    assert p.returncode != 0
    assert "calibration data 'nothing' is empty" in p.stderr.decode(errors="replace")


def test_group_size_that_does_not_divide_a_row_is_an_error(host, models_with_tokenizer, kjv_file, tmp_path):
    # the fixture Llama's down_proj rows are 176 long
    err = fails(host, tmp_path, models_with_tokenizer["llama_llama_bpe"], kjv_file,
                "{id: r, uses: quantize.rtn, with: {format: gq, bits: 4, group_size: 32}}", "div")
    assert "group size 32 does not divide its rows of 176" in err and "down_proj" in err


def test_pattern_that_matches_nothing_is_an_error(host, trained_llama, kjv_file, tmp_path):
    err = fails(host, tmp_path, trained_llama, kjv_file,
                "{id: r, uses: quantize.rtn, with: {include: ['*q_porj*']}}", "nomatch")
    assert "include pattern '*q_porj*' matches no" in err


def test_sequential_gptq_quantizes_each_group_on_the_quantized_groups_outputs(host, trained_llama, kjv_file,
                                                                             tmp_path, monkeypatch):
    """sequential: true (the default, the paper's procedure in AutoGPTQ's true_sequential order)
    takes each group's Hessians (q/k/v, o, gate/up, down, block after block) from what the
    already quantized groups before it produce; false takes every Hessian from the unquantized
    model. Only block 0's q/k/v see the same inputs (the embeddings' norm) either way, so they
    come out byte for byte the same; every later weight differs (at 2 bits a quantized group
    moves its outputs well beyond float noise), block 0's o/gate/up/down included. With the
    activations between steps recomputed instead of kept (LLMOPT_CALIB_STASH_MB=0, what a
    calibration set too big for memory gets), every weight is the same byte for byte."""
    from safetensors.numpy import load_file
    q = "bits: 2, group_size: 32, sym: false"
    stages = [f"{{id: seq, uses: quantize.gptq, with: {{{q}, {CAL}}}}}",
              f"{{id: one, uses: quantize.gptq, with: {{{q}, sequential: false, {CAL}}}}}"]
    _, out, rep = run(host, tmp_path, pipeline(trained_llama, kjv_file, stages))
    seq, one = (load_file(out / s / "model" / "model.safetensors") for s in ("seq", "one"))
    names = [n for n in seq if n.endswith("proj.weight")]
    assert len(names) == 14 and set(seq) == set(one)
    first = {f"model.layers.0.self_attn.{p}_proj.weight" for p in "qkv"}
    for n in names:
        same = np.array_equal(seq[n], one[n])
        if n in first:
            assert same, f"{n}: block 0's q/k/v have the same inputs in both modes"
        else:
            assert not same, f"{n}: its Hessian should come from the quantized groups before it"
    qc = json.loads((out / "seq" / "model" / "config.json").read_text())["quantization_config"]
    assert qc["true_sequential"] is True and qc["sequential"] is True
    monkeypatch.setenv("LLMOPT_CALIB_STASH_MB", "0")
    _, out2, _ = run(host, tmp_path, pipeline(trained_llama, kjv_file, stages[:1]), name="recompute")
    again = load_file(out2 / "seq" / "model" / "model.safetensors")
    for n in names:
        assert np.array_equal(seq[n], again[n]), f"{n}: recomputing the activations changed the result"
