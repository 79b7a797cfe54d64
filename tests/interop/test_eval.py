"""The eval plugin's stages and the generate command against transformers, on the checkpoints
that carry the trained KJV tokenizers: eval.choice's acc/acc_norm and per-question picks against
the same log-likelihood scoring in Python; eval.generate's greedy completions and `llmopt-host
generate`'s streamed text, --stop and --print-ids against model.generate; eval.speed's metrics;
bad model directories and data entries end to end; and configs/eval-example.yaml."""

import json
import os
import random
import re
import shutil
import struct

import pytest
import torch

from conftest import ROOT, _llama_config, load_reference_model, save_random_model

TOK_MODELS = ["gpt2_byte_level", "llama_llama_bpe"]
PROMPTS = ["In the beginning God", "And the LORD said unto Moses,"]
GEN_TOKENS = 10


def run_pipeline(host, tmp_path, yaml_text, name="p", check=True):
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml_text)
    out = tmp_path / f"{name}-run"
    p = host.run("-q", "run", cfg, "--out", out, "--jobs", "2", check=check)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").exists() else None
    return p, out, report


def stage_metrics(stage):
    return {m["name"]: m["value"] for m in stage["metrics"]}


def hf_tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


def hf_decode(tok, ids):
    # clean_up_tokenization_spaces rewrites " ," to "," and the like: an English heuristic that
    # is no part of the tokenizer (tokenizers' decode has none); llmopt does not claim it.
    return tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def hf_greedy(model, ids, n=GEN_TOKENS, streamer=None):
    t = torch.tensor([ids])
    with torch.no_grad():
        # synced_gpus=False: see test_models.py (torch 1.13 under Python 3.11)
        out = model.generate(t, attention_mask=torch.ones_like(t), max_new_tokens=n,
                             min_new_tokens=n, do_sample=False, synced_gpus=False,
                             eos_token_id=None, pad_token_id=0, streamer=streamer)
    new = out[0, len(ids):].tolist()
    assert len(new) == n
    return new


# ---------------------------------------------------------------------------------------------
# eval.choice

N_QUESTIONS = 20
N_CHOICES = 4


def kjv_verses(kjv_text):
    """Verse texts without their reference ("Ge1:1 In the ..." -> "In the ...")."""
    out = []
    for line in kjv_text.splitlines():
        ref, _, verse = line.partition(" ")
        if re.match(r"^[0-9A-Za-z]+[0-9]+:[0-9]+$", ref) and verse.strip():
            out.append(" ".join(verse.split()))
    return out


def make_questions(kjv_text):
    """N_QUESTIONS questions: context = the first half of a verse, choices = its true second half
    and the second halves of N_CHOICES-1 other verses, in a shuffled order. Half the questions
    end the context with the space (eval.choice moves it to the choice, as the harness does),
    half start every choice with it."""
    rng = random.Random(20240611)
    verses = [v for v in kjv_verses(kjv_text) if 8 <= len(v.split()) <= 22]
    picked = rng.sample(verses, N_QUESTIONS * N_CHOICES)
    halves = []
    for v in picked:
        w = v.split()
        k = len(w) // 2
        halves.append((" ".join(w[:k]), " ".join(w[k:])))
    questions = []
    for q in range(N_QUESTIONS):
        context, truth = halves[q]
        others = [halves[N_QUESTIONS + q * (N_CHOICES - 1) + j][1] for j in range(N_CHOICES - 1)]
        choices = [truth] + others
        rng.shuffle(choices)
        label = choices.index(truth)
        if q % 2 == 0:
            context += " "
        else:
            choices = [" " + c for c in choices]
        questions.append({"context": context, "choices": choices, "label": label})
    return questions


def reference_choice_scores(model_dir, questions):
    """[[(summed log-prob, per byte) for each choice] for each question], scored as
    plugins/eval/choice.c does: tokens of context+choice (specials added), the split at the
    length of the encoding of the context without its trailing spaces (at most n-1, at least
    1), the log-softmax in double precision of the positions before each continuation token."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    model = load_reference_model(model_dir)
    n_positions = model.config.max_position_embeddings if hasattr(
        model.config, "max_position_embeddings") else model.config.n_positions
    scores = []
    for q in questions:
        row = []
        for choice in q["choices"]:
            ctx = q["context"]
            n_ctx = len(tok.encode(ctx.rstrip(" ")).ids)
            ids = tok.encode(ctx + choice).ids
            assert len(ids) <= n_positions
            n_ctx = max(1, min(n_ctx, len(ids) - 1))
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
            ll = sum(logp[j - 1, ids[j]].item() for j in range(n_ctx, len(ids)))
            row.append((ll, ll / max(1, len(choice.encode()))))
        scores.append(row)
    return scores


def first_argmax(values):
    best = 0
    for i, v in enumerate(values):
        if v > values[best]:
            best = i
    return best


def test_choice_questions_are_well_formed(kjv_text):
    qs = make_questions(kjv_text)
    assert len(qs) == N_QUESTIONS
    for q in qs:
        assert len(q["choices"]) == N_CHOICES and len(set(q["choices"])) == N_CHOICES
        assert 0 <= q["label"] < N_CHOICES
    assert len({q["label"] for q in qs}) > 1, "every label the same: a constant guess would pass"
    assert any(q["context"].endswith(" ") for q in qs) and any(q["choices"][0].startswith(" ") for q in qs)


@pytest.mark.parametrize("name", TOK_MODELS)
def test_choice_matches_transformers(host, models_with_tokenizer, kjv_text, tmp_path, name):
    model_dir = models_with_tokenizer[name]
    questions = make_questions(kjv_text)
    (tmp_path / "choice.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))

    # Per-question picks: eval.choice reports aggregates only, so each (question, choice c) is
    # also a one-question data entry whose label is c: its acc is 1 exactly when llmopt picks c.
    data = [f"  all: {tmp_path / 'choice.jsonl'}"]
    stages = ["  - {id: all, uses: eval.choice, with: {data: all}}"]
    for i, q in enumerate(questions):
        for c in range(N_CHOICES):
            f = tmp_path / f"q{i}_c{c}.jsonl"
            f.write_text(json.dumps(dict(q, label=c)) + "\n")
            data.append(f"  q{i}_c{c}: {f}")
            stages.append(f"  - {{id: q{i}_c{c}, uses: eval.choice, with: {{data: q{i}_c{c}}}}}")
    yaml_text = (f"name: choice\nmodel: {model_dir}\ndata:\n" + "\n".join(data) +
                 "\nstages:\n" + "\n".join(stages) + "\n")
    _, _, report = run_pipeline(host, tmp_path, yaml_text)
    by_id = {s["id"]: s for s in report["stages"]}
    assert all(s["status"] == "ok" for s in report["stages"])

    picks, picks_norm = [], []
    for i in range(N_QUESTIONS):
        accs = [stage_metrics(by_id[f"q{i}_c{c}"]) for c in range(N_CHOICES)]
        hit = [c for c in range(N_CHOICES) if accs[c]["acc"] == 1]
        hit_norm = [c for c in range(N_CHOICES) if accs[c]["acc_norm"] == 1]
        assert len(hit) == 1 and len(hit_norm) == 1, f"question {i}: acc by label {accs}"
        picks.append(hit[0])
        picks_norm.append(hit_norm[0])

    scores = reference_choice_scores(model_dir, questions)
    ref_picks = [first_argmax([s[0] for s in row]) for row in scores]
    ref_picks_norm = [first_argmax([s[1] for s in row]) for row in scores]
    labels = [q["label"] for q in questions]

    def detail(i):
        return f"question {i}: {questions[i]}\n  transformers (sum, per byte): {scores[i]}"

    diff = [i for i in range(N_QUESTIONS) if picks[i] != ref_picks[i]]
    assert not diff, f"acc picks differ: llmopt {picks}, transformers {ref_picks}\n" + \
        "\n".join(detail(i) for i in diff)
    diff = [i for i in range(N_QUESTIONS) if picks_norm[i] != ref_picks_norm[i]]
    assert not diff, f"acc_norm picks differ: llmopt {picks_norm}, transformers " \
        f"{ref_picks_norm}\n" + "\n".join(detail(i) for i in diff)

    got = stage_metrics(by_id["all"])
    assert got["questions"] == N_QUESTIONS
    want_acc = sum(p == lab for p, lab in zip(ref_picks, labels)) / N_QUESTIONS
    want_norm = sum(p == lab for p, lab in zip(ref_picks_norm, labels)) / N_QUESTIONS
    assert got["acc"] == pytest.approx(want_acc, abs=1e-9)
    assert got["acc_norm"] == pytest.approx(want_norm, abs=1e-9)


# ---------------------------------------------------------------------------------------------
# eval.generate


@pytest.mark.parametrize("name", TOK_MODELS)
def test_generate_stage_greedy_matches_transformers(host, models_with_tokenizer, tmp_path, name):
    model_dir = models_with_tokenizer[name]
    tok = hf_tokenizer(model_dir)
    model = load_reference_model(model_dir)
    want = [hf_decode(tok, hf_greedy(model, tok(p).input_ids)) for p in PROMPTS]
    assert all(want), want

    prompts = ", ".join(json.dumps(p) for p in PROMPTS)
    _, out, report = run_pipeline(
        host, tmp_path, f"name: gen\nmodel: {model_dir}\nstages:\n  - id: gen\n"
        f"    uses: eval.generate\n    with: {{prompts: [{prompts}], greedy: true, "
        f"max_tokens: {GEN_TOKENS}}}\n")
    stage = report["stages"][0]
    assert stage["status"] == "ok"
    assert stage_metrics(stage)["generated_tokens"] == GEN_TOKENS * len(PROMPTS)
    texts = [t["text"] for t in stage.get("texts", [])]
    assert texts == want, f"report.json texts {texts!r}, transformers {want!r}"

    lines = (out / "gen" / "completions.jsonl").read_bytes().decode("utf-8").splitlines()
    recs = [json.loads(ln) for ln in lines]
    assert [r["prompt"] for r in recs] == PROMPTS, f"completions.jsonl: {lines!r}"
    assert [r["completion"] for r in recs] == want
    assert [r["tokens"] for r in recs] == [GEN_TOKENS] * len(PROMPTS)


# ---------------------------------------------------------------------------------------------
# llmopt-host generate


def hf_streamed(model, tok, prompt, n=GEN_TOKENS):
    """What transformers prints for the prompt and its greedy continuation (TextStreamer, prompt
    included), and the new ids."""
    from transformers import TextStreamer

    chunks = []

    class Collect(TextStreamer):
        def on_finalized_text(self, text, stream_end=False):
            chunks.append(text + ("\n" if stream_end else ""))

    streamer = Collect(tok, skip_prompt=False, skip_special_tokens=True,
                       clean_up_tokenization_spaces=False)
    new = hf_greedy(model, tok(prompt).input_ids, n, streamer=streamer)
    return "".join(chunks), new


@pytest.mark.parametrize("prompt", PROMPTS, ids=["genesis", "moses"])
@pytest.mark.parametrize("name", TOK_MODELS)
def test_generate_command_matches_transformers(host, models_with_tokenizer, name, prompt):
    host.require_command("generate")
    model_dir = models_with_tokenizer[name]
    tok = hf_tokenizer(model_dir)
    model = load_reference_model(model_dir)
    want_text, want_ids = hf_streamed(model, tok, prompt)
    assert want_text.startswith(prompt) and len(want_text) > len(prompt) + 1

    common = ["generate", model_dir, "-p", prompt, "--greedy", "--max-tokens", GEN_TOKENS]
    p = host.run(*common, "--print-ids")
    got_ids = json.loads(p.stdout)["ids"]
    assert got_ids == want_ids

    # llmopt streams the bytes of byte-level tokens as they are (a lone byte of a UTF-8
    # sequence stays one byte; see test_tokenizers.py); transformers shows U+FFFD for each.
    got = host.run(*common).stdout.decode("utf-8", errors="replace")
    assert got == want_text, f"llmopt printed {got!r}\ntransformers printed {want_text!r}"


def stop_string(tok, new_ids, prompt, kind):
    """A piece of the greedy continuation to stop at, found first where it was taken, printable
    ASCII, not in the prompt: "in_one_token", the text of one token of 3 or more characters
    (spaces stripped); "across_tokens", 4 characters from 2 before a token boundary to 2 after
    (the stop string begins in a token that is already complete when it is found)."""
    cont = hf_decode(tok, new_ids)
    bounds = [len(hf_decode(tok, new_ids[:k])) for k in range(1, len(new_ids) + 1)]
    for k in range(1, len(new_ids) - 1):
        if kind == "in_one_token":
            piece = cont[bounds[k - 1]:bounds[k]].strip()
            i = cont.find(piece, bounds[k - 1])
            ok = len(piece) >= 3
        else:
            i = bounds[k - 1] - 2
            piece = cont[i:i + 4]
            ok = len(piece) == 4 and piece.strip() == piece
        if (ok and piece.isascii() and piece.isprintable() and cont.find(piece) == i
                and piece not in prompt):
            return piece
    pytest.fail(f"no {kind} stop string in {cont!r}")


@pytest.mark.parametrize("kind", ["in_one_token", "across_tokens"])
@pytest.mark.parametrize("prompt", PROMPTS, ids=["genesis", "moses"])
@pytest.mark.parametrize("name", TOK_MODELS)
def test_generate_command_stops_before_the_stop_string(host, models_with_tokenizer, name, prompt,
                                                       kind):
    host.require_command("generate")
    model_dir = models_with_tokenizer[name]
    tok = hf_tokenizer(model_dir)
    new_ids = hf_greedy(load_reference_model(model_dir), tok(prompt).input_ids)
    stop = stop_string(tok, new_ids, prompt, kind)

    common = ["generate", model_dir, "-p", prompt, "--greedy", "--max-tokens", GEN_TOKENS]
    full = host.run(*common).stdout
    at = full.find(stop.encode(), len(prompt.encode()))
    assert full.startswith(prompt.encode()) and at > 0, f"{stop!r} not in the output {full!r}"
    want = full[:at] + b"\n"
    got = host.run(*common, "--stop", stop).stdout
    assert got == want, f"--stop {stop!r}: llmopt printed {got!r}, want {want!r}"


# ---------------------------------------------------------------------------------------------
# eval.speed


def safetensors_data_bytes(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return sum(t["data_offsets"][1] - t["data_offsets"][0] for t in header.values())


@pytest.fixture(scope="module")
def long_context_model(session_dir):
    """A Llama checkpoint with a 1024-token context: room for the 512-token prefill and for
    decoding after the 128-token prompt."""
    d = session_dir / "models_eval" / "llama_ctx1024"
    if not (d / "model.safetensors").exists():
        save_random_model("LlamaForCausalLM", _llama_config(max_position_embeddings=1024), 7, d)
    return d


@pytest.mark.parametrize("name", TOK_MODELS + ["llama_ctx1024"])
def test_speed_reports_its_metrics(host, models_with_tokenizer, long_context_model, tmp_path,
                                   name):
    model_dir = long_context_model if name == "llama_ctx1024" else models_with_tokenizer[name]
    n_ctx = json.loads((model_dir / "config.json").read_text()).get(
        "max_position_embeddings") or json.loads((model_dir / "config.json").read_text())["n_positions"]
    _, _, report = run_pipeline(
        host, tmp_path, f"name: speed\nmodel: {model_dir}\nstages:\n"
        "  - {id: speed, uses: eval.speed, with: {decode_tokens: 16, repeats: 2}}\n")
    stage = report["stages"][0]
    assert stage["status"] == "ok", stage.get("error")
    m = stage_metrics(stage)
    for k in ("prefill128_tok_s", "decode_tok_s", "peak_rss_bytes", "ttft128_s"):
        assert k in m, f"no {k} among {sorted(m)} (model context {n_ctx})"
        assert m[k] > 0, f"{k} = {m[k]}"
    if n_ctx >= 512:
        assert m.get("prefill512_tok_s", 0) > 0, f"no prefill512_tok_s among {sorted(m)}"
    assert m["ttft128_s"] == pytest.approx(128 / m["prefill128_tok_s"], rel=1e-3)
    assert m["model_bytes"] == safetensors_data_bytes(model_dir / "model.safetensors")
    # on disk: the whole file, header included (the only *.safetensors in the directory)
    assert m["disk_bytes"] == (model_dir / "model.safetensors").stat().st_size
    assert m["peak_rss_bytes"] >= m["model_bytes"]


def test_speed_of_a_model_changed_in_memory_has_no_disk_bytes(host, models_with_tokenizer, tmp_path):
    # a stage's output is not the checkpoint it came from: its size on disk is not known
    _, _, report = run_pipeline(
        host, tmp_path, f"name: speed\nmodel: {models_with_tokenizer['gpt2_byte_level']}\nstages:\n"
        "  - {id: half, uses: quantize.cast, with: {dtype: f16}}\n"
        "  - {id: speed, uses: eval.speed, inputs: {model: half}, with: {decode_tokens: 4, repeats: 1}}\n")
    stage = next(s for s in report["stages"] if s["id"] == "speed")
    assert stage["status"] == "ok", stage.get("error")
    m = stage_metrics(stage)
    assert "model_bytes" in m and "disk_bytes" not in m, sorted(m)


# ---------------------------------------------------------------------------------------------
# Bad input, end to end: a non-zero exit and one stderr line that says where.


def _corrupt_tokenizer(d):
    t = (d / "tokenizer.json").read_text()
    (d / "tokenizer.json").write_text(t[: len(t) // 2])


def _bert(d):
    cfg = json.loads((d / "config.json").read_text())
    cfg["model_type"] = "bert"
    (d / "config.json").write_text(json.dumps(cfg))


def _truncate(d):
    f = d / "model.safetensors"
    os.truncate(f, f.stat().st_size // 2)


def _hidden(d):
    cfg = json.loads((d / "config.json").read_text())
    cfg["hidden_size"] = 2 * cfg["hidden_size"]
    (d / "config.json").write_text(json.dumps(cfg))


MISSING = "model.layers.1.mlp.up_proj.weight"


def _drop_tensor(d):
    from safetensors.numpy import load_file, save_file

    t = load_file(str(d / "model.safetensors"))
    del t[MISSING]
    save_file(t, str(d / "model.safetensors"), metadata={"format": "pt"})


def _shard_without_a_tensor(d):
    # two shards and their index, as save_pretrained(max_shard_size=...) writes, one tensor short
    from safetensors.numpy import load_file, save_file

    t = load_file(str(d / "model.safetensors"))
    (d / "model.safetensors").unlink()
    del t[MISSING]
    names = sorted(t)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for f, ns in shards.items():
        save_file({n: t[n] for n in ns}, str(d / f), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {n: f for f, ns in shards.items() for n in ns}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))


# case: (how to break the directory, the file the message must name, what else it must name)
BAD_MODEL_DIRS = {
    "malformed_tokenizer": (_corrupt_tokenizer, "tokenizer.json", [r"json"]),
    "model_type_bert": (_bert, "config.json", [r"bert"]),
    "truncated_safetensors": (_truncate, "model.safetensors", [r"model\.embed_tokens\.weight|bytes"]),
    # the config's hidden size against the tensors: the first tensor whose shape it contradicts
    "hidden_size_mismatch": (_hidden, "model.safetensors", [r"model\.embed_tokens\.weight", r"\b64\b", r"\b128\b"]),
    "missing_tensor": (_drop_tensor, "model.safetensors", [re.escape(MISSING), r"missing"]),
    "missing_tensor_sharded": (_shard_without_a_tensor, "model.safetensors.index.json",
                               [re.escape(MISSING), r"missing"]),
}


@pytest.mark.parametrize("case", list(BAD_MODEL_DIRS))
def test_generate_refuses_a_bad_model_dir(host, models_with_tokenizer, tmp_path, case):
    host.require_command("generate")
    breaks, names_file, patterns = BAD_MODEL_DIRS[case]
    d = tmp_path / case
    shutil.copytree(models_with_tokenizer["llama_llama_bpe"], d)
    breaks(d)
    p = host.run("generate", d, "-p", "In the beginning", "--greedy", "--max-tokens", 4,
                 check=False)
    err = p.stderr.decode(errors="replace")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert p.returncode != 0 and p.returncode < 128, f"exit {p.returncode}"
    assert p.stdout == b"", f"printed {p.stdout[:200]!r}"
    assert len(lines) == 1, f"want one stderr line, got {err!r}"
    assert str(d) in lines[0], f"the message does not name the model directory: {lines[0]!r}"
    if names_file:
        assert names_file in lines[0], f"the message does not name {names_file}: {lines[0]!r}"
    msg = lines[0].replace(str(d), "MODEL_DIR")  # the patterns must not match the path
    for pat in patterns:
        assert re.search(pat, msg, re.I), f"{pat!r} not in {lines[0]!r}"


def _ppl_config(tmp_path, model_dir, data_line):
    cfg = tmp_path / "ppl.yaml"
    cfg.write_text(f"name: ppl\nmodel: {model_dir}\ndata:\n{data_line}\n"
                   "stages:\n  - {id: ppl, uses: eval.perplexity}\n")
    return cfg


@pytest.mark.parametrize("case", ["missing_file", "bogus_split"])
def test_perplexity_refuses_bad_data_entry(host, models_with_tokenizer, kjv_text, tmp_path, case):
    text = tmp_path / "eval.txt"
    text.write_text(kjv_text[:5000])
    if case == "missing_file":
        data_line = f"  eval: {{path: {tmp_path / 'absent.txt'}, split: \"0:90%\"}}"
        what = [re.escape(str(tmp_path / "absent.txt")), "exist"]
    else:
        data_line = f"  eval: {{path: {text}, split: bogus}}"
        what = ["bogus", "split"]
    cfg = _ppl_config(tmp_path, models_with_tokenizer["llama_llama_bpe"], data_line)
    # line 4 is the data entry; the column is where its value starts
    col = data_line.index("{") + 1
    for cmd in (["validate", cfg], ["-q", "run", cfg, "--out", tmp_path / "run"]):
        p = host.run(*cmd, check=False)
        err = p.stderr.decode(errors="replace")
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert p.returncode == 3, f"{cmd[-1] if cmd[0] == 'validate' else 'run'}: exit " \
            f"{p.returncode}, want 3 (invalid config); stderr {err!r}"
        assert len(lines) == 1, f"want one stderr line, got {err!r}"
        m = re.match(rf"^{re.escape(str(cfg))}:(\d+):(\d+): ", lines[0])
        assert m, f"not file:line:col: {lines[0]!r}"
        assert int(m[1]) == 4 and int(m[2]) >= col, f"points at {m[1]}:{m[2]}: {lines[0]!r}"
        for pat in what:
            assert re.search(pat, lines[0]), f"{pat!r} not in {lines[0]!r}"
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


# ---------------------------------------------------------------------------------------------
# configs/eval-example.yaml


def test_eval_example_config_validates_and_runs(host, models_with_tokenizer, kjv_text, tmp_path):
    example = ROOT / "configs" / "eval-example.yaml"
    text = example.read_text()
    stages = re.findall(r"^\s*uses:\s*(\S+)", text, re.M)
    assert sorted(stages) == ["eval.choice", "eval.generate", "eval.perplexity", "eval.speed"]

    # As shipped, it names a model and data that are not here: validate says so, for each.
    p = host.run("validate", example, check=False)
    err = p.stderr.decode()
    assert p.returncode == 3, err
    assert "model" in err and "data/eval.txt" in err and "data/choice.jsonl" in err, err

    (tmp_path / "eval.txt").write_text(kjv_text[:20000])
    questions = make_questions(kjv_text)[:4]
    (tmp_path / "choice.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    sets = ["--set", f"model={models_with_tokenizer['llama_llama_bpe']}",
            "--set", f"data.eval.path={tmp_path / 'eval.txt'}",
            "--set", f"data.choice={tmp_path / 'choice.jsonl'}"]
    p = host.run("validate", example, *sets)
    assert b"4 stages" in p.stdout and b"ok" in p.stdout, p.stdout

    host.run("-q", "run", example, *sets, "--out", tmp_path / "run", "--jobs", "2")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    by_id = {s["id"]: s for s in report["stages"]}
    assert {s: by_id[s]["status"] for s in by_id} == {s: "ok" for s in ("ppl", "choice", "samples", "speed")}
    assert stage_metrics(by_id["ppl"])["tokens"] > 100
    assert stage_metrics(by_id["choice"])["questions"] == 4
    assert len(by_id["samples"]["texts"]) == 2
    assert (tmp_path / "run" / "samples" / "completions.jsonl").read_text().count("\n") == 2
