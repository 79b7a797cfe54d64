"""The finetune plugin against the reference tools: a finetune.lora adapter loads with PEFT's
PeftModel.from_pretrained onto the transformers model and gives the logits of our merged output
(which transformers loads alone); a run killed with SIGKILL and resumed from its last checkpoint
ends bitwise where an uninterrupted run does; and bad inputs (malformed JSONL, empty data, long
records, unknown LoRA targets, a checkpoint of another model, a full disk while checkpointing)
fail or warn, saying where; early stopping stops where transformers' EarlyStoppingCallback rule
does, and the progress line's learning rate is transformers' schedule."""

import json
import re
import resource
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from conftest import load_reference_model

LOGIT_ATOL = 1e-4
TOK_MODELS = ["gpt2_byte_level", "llama_llama_bpe"]
LORA_TARGETS = {"gpt2_byte_level": ["c_attn", "c_proj", "c_fc"],
                "llama_llama_bpe": ["q_proj", "v_proj", "down_proj"]}


@pytest.fixture(autouse=True)
def _finetune_stages(host):
    if not host.has_stage("finetune.lora"):
        pytest.skip("this build has no finetune plugin")


def write_config(tmp_path, model_dir, data, stages, outputs=(), name="ft"):
    """data: {entry: (path, split or None)}; stages: YAML flow mappings."""
    lines = [f"name: {name}"]
    if model_dir:
        lines.append(f"model: {model_dir}")
    lines.append("data:")
    for k, (path, split) in data.items():
        lines.append(f"  {k}: {{path: {path}" + (f", split: \"{split}\"}}" if split else "}"))
    lines.append("stages:")
    lines += [f"  - {s}" for s in stages]
    if outputs:
        lines.append(f"outputs: [{', '.join(outputs)}]")
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text("\n".join(lines) + "\n")
    return cfg


def run(host, cfg, out, check=True, **kw):
    p = host.run("-q", "run", cfg, "--out", out, "--jobs", "1", check=check, **kw)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
    return p, report


def metrics(report, sid):
    st = next(s for s in report["stages"] if s["id"] == sid)
    return {m["name"]: m["value"] for m in st["metrics"]}


def stage_error(report, sid):
    st = next(s for s in report["stages"] if s["id"] == sid)
    return st["status"], st.get("error") or ""


def our_logits(host, model_dir, ids, tmp_path):
    out = tmp_path / f"logits-{Path(model_dir).parent.name}.f32"
    host.run("forward", model_dir, "--ids", ",".join(map(str, ids)), "--out", out)
    return np.fromfile(out, dtype=np.float32).reshape(len(ids), -1)


def text_ids(model_dir, text):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)(text)["input_ids"]


# ---------------------------------------------------------------------------------------------
# (a), (b): LoRA in PEFT's format; the merged checkpoint in transformers


@pytest.mark.parametrize("name", TOK_MODELS)
def test_lora_adapter_loads_in_peft_and_matches_our_merged_logits(host, models_with_tokenizer, kjv_file, tmp_path, name):
    from peft import PeftModel

    base_dir = models_with_tokenizer[name]
    targets = LORA_TARGETS[name]
    cfg = write_config(
        tmp_path, base_dir, {"train": (kjv_file, "0:1500")},
        [f"{{id: lora, uses: finetune.lora, with: {{rank: 4, alpha: 8, targets: [{', '.join(targets)}], "
         f"merge: true, steps: 6, seq_len: 32, batch: 2, lr: 0.01, warmup: 2, schedule: cosine, seed: 3}}}}"],
        outputs=["lora"])
    out = tmp_path / "run"
    _, report = run(host, cfg, out)
    m = metrics(report, "lora")
    assert m["steps"] == 6 and m["trainable_params"] > 0 and np.isfinite(m["train_loss"])

    adapter = out / "lora" / "adapter"
    acfg = json.loads((adapter / "adapter_config.json").read_text())
    assert acfg["peft_type"] == "LORA" and acfg["task_type"] == "CAUSAL_LM" and acfg["r"] == 4
    assert acfg["lora_alpha"] == 8 and acfg["bias"] == "none" and acfg["inference_mode"] is True
    assert acfg["fan_in_fan_out"] is name.startswith("gpt2")
    assert sorted(acfg["target_modules"]) == sorted(targets)
    tensors = load_file(adapter / "adapter_model.safetensors")
    n_layers = 2
    per_layer = {"gpt2_byte_level": 4, "llama_llama_bpe": 3}[name]  # gpt2: attn.c_proj and mlp.c_proj
    assert len(tensors) == 2 * per_layer * n_layers
    for k, v in tensors.items():
        assert k.startswith("base_model.model.") and (k.endswith(".lora_A.weight") or k.endswith(".lora_B.weight")), k
        assert (v.shape[0] == 4) if ".lora_A." in k else (v.shape[1] == 4), (k, v.shape)
    assert any(np.abs(v).max() > 0 for k, v in tensors.items() if ".lora_B." in k), "lora_B never moved"

    text = "And God said, Let there be light: and there was light."
    ids = text_ids(base_dir, text)
    base = load_reference_model(base_dir)
    with torch.no_grad():
        base_logits = base(torch.tensor([ids])).logits[0].numpy()
    peft_model = PeftModel.from_pretrained(base, adapter).eval()
    with torch.no_grad():
        peft_logits = peft_model(torch.tensor([ids])).logits[0].numpy()
    merged = load_reference_model(out / "lora" / "model")  # (b): transformers alone
    with torch.no_grad():
        merged_logits = merged(torch.tensor([ids])).logits[0].numpy()
    ours = our_logits(host, out / "lora" / "model", ids, tmp_path)

    assert np.abs(peft_logits - base_logits).max() > 1e-3, "the adapter changes nothing: the check would be vacuous"
    assert np.abs(ours - peft_logits).max() < LOGIT_ATOL, np.abs(ours - peft_logits).max()
    assert np.abs(merged_logits - peft_logits).max() < LOGIT_ATOL, np.abs(merged_logits - peft_logits).max()


def test_lora_without_merge_outputs_the_base(host, models_with_tokenizer, kjv_file, tmp_path):
    base_dir = models_with_tokenizer["gpt2_byte_level"]
    cfg = write_config(tmp_path, base_dir, {"train": (kjv_file, "0:300")},
                       ["{id: lora, uses: finetune.lora, with: {rank: 2, steps: 2, seq_len: 16, batch: 2, lr: 0.01}}"],
                       outputs=["lora"])
    run(host, cfg, tmp_path / "run")
    ours = load_file(tmp_path / "run" / "lora" / "model" / "model.safetensors")
    ref = load_file(base_dir / "model.safetensors")
    for k, v in ref.items():
        assert np.array_equal(ours[k], v), k
    assert (tmp_path / "run" / "lora" / "adapter" / "adapter_model.safetensors").exists()


def test_full_finetune_lowers_the_loss_and_validates(host, models_with_tokenizer, kjv_file, tmp_path):
    base_dir = models_with_tokenizer["llama_llama_bpe"]
    cfg = write_config(
        tmp_path, base_dir, {"train": (kjv_file, "0:2000"), "eval": (kjv_file, "2000:2200")},
        ["{id: full, uses: finetune.full, with: {steps: 30, seq_len: 32, batch: 4, lr: 0.003, eval_data: eval, "
         "eval_every: 10, trainable: ['model.layers.*', 'lm_head.weight']}}",
         "{id: before, uses: eval.perplexity, with: {data: eval, window: 32}}",
         "{id: after, uses: eval.perplexity, inputs: {model: full}, with: {data: eval, window: 32}}"],
        outputs=["full"])
    _, report = run(host, cfg, tmp_path / "run")
    m = metrics(report, "full")
    assert m["val_ppl"] == pytest.approx(np.exp(m["val_loss"]))
    assert metrics(report, "after")["ppl"] < metrics(report, "before")["ppl"]
    for k in ("train_loss", "tokens_per_s", "target_tokens_per_s", "steady_tokens_per_s", "train_tokens", "train_s",
              "peak_rss_bytes", "trainable_params", "steps"):
        assert k in m, k
    ours = load_file(tmp_path / "run" / "full" / "model" / "model.safetensors")
    ref = load_file(base_dir / "model.safetensors")
    assert np.array_equal(ours["model.embed_tokens.weight"], ref["model.embed_tokens.weight"])  # not trainable
    assert not np.array_equal(ours["lm_head.weight"], ref["lm_head.weight"])


# ---------------------------------------------------------------------------------------------
# (c) resume after SIGKILL


def _resume_config(tmp_path, base_dir, kjv_file, name, ckdir, resume="", extra=""):
    extra = (f", resume_from: {resume}" if resume else "") + extra
    return write_config(
        tmp_path, base_dir, {"train": (kjv_file, "0:1500")},
        [f"{{id: ft, uses: finetune.full, with: {{steps: 200, seq_len: 32, batch: 2, accum: 2, lr: 0.001, "
         f"schedule: cosine, warmup: 5, seed: 11, checkpoint_every: 10, checkpoint_dir: {ckdir}{extra}}}}}"],
        outputs=["ft"], name=name)


@pytest.mark.parametrize("optimizer", ["adamw", "adamw_8bit"])
def test_resume_after_sigkill_ends_bitwise_equal(host, models_with_tokenizer, kjv_file, tmp_path, optimizer):
    base_dir = models_with_tokenizer["gpt2_byte_level"]
    opt = f", optimizer: {optimizer}"
    cfg = _resume_config(tmp_path, base_dir, kjv_file, "straight", tmp_path / "ck-straight", extra=opt)
    run(host, cfg, tmp_path / "straight")
    want = load_file(tmp_path / "straight" / "ft" / "model" / "model.safetensors")

    ck = tmp_path / "ck-killed"
    cfg = _resume_config(tmp_path, base_dir, kjv_file, "killed", ck, extra=opt)
    proc = subprocess.Popen([str(host.exe), "--plugins", str(host.plugins), "-q", "run", str(cfg), "--out",
                             str(tmp_path / "killed")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not (ck / "checkpoint-30").is_dir():
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(int(p.name.split("-")[1]) for p in ck.glob("checkpoint-*"))
    assert done and done[-1] < 200, done
    state = load_file(ck / f"checkpoint-{done[-1]}" / "train_state.safetensors")
    moments = {v.dtype for k, v in state.items() if k.startswith("adam_m/")}
    # 8-bit: the moments of tensors of 4096 values or more are bytes, the small ones stay f32
    assert moments == ({np.dtype(np.uint8), np.dtype(np.float32)} if optimizer == "adamw_8bit"
                       else {np.dtype(np.float32)}), moments

    # resumed with gradient checkpointing (what a run out of memory would do): the same bits
    cfg = _resume_config(tmp_path, base_dir, kjv_file, "resumed", tmp_path / "ck-resumed", resume=ck,
                         extra=", gradient_checkpointing: true" + opt)
    _, report = run(host, cfg, tmp_path / "resumed")
    assert metrics(report, "ft")["steps"] == 200
    got = load_file(tmp_path / "resumed" / "ft" / "model" / "model.safetensors")
    assert set(got) == set(want)
    for k in want:
        assert np.array_equal(got[k], want[k]), f"{k} differs after resuming from step {done[-1]}"


def test_sigint_saves_a_checkpoint_to_resume_from(host, models_with_tokenizer, kjv_file, tmp_path):
    base_dir = models_with_tokenizer["gpt2_byte_level"]
    ck = tmp_path / "ck"
    cfg = write_config(tmp_path, base_dir, {"train": (kjv_file, "0:300")},
                       [f"{{id: ft, uses: finetune.full, with: {{steps: 1000000, seq_len: 16, batch: 2, checkpoint_dir: {ck}}}}}"],
                       name="long")
    proc = subprocess.Popen([str(host.exe), "--plugins", str(host.plugins), "-q", "run", str(cfg), "--out",
                             str(tmp_path / "run")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0
    saved = list(ck.glob("checkpoint-*"))
    assert len(saved) == 1 and (saved[0] / "train_state.json").exists(), (saved, err.decode())
    step = int(saved[0].name.split("-")[1])
    assert step > 0 and f"checkpoint saved in {saved[0]}" in err.decode(), err.decode()
    cfg = write_config(tmp_path, base_dir, {"train": (kjv_file, "0:300")},
                       [f"{{id: ft, uses: finetune.full, with: {{steps: {step + 2}, seq_len: 16, batch: 2, "
                        f"checkpoint_dir: {tmp_path / 'ck2'}, resume_from: {ck}}}}}"], name="resume")
    _, report = run(host, cfg, tmp_path / "resumed")
    assert metrics(report, "ft")["steps"] == step + 2


# ---------------------------------------------------------------------------------------------
# (d) bad inputs end to end


def _sft_lines():
    good = [{"prompt": "Who made the heaven?", "response": "God created the heaven and the earth."},
            {"messages": [{"role": "user", "content": "Say light"}, {"role": "assistant", "content": "Let there be light"}]}]
    return [json.dumps(good[0]), "{not json", json.dumps(good[1]), json.dumps({"prompt": 1, "response": "x"}), "",
            json.dumps(good[0])]


def _sft_config(tmp_path, base_dir, data, on_bad, name, seq=48, on_long="truncate"):
    return write_config(tmp_path, base_dir, {"train": (data, None)},
                        [f"{{id: sft, uses: finetune.lora, with: {{format: jsonl-sft, on_bad_line: {on_bad}, "
                         f"on_long: {on_long}, steps: 2, seq_len: {seq}, batch: 2, rank: 2}}}}"], name=name)


@pytest.mark.parametrize("name", TOK_MODELS)
def test_malformed_jsonl_lines_are_skipped_with_their_numbers(host, models_with_tokenizer, tmp_path, name):
    data = tmp_path / "sft.jsonl"
    data.write_text("\n".join(_sft_lines()) + "\n")
    p, report = run(host, _sft_config(tmp_path, models_with_tokenizer[name], data, "skip", "skip"), tmp_path / "skip")
    assert stage_error(report, "sft")[0] == "ok"
    assert "skipped 2 malformed lines: 2, 4" in p.stderr.decode(), p.stderr.decode()


def test_malformed_jsonl_line_fails_naming_it(host, models_with_tokenizer, tmp_path):
    data = tmp_path / "sft.jsonl"
    data.write_text("\n".join(_sft_lines()) + "\n")
    p, report = run(host, _sft_config(tmp_path, models_with_tokenizer["gpt2_byte_level"], data, "fail", "fail"),
                    tmp_path / "fail", check=False)
    assert p.returncode != 0
    status, err = stage_error(report, "sft")
    assert status == "failed" and "line 2: not JSON" in err, err


@pytest.mark.parametrize("content,fmt", [("", "text"), ("\n\n", "jsonl-sft"), ("x", "text")])
def test_empty_dataset_is_an_error(host, models_with_tokenizer, tmp_path, content, fmt):
    data = tmp_path / "empty.txt"
    data.write_text(content)
    cfg = write_config(tmp_path, models_with_tokenizer["gpt2_byte_level"], {"train": (data, None)},
                       [f"{{id: ft, uses: finetune.full, with: {{format: {fmt}, steps: 1, seq_len: 16}}}}"])
    p, report = run(host, cfg, tmp_path / "run", check=False)
    assert p.returncode != 0
    assert "the dataset is empty" in stage_error(report, "ft")[1]


def test_record_longer_than_the_context(host, models_with_tokenizer, tmp_path):
    base_dir = models_with_tokenizer["gpt2_byte_level"]
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"prompt": "In the beginning " * 40, "response": "amen"}) + "\n" +
                    json.dumps({"prompt": "Hi", "response": "And it was so."}) + "\n")
    p, report = run(host, _sft_config(tmp_path, base_dir, data, "fail", "trunc", seq=32), tmp_path / "trunc")
    assert stage_error(report, "sft")[0] == "ok"
    assert "1 record longer than seq_len + 1 = 33 tokens was truncated" in p.stderr.decode(), p.stderr.decode()
    p, report = run(host, _sft_config(tmp_path, base_dir, data, "fail", "long", seq=32, on_long="fail"),
                    tmp_path / "long", check=False)
    status, err = stage_error(report, "sft")
    assert status == "failed" and "line 1" in err and "longer than seq_len + 1" in err, err
    # seq_len past the model's context (128)
    cfg = write_config(tmp_path, base_dir, {"train": (data, None)},
                       ["{id: ft, uses: finetune.full, with: {format: jsonl-sft, steps: 1, seq_len: 512}}"], name="ctx")
    p, report = run(host, cfg, tmp_path / "ctx", check=False)
    assert "longer than the model's context (128)" in stage_error(report, "ft")[1]


def test_lora_target_matching_no_module_is_an_error(host, models_with_tokenizer, kjv_file, tmp_path):
    cfg = write_config(tmp_path, models_with_tokenizer["gpt2_byte_level"], {"train": (kjv_file, "0:100")},
                       ["{id: lora, uses: finetune.lora, with: {targets: [c_attn, q_proj], steps: 1, seq_len: 16}}"])
    p, report = run(host, cfg, tmp_path / "run", check=False)
    status, err = stage_error(report, "lora")
    assert status == "failed" and "q_proj" in err, err


def test_resume_from_a_checkpoint_of_another_model_is_refused(host, models_with_tokenizer, kjv_file, tmp_path):
    base_dir = models_with_tokenizer["gpt2_byte_level"]
    other = tmp_path / "other"
    other.mkdir()
    t = load_file(base_dir / "model.safetensors")
    t = {k: v + np.float32(0.01) for k, v in t.items()}
    save_file(t, other / "model.safetensors", metadata={"format": "pt"})
    for f in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (other / f).write_bytes((base_dir / f).read_bytes())
    stage = "{{id: ft, uses: finetune.full, with: {{steps: 2, seq_len: 16, checkpoint_every: 2, checkpoint_dir: {ck}{r}}}}}"
    ck = tmp_path / "ck"
    run(host, write_config(tmp_path, base_dir, {"train": (kjv_file, "0:100")}, [stage.format(ck=ck, r="")], name="a"),
        tmp_path / "a")
    assert (ck / "checkpoint-2" / "train_state.json").exists()
    cfg = write_config(tmp_path, other, {"train": (kjv_file, "0:100")},
                       [stage.format(ck=tmp_path / "ck2", r=f", resume_from: {ck}")], name="b")
    p, report = run(host, cfg, tmp_path / "b", check=False)
    status, err = stage_error(report, "ft")
    assert status == "failed" and "another model" in err, err


def _limit_file_size(limit):
    def pre():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() fails with EFBIG instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return pre


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(host, models_with_tokenizer, kjv_file, tmp_path):
    base_dir = models_with_tokenizer["gpt2_byte_level"]
    ck = tmp_path / "ck"

    def config(name, steps, ckdir, resume=None):
        extra = f", resume_from: {resume}" if resume else ""
        stage = (f"{{id: ft, uses: finetune.full, with: {{steps: {steps}, seq_len: 16, checkpoint_every: 2, "
                 f"checkpoint_dir: {ckdir}{extra}}}}}")
        return write_config(tmp_path, base_dir, {"train": (kjv_file, "0:100")}, [stage], name=name)

    run(host, config("a", 2, ck), tmp_path / "a")
    good = ck / "checkpoint-2"
    before = {p.name: p.read_bytes() for p in good.iterdir()}
    # a second run resumes from it, trains two more steps and cannot write its checkpoint: the
    # limit is below the state file's size (weights and two AdamW moments: ~3x the model)
    limit = (base_dir / "model.safetensors").stat().st_size * 2
    cmd = [str(host.exe), "--plugins", str(host.plugins), "-q", "run", str(config("b", 4, ck, good)), "--out",
           str(tmp_path / "b")]
    p = subprocess.run(cmd, capture_output=True, timeout=600, preexec_fn=_limit_file_size(limit))
    assert p.returncode != 0
    err = p.stderr.decode()
    assert "File too large" in err and "checkpoint at step 4 failed" in err, err
    assert sorted(x.name for x in ck.iterdir()) == ["checkpoint-2"], "a partial checkpoint was left behind"
    assert {x.name: x.read_bytes() for x in good.iterdir()} == before
    # and it still resumes
    _, report = run(host, config("c", 4, tmp_path / "ck3", ck), tmp_path / "c")
    assert metrics(report, "ft")["steps"] == 4


# ---------------------------------------------------------------------------------------------
# pretraining from scratch


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_pretrain_from_scratch_loads_in_transformers(host, tokenizers, kjv_file, tmp_path, family):
    tok = tokenizers["byte_level_bpe" if family == "gpt2" else "llama_bpe"]
    kv = ", kv_heads: 2" if family == "llama" else ""
    cfg = write_config(tmp_path, None, {"train": (kjv_file, "0:500")},
                       [f"{{id: pre, uses: finetune.pretrain, with: {{family: {family}, layers: 2, width: 32, heads: 4{kv}, "
                        f"context: 64, tokenizer: {tok}, steps: 3, seq_len: 32, batch: 2, lr: 0.001}}}}"],
                       outputs=["pre"])
    _, report = run(host, cfg, tmp_path / "run")
    d = tmp_path / "run" / "pre" / "model"
    assert (d / "tokenizer.json").read_bytes() == (tok / "tokenizer.json").read_bytes()
    cfgj = json.loads((d / "config.json").read_text())
    assert cfgj["vocab_size"] == 2000
    import transformers

    cls = transformers.GPT2LMHeadModel if family == "gpt2" else transformers.LlamaForCausalLM
    model = cls.from_pretrained(d, torch_dtype="float32").eval()
    ids = text_ids(d, "In the beginning")
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    ours = our_logits(host, d, ids, tmp_path)
    assert np.abs(ours - ref).max() < LOGIT_ATOL


# ---------------------------------------------------------------------------------------------
# (e) the loop's controls: early stopping, the progress line


def _val_losses(stderr):
    return [(int(s), float(v)) for s, v in re.findall(r"step (\d+): val_loss ([0-9.]+)", stderr)]


def hf_early_stop_step(vals, patience):
    """Where transformers' EarlyStoppingCallback (threshold 0, lower is better) stops: after the
    evaluation that makes `patience` in a row without a strictly better value; None: never."""
    best, bad = None, 0
    for step, v in vals:
        if best is None or v < best:
            best, bad = v, 0
        else:
            bad += 1
        if bad >= patience:
            return step
    return None


@pytest.mark.parametrize("lr,patience", [(0.0, 2), (0.05, 1), (0.05, 2)])
def test_early_stopping_stops_where_transformers_early_stopping_callback_would(
        host, models_with_tokenizer, kjv_file, tmp_path, lr, patience):
    """lr 0: every validation equals the first, so the run stops after patience more; lr 0.05 on
    the tiny model: validation losses go up and down, and the stop must land where the rule says."""
    base_dir = models_with_tokenizer["gpt2_byte_level"]
    cfg = write_config(
        tmp_path, base_dir, {"train": (kjv_file, "0:1500"), "eval": (kjv_file, "1500:1600")},
        [f"{{id: ft, uses: finetune.full, with: {{steps: 60, seq_len: 32, batch: 4, lr: {lr}, schedule: constant, "
         f"eval_data: eval, eval_every: 2, patience: {patience}, seed: 5}}}}"])
    p = host.run("run", cfg, "--out", tmp_path / "run", "--jobs", "1")
    err = p.stderr.decode()
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    vals = _val_losses(err)
    steps = metrics(report, "ft")["steps"]
    want = hf_early_stop_step(vals, patience)
    if lr == 0.0:
        assert want == 2 * (patience + 1), vals
    assert want is not None, f"no early stop in {vals}: pick settings where the rule stops"
    print(f"lr {lr} patience {patience}: stopped at {steps}; val_loss {vals}")
    assert steps == want, (steps, want, vals)
    assert f"early stop at step {want}: no better val_loss in {patience} evaluations" in err, err[-2000:]
    assert vals[-1][0] == want  # no validation after the stop


def test_progress_line_shows_step_loss_lr_tokens_per_s_and_eta(host, models_with_tokenizer, kjv_file, tmp_path):
    """On a terminal the live line is redrawn every 200 ms; under a pseudo-terminal we read the
    snapshots: steps count up to the total, the learning rate is transformers'
    get_cosine_schedule_with_warmup at that step, and tokens/s and ETA agree with the clock."""
    import fcntl
    import os
    import pty
    import struct
    import termios

    from transformers import get_cosine_schedule_with_warmup

    base_dir = models_with_tokenizer["gpt2_byte_level"]
    total, warmup, lr, batch, seq = 600, 20, 3e-3, 4, 32
    cfg = write_config(
        tmp_path, base_dir, {"train": (kjv_file, "0:3000")},
        [f"{{id: ft, uses: finetune.full, with: {{steps: {total}, seq_len: {seq}, batch: {batch}, lr: {lr}, "
         f"schedule: cosine, warmup: {warmup}, seed: 1}}}}"])
    master, slave = pty.openpty()
    # a wide terminal: the live line is cut at the terminal's width
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 300, 0, 0))
    proc = subprocess.Popen([str(host.exe), "--plugins", str(host.plugins), "run", str(cfg), "--out",
                             str(tmp_path / "run"), "--jobs", "1"], stdout=subprocess.DEVNULL, stderr=slave)
    os.close(slave)
    chunks = []
    while True:
        try:
            b = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not b:
            break
        chunks.append(b)
    os.close(master)
    assert proc.wait(timeout=600) == 0
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", b"".join(chunks).decode(errors="replace"))
    snaps = [(int(k), int(n), float(loss), float(r), float(tps), float(eta), float(el)) for k, n, loss, r, tps, eta, el in
             re.findall(r"step (\d+)/(\d+) loss ([0-9.]+) lr ([0-9.e+-]+) ([0-9]+) tok/s ETA ([0-9]+)s\s+([0-9.]+)s",
                        text)]
    assert len(snaps) >= 3, text[-2000:]
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sched = get_cosine_schedule_with_warmup(opt, warmup, total)
    rates = []
    for _ in range(total):
        rates.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    prev = 0
    for k, n, loss, r, tps, eta, el in snaps:
        assert n == total and prev <= k <= total
        prev = k
        assert r == pytest.approx(rates[k - 1], rel=5e-3, abs=1e-12), (k, r, rates[k - 1])
        assert 0 < loss < 20
        # tokens/s is over the loop's time, which the stage's elapsed time (the line's end) contains
        assert tps * el >= k * batch * seq * 0.99 - 1, (k, tps, el)
        # ETA: the loop's time per step so far times the steps left, at most el / k per step
        assert eta <= el / k * (total - k) * 1.01 + 1, (k, eta, el)
    assert snaps[-1][0] > snaps[0][0], "the step count never moved"
