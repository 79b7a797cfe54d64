"""Fixtures of the interop tests: the llmopt-host under test, and what the reference tools
(transformers, tokenizers) make for it to be compared on: random-init GPT-2 and Llama
checkpoints and BPE tokenizers trained on the King James Bible. Everything is built once per
session in a temporary directory, with fixed seeds and settings."""

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _path_from_env(name, default):
    p = Path(os.environ.get(name, default))
    return p if p.is_absolute() else ROOT / p


class Host:
    """Runs llmopt-host with the plugin directory under test."""

    def __init__(self, exe, plugins):
        self.exe = exe
        self.plugins = plugins

    def run(self, *args, check=True, timeout=600, input=None):
        cmd = [str(self.exe), "--plugins", str(self.plugins), *map(str, args)]
        p = subprocess.run(cmd, capture_output=True, timeout=timeout, input=input)
        if check and p.returncode != 0:
            pytest.fail(
                f"{' '.join(cmd)[:300]} exited {p.returncode}\n"
                f"stderr: {p.stderr.decode(errors='replace')[-2000:]}"
            )
        return p

    def has_command(self, name):
        p = subprocess.run([str(self.exe), "help", name], capture_output=True, timeout=60)
        return p.returncode == 0

    def require_command(self, name):
        """Skips the calling test when this build has no such command (the C side of an
        interop test may land after the test)."""
        if not self.has_command(name):
            pytest.skip(f"llmopt-host has no '{name}' command yet")

    def has_stage(self, name):
        return self.run("describe", name, check=False).returncode == 0

    def bf16_gemm(self, dtype):
        """Whether the CPU plugin's matmul on weights of llmopt dtype `dtype` (f32, f16, bf16)
        rounds x and W to bf16 at matmul_precision medium (its summary names the AVX-512 BF16
        GEMM); elsewhere medium computes as highest."""
        lines = self.run("plugins").stdout.decode().splitlines()
        return any(l.split()[:3] == ["matmul", "cpu", dtype] and "BF16 GEMM" in l for l in lines)

    def int8_prefill(self, dtype):
        """Whether the CPU plugin's matmul on weights of llmopt dtype `dtype` ("q8_0", "gq4g128s")
        quantizes x per 32 at every row count: its summary says "int8 GEMM" (AVX-512 VNNI: every
        int-path format; AVX2: codes <= 15, so not the 8-bit ones, whose line, like q8_0's, says
        "dequantized tiles"); otherwise only up to 4 rows (decode), and more rows multiply f32 x
        with the dequantized weights. The GQ kernels are listed per bits as "any", so an 8-bit
        GQ follows q8_0's line and the others the 4-bit ones'."""
        if not hasattr(self, "_gemm_lines"):
            lines = self.run("plugins").stdout.decode().splitlines()
            mm = {l.split()[2]: "int8 GEMM" in l for l in lines if l.split()[:2] == ["matmul", "cpu"]}
            self._gemm_lines = (mm.get("q8_0", False), mm.get("q4_0", False))
        eight_bit = dtype == "q8_0" or (dtype.startswith("gq") and dtype[2:dtype.index("g", 2)] == "8")
        return self._gemm_lines[0 if eight_bit else 1]


@pytest.fixture(scope="session")
def host_exe():
    exe = _path_from_env("LLMOPT_HOST", "build/host/llmopt-host")
    if not os.access(exe, os.X_OK):
        pytest.fail(f"no llmopt-host at {exe}: build it, or set LLMOPT_HOST")
    return exe


@pytest.fixture(scope="session")
def plugin_dir():
    d = _path_from_env("LLMOPT_PLUGINS", "build/plugins")
    if not d.is_dir():
        pytest.fail(f"no plugin directory {d}: build it, or set LLMOPT_PLUGINS")
    return d


@pytest.fixture(scope="session")
def host(host_exe, plugin_dir):
    return Host(host_exe, plugin_dir)


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("interop")


# ---------------------------------------------------------------------------------------------
# Models: random init, float32, fixed seed. Norm weights and biases start as constants (1 or 0),
# which would hide a missing gain or bias in our forward; they get noise too. No eos/bos/pad ids,
# so greedy generation always runs to max_new_tokens on both sides.

INIT_STD = 0.2  # logits spread over a few units, so argmax and 1e-4 comparisons mean something


def _gpt2_config(vocab_size=300, **kw):
    from transformers import GPT2Config

    return GPT2Config(
        n_layer=2, n_embd=64, n_head=4, vocab_size=vocab_size, n_positions=128,
        initializer_range=INIT_STD, bos_token_id=None, eos_token_id=None, **kw,
    )


def _llama_config(config_class="LlamaConfig", **kw):
    """A tiny Llama-family config; Qwen2Config and MistralConfig take the same names."""
    import transformers

    base = dict(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
        intermediate_size=176, vocab_size=300, max_position_embeddings=128, rope_theta=10000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=False, initializer_range=INIT_STD,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )
    base.update(kw)
    return getattr(transformers, config_class)(**base)


LLAMA3_SCALING = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 64}

MODEL_SPECS = {
    # name: (class name, config factory, seed)
    "gpt2": ("GPT2LMHeadModel", _gpt2_config, 1),
    # GPT-2's attention-scale options (the Stanford CRFM Mistral GPT-2s scale by the inverse layer
    # index); GGUF has no key for either, so gguf_write refuses them
    "gpt2_scaled_by_layer": ("GPT2LMHeadModel", lambda: _gpt2_config(scale_attn_by_inverse_layer_idx=True), 9),
    "gpt2_unscaled_attn": ("GPT2LMHeadModel", lambda: _gpt2_config(scale_attn_weights=False), 10),
    "llama_gqa": ("LlamaForCausalLM", lambda: _llama_config(), 2),
    "llama_tied_odd_heads": (
        "LlamaForCausalLM",
        lambda: _llama_config(hidden_size=60, num_attention_heads=5, num_key_value_heads=5,
                              head_dim=12, intermediate_size=160, tie_word_embeddings=True),
        3,
    ),
    "llama_rope_linear": (
        "LlamaForCausalLM",
        lambda: _llama_config(rope_scaling={"type": "linear", "factor": 2.0}),
        4,
    ),
    # Llama 3.1's rope scaling: with head size 16 and an original context of 64, pair 0 keeps its
    # frequency, pairs 1-2 are on the ramp, 3-7 turn 4x slower
    "llama_rope_llama3": (
        "LlamaForCausalLM",
        lambda: _llama_config(rope_theta=10000.0, rope_scaling=LLAMA3_SCALING),
        6,
    ),
    # transformers' Qwen2: biases on q/k/v only, rope_theta 1e6, tied (as Qwen2.5 0.5B)
    "qwen2": ("Qwen2ForCausalLM",
              lambda: _llama_config("Qwen2Config", rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True), 11),
    # q/k/v/o and gate/up/down projections with biases (Qwen2-like attention, mlp_bias)
    "llama_bias": ("LlamaForCausalLM", lambda: _llama_config(attention_bias=True, mlp_bias=True), 5),
}


def save_random_model(cls_name, config, seed, out_dir):
    import torch
    import transformers

    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(config).float().eval()
    with torch.no_grad():
        for p in model.parameters():
            if torch.all(p == p.flatten()[0]):  # constant-initialised: norms, biases
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


@pytest.fixture(scope="session")
def models(session_dir):
    """{name: directory of a transformers checkpoint (config.json + model.safetensors)}"""
    root = session_dir / "models"
    out = {}
    for name in MODEL_SPECS:
        d = root / name
        if not (d / "model.safetensors").exists():
            cls_name, make_config, seed = MODEL_SPECS[name]
            save_random_model(cls_name, make_config(), seed, d)
        out[name] = d
    return out


# Half-precision checkpoints: a float32 spec above cast whole (norm gains and biases too) to the
# dtype and saved, as save_pretrained does for a model loaded with torch_dtype=float16/bfloat16.
# name: (float32 spec, torch dtype name)
HALF_MODEL_SPECS = {
    "gpt2_float16": ("gpt2", "float16"),
    "gpt2_bfloat16": ("gpt2", "bfloat16"),
    "llama_gqa_float16": ("llama_gqa", "float16"),
    "llama_gqa_bfloat16": ("llama_gqa", "bfloat16"),
}


@pytest.fixture(scope="session")
def half_models(session_dir):
    """{name: directory of a float16 or bfloat16 transformers checkpoint}"""
    import torch
    import transformers

    out = {}
    for name, (base, dtype) in HALF_MODEL_SPECS.items():
        d = session_dir / "half_models" / name
        if not (d / "model.safetensors").exists():
            cls_name, make_config, seed = MODEL_SPECS[base]
            save_random_model(cls_name, make_config(), seed, d / "f32")
            model = getattr(transformers, cls_name).from_pretrained(d / "f32", torch_dtype=getattr(torch, dtype))
            model.save_pretrained(d, safe_serialization=True)
            shutil.rmtree(d / "f32")
        out[name] = d
    return out


def load_reference_model(model_dir):
    """The transformers model of a checkpoint, float32, eval mode, eager attention."""
    import transformers

    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    cls = getattr(transformers, cfg["architectures"][0])
    return cls.from_pretrained(model_dir, torch_dtype="float32").eval()


# ---------------------------------------------------------------------------------------------
# Text: the King James Bible from Debian's bible-kjv, one verse a line ("Ge1:1 In the ...").


@pytest.fixture(scope="session")
def kjv_file(session_dir):
    path = session_dir / "kjv.txt"
    if not path.exists():
        exe = shutil.which("bible") or "/usr/bin/bible"
        # -f turns the default pretty-printing off: one verse per line, with its reference.
        p = subprocess.run([exe, "-f", "Gen1:1-Rev22:21"], capture_output=True, timeout=120)
        if p.returncode != 0 or len(p.stdout) < 4_000_000:
            pytest.fail(f"bible -f Gen1:1-Rev22:21 failed ({p.returncode}, {len(p.stdout)} bytes): "
                        f"is bible-kjv installed? {p.stderr.decode(errors='replace')}")
        path.write_bytes(p.stdout)
    return path


@pytest.fixture(scope="session")
def kjv_text(kjv_file):
    return kjv_file.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# Tokenizers trained with HF tokenizers on the KJV text; each a directory with tokenizer.json
# and tokenizer_config.json.

TOKENIZER_VOCAB = 2000


def _train_byte_level_bpe(tok, lines, specials):
    """Trains tok's BPE over the byte-level alphabet, the special tokens first."""
    from tokenizers import pre_tokenizers, trainers

    trainer = trainers.BpeTrainer(vocab_size=TOKENIZER_VOCAB, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(lines, trainer)


def _train_byte_level(lines):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)  # as GPT-2's tokenizer.json
    _train_byte_level_bpe(tok, lines, ["<|endoftext|>"])
    config = {
        "tokenizer_class": "GPT2TokenizerFast", "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        "add_bos_token": False, "add_prefix_space": False, "model_max_length": 1024,
    }
    return tok, config


def _train_llama_style(lines):
    """Llama's layout: <unk> <s> </s>, then the 256 byte-fallback tokens <0x00>..<0xFF>, then
    the learned pieces; Metaspace pre-tokenizer; Llama's decoder chain; "<s> $A" template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = ["<unk>", "<s>", "</s>"]
    n_bytes = 256
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=TOKENIZER_VOCAB - n_bytes, special_tokens=specials,
                                  show_progress=False)
    tok.train_from_iterator(lines, trainer)

    # The trainer does not make byte-fallback tokens: put them in the vocabulary after the
    # specials, as in Llama's tokenizer.model, and shift the learned pieces up.
    j = json.loads(tok.to_str())
    learned = sorted(((i, t) for t, i in j["model"]["vocab"].items() if t not in specials))
    vocab = {t: i for i, t in enumerate(specials)}
    vocab.update({f"<0x{b:02X}>": len(specials) + b for b in range(n_bytes)})
    for k, (_, t) in enumerate(learned):
        vocab[t] = len(specials) + n_bytes + k
    j["model"]["vocab"] = vocab
    for a in j["added_tokens"]:
        a["id"] = vocab[a["content"]]
    tok = Tokenizer.from_str(json.dumps(j))
    tok.decoder = decoders.Sequence([
        decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
        decoders.Strip(" ", 1, 0),
    ])
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", vocab["<s>"])],
    )
    config = {
        "tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "add_bos_token": True, "add_eos_token": False, "legacy": False,
        "model_max_length": 2048,
    }
    return tok, config


LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
# the case-aware ones: Mistral's tekken (Mistral NeMo's tokenizer.json) and GPT-4o's o200k
_UPPER, _LOWER = r"[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]", r"[\p{Ll}\p{Lm}\p{Lo}\p{M}]"
_CONTRACTIONS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
TEKKEN_SPLIT = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+|[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*|\p{{N}}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
O200K_SPLIT = (rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}*{_LOWER}+{_CONTRACTIONS}|"
               rf"[^\r\n\p{{L}}\p{{N}}]?{_UPPER}+{_LOWER}*{_CONTRACTIONS}|\p{{N}}{{1,3}}|"
               r" ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _train_llama3_style(lines):
    """Llama 3's layout: byte-level BPE whose words come from a Split with tiktoken's regex (then
    ByteLevel without its own regex), ignore_merges, <|begin_of_text|> added by the template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    _train_byte_level_bpe(tok, lines, specials)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                      special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))]),
    ])
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
        "eos_token": "<|end_of_text|>", "model_max_length": 131072,
    }
    return tok, config


QWEN2_SPLIT = LLAMA3_SPLIT.replace(r"\p{N}{1,3}", r"\p{N}")


def _train_qwen2_style(lines):
    """Qwen2's layout: Llama 3's with digits split one at a time, merges applied (no
    ignore_merges), no bos, <|endoftext|> as eos (Qwen2's base models), and Qwen2's NFC
    normalizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    _train_byte_level_bpe(tok, lines, specials)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "<|endoftext|>",
              "model_max_length": 32768}
    return tok, config


def _train_smollm_style(lines):
    """SmolLM2's (and StarCoder's) layout: GPT-2's byte-level BPE behind a Digits pre-tokenizer
    that isolates every digit; <|endoftext|> first, as bos and eos; no bos added."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    _train_byte_level_bpe(tok, lines, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    config = {"tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
              "unk_token": "<|endoftext|>", "add_prefix_space": False, "model_max_length": 8192}
    return tok, config


TOKENIZER_SPECS = {"byte_level_bpe": _train_byte_level, "llama_bpe": _train_llama_style,
                   "llama3_bpe": _train_llama3_style, "qwen2_bpe": _train_qwen2_style,
                   "smollm_bpe": _train_smollm_style}


@pytest.fixture(scope="session")
def tokenizers(session_dir, kjv_text):
    """{name: directory holding tokenizer.json + tokenizer_config.json}"""
    out = {}
    lines = kjv_text.splitlines(keepends=True)
    for name, train in TOKENIZER_SPECS.items():
        d = session_dir / "tokenizers" / name
        if not (d / "tokenizer.json").exists():
            d.mkdir(parents=True, exist_ok=True)
            tok, config = train(lines)
            tok.save(str(d / "tokenizer.json"))
            (d / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
        out[name] = d
    return out



# Checkpoints that read text (eval, generate -p): each holds one of the trained tokenizers and
# has its 2000-token vocabulary.  name: (class name, config factory, seed, tokenizer)
MODEL_WITH_TOKENIZER_SPECS = {
    "gpt2_byte_level": (
        "GPT2LMHeadModel",
        lambda: _gpt2_config(vocab_size=TOKENIZER_VOCAB),
        5, "byte_level_bpe",
    ),
    "llama_llama_bpe": (
        "LlamaForCausalLM", lambda: _llama_config(vocab_size=TOKENIZER_VOCAB), 6, "llama_bpe",
    ),
    # Llama 3.1's shape: llama3 rope scaling and Llama 3's kind of tokenizer
    "llama3_llama_bpe": (
        "LlamaForCausalLM", lambda: _llama_config(vocab_size=TOKENIZER_VOCAB, rope_scaling=LLAMA3_SCALING), 7,
        "llama3_bpe",
    ),
    # Qwen2.5 0.5B's kind: q/k/v biases, rope_theta 1e6, tied, Qwen2's kind of tokenizer
    "qwen2_qwen2_bpe": (
        "Qwen2ForCausalLM",
        lambda: _llama_config("Qwen2Config", vocab_size=TOKENIZER_VOCAB, rope_theta=1000000.0, rms_norm_eps=1e-6,
                              tie_word_embeddings=True), 8, "qwen2_bpe",
    ),
    # SmolLM2's kind: a tied Llama with SmolLM's tokenizer (digits one at a time)
    "smollm_smollm_bpe": (
        "LlamaForCausalLM", lambda: _llama_config(vocab_size=TOKENIZER_VOCAB, tie_word_embeddings=True), 9,
        "smollm_bpe",
    ),
}


@pytest.fixture(scope="session")
def models_with_tokenizer(session_dir, tokenizers):
    """{name: checkpoint directory with tokenizer.json + tokenizer_config.json beside it}"""
    out = {}
    for name, (cls_name, make_config, seed, tok_name) in MODEL_WITH_TOKENIZER_SPECS.items():
        d = session_dir / "models_with_tokenizer" / name
        if not (d / "model.safetensors").exists():
            save_random_model(cls_name, make_config(), seed, d)
            for f in ("tokenizer.json", "tokenizer_config.json"):
                shutil.copy(tokenizers[tok_name] / f, d / f)
        out[name] = d
    return out


# ---------------------------------------------------------------------------------------------
# Run-directory and checkpoint readers shared by the stage tests.

def stage_metrics(rep, title=None):
    """{stage id: {metric name: value}} of a report.json; printed under `title` when given."""
    m = {s["id"]: {x["name"]: x["value"] for x in s["metrics"]} for s in rep["stages"]}
    if title:
        print(f"\n{title} metrics:")
        for sid, mm in m.items():
            print(f"  {sid:11s} " + " ".join(f"{k}={v:.6g}" for k, v in sorted(mm.items())))
    return m


def read_safetensors(path):
    """{name: (dtype, shape, raw bytes)} of a .safetensors file, read by hand."""
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    data = raw[8 + n:]
    return {k: (v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]]) for k, v in header.items()}


# ---------------------------------------------------------------------------------------------
# transformers' GPTQ loader (optimum + auto-gptq, requirements-gptq.txt), shared by the export tests.

def transformers_gptq_available():
    """transformers' GPTQ loader needs optimum and auto-gptq; None when they are not importable."""
    try:
        import auto_gptq  # noqa: F401
        import optimum  # noqa: F401
        from transformers.utils import is_auto_gptq_available, is_optimum_available
    except Exception:  # noqa: BLE001 (auto-gptq raises more than ImportError when half installed)
        return None
    return is_auto_gptq_available() and is_optimum_available()


class MatmulInFloat32:
    """Stands for `torch` inside auto-gptq's qlinear_cuda_old: matmul records its weight operand
    (AutoGPTQ's own dequantization, in the scales' dtype) and multiplies in float32, since Debian's
    torch 1.13 has no float16 matmul on the CPU."""

    def __init__(self, torch):
        self._torch, self.weights = torch, []

    def __getattr__(self, name):
        return getattr(self._torch, name)

    def matmul(self, x, w):
        self.weights.append(w)
        return self._torch.matmul(x.float(), w.float())


# ---------------------------------------------------------------------------------------------
# Activations as the CPU plugin's integer kernels see them

def quantize_activations_per_32(module, args):
    """A forward pre-hook doing to x what the CPU plugin does before its integer dot products with
    quantized weights: ggml's Q8_0 rule per 32 along the last dimension in float32, d = amax / 127
    and codes roundf(x * (1 / d)) (half away from zero); x becomes d * code."""
    import torch

    x = args[0]
    xb = x.reshape(-1, x.shape[-1] // 32, 32)
    d = xb.abs().amax(-1, keepdim=True) / 127.0
    v = xb * torch.where(d != 0, 1.0 / d, torch.zeros_like(d))
    code = torch.sign(v) * torch.floor(v.abs() + 0.5)
    return ((code * d).reshape(x.shape).to(x.dtype),) + tuple(args[1:])


def int_path_dtype(name):
    """Whether llmopt's weight dtype `name` takes the integer kernels (x quantized per 32): the
    ggml block types, and GQ groups that are a whole number of 32 weights ("gq4g128a")."""
    if name in ("q8_0", "q4_0", "q4_1"):
        return True
    if name.startswith("gq"):
        return int(name[name.index("g", 2) + 1: -1]) % 32 == 0
    return False


class ActivationsAsLlmopt:
    """with ActivationsAsLlmopt(host, model, {module name: llmopt dtype}, rows): the inputs of
    those modules of a torch model are quantized per 32 where llmopt's CPU plugin quantizes them
    for a forward of `rows` tokens at once (decode: rows <= 4, always; more rows: when it has the
    int8 GEMM), so a reference on the dequantized weights computes what llmopt computes."""

    def __init__(self, host, model, dtypes, rows):
        mods = dict(model.named_modules())
        self.targets = [mods[n] for n, dt in dtypes.items()
                        if int_path_dtype(dt) and (rows <= 4 or host.int8_prefill(dt))]
        self.hooks = []

    def __enter__(self):
        self.hooks = [m.register_forward_pre_hook(quantize_activations_per_32) for m in self.targets]
        return self

    def __exit__(self, *exc):
        for h in self.hooks:
            h.remove()
        self.hooks = []
        return False


def assert_logits_match_int8(got, want, plain, atol):
    """Logits of llmopt (`got`, [tokens, vocab]) against a reference that quantizes the same
    activations (`want`, ActivationsAsLlmopt) and one that does not (`plain`). Quantized
    activations are a step function: where x * (1 / d) sits within float rounding of a half, two
    correct implementations that sum in different orders can pick neighbouring codes, and that
    token's logits move by a fraction of what quantizing the activations moves them. So: at least
    three tokens in four agree to atol (a wrong format, scale or layout moves every token), and
    every token stays within half of the activation quantization's own effect (or atol where no
    activation was quantized: then want is plain)."""
    import numpy as np

    d = np.abs(np.asarray(got, dtype=np.float64) - want).max(axis=-1)
    effect = float(np.abs(np.asarray(plain, dtype=np.float64) - want).max())
    exact = int((d <= atol).sum())
    assert exact * 4 >= 3 * len(d), f"{exact} of {len(d)} tokens within {atol}: per-token max |diff| {d}"
    assert d.max() <= max(atol, 0.5 * effect), (
        f"max |diff| {d.max():.3g} beyond half the activation quantization's effect {effect:.3g}")
