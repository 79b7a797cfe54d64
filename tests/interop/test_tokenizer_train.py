"""llmopt's byte-level BPE training (host/runtime/tokenizer_train.c) against HF tokenizers, on the
King James Bible with the settings of configs/pretrain-kjv.yaml's tokenizer (vocab 4096,
min_frequency 2, "<|endoftext|>"):
  - HF Tokenizer.from_str loads the tokenizer.json llmopt writes, and its encoding of the whole
    text equals llmopt-host tokenize's, and decodes back to the text;
  - the merges and vocabulary equal those of tokenizers' BpeTrainer with a ByteLevel
    (add_prefix_space=False) pre-tokenizer and the byte alphabet on the same text, which the
    trainer is written to reproduce (same pair counts, same tie-break, same id layout);
  - training takes seconds, not minutes.

The C side is <build>/tests/unit/tok_train (tests/interop/tok_train.c): text on stdin,
tokenizer.json at PATH (tokenizer_config.json beside it), {"train_s": seconds} on stdout."""

import json
import subprocess
import time
from pathlib import Path

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

VOCAB = 4096
MIN_FREQUENCY = 2
SPECIAL = "<|endoftext|>"
FIRST = 500


@pytest.fixture(scope="module")
def driver(host_exe):
    exe = Path(host_exe).parent.parent / "tests" / "unit" / "tok_train"
    if not exe.exists():
        pytest.skip(f"no tokenizer training driver at {exe}")
    return exe


@pytest.fixture(scope="module")
def ours(driver, kjv_file, tmp_path_factory):
    """(directory, tokenizer.json text, training seconds) of llmopt's tokenizer."""
    d = tmp_path_factory.mktemp("kjv-bpe")
    with open(kjv_file, "rb") as f:
        p = subprocess.run([str(driver), str(d / "tokenizer.json"), "--vocab", str(VOCAB), "--min-frequency",
                            str(MIN_FREQUENCY), "--special", SPECIAL], stdin=f, capture_output=True, timeout=600)
    if p.returncode != 0:
        pytest.fail(f"tok_train exited {p.returncode}: {p.stderr.decode(errors='replace')[-2000:]}")
    return d, (d / "tokenizer.json").read_text(encoding="utf-8"), json.loads(p.stdout)["train_s"]


@pytest.fixture(scope="module")
def reference(kjv_text):
    """(tokenizer.json as a dict, training seconds) of tokenizers' BpeTrainer on the same text."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, min_frequency=MIN_FREQUENCY, special_tokens=[SPECIAL],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    t0 = time.perf_counter()
    tok.train_from_iterator([kjv_text], trainer)  # one sequence, as llmopt reads it
    return json.loads(tok.to_str()), time.perf_counter() - t0


def merge_strings(model):
    return [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]


def test_hf_loads_our_tokenizer_and_encodes_kjv_as_llmopt_does(host, ours, kjv_file, kjv_text):
    d, text, _ = ours
    hf = Tokenizer.from_str(text)
    expected = hf.encode(kjv_text).ids
    got = json.loads(host.run("tokenize", d, "--file", kjv_file).stdout)["ids"]
    assert len(got) == len(expected)
    first = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), None)
    assert first is None, (f"first difference at token {first}: "
                           f"ours {got[first:first + 5]}, HF {expected[first:first + 5]}")
    assert hf.decode(expected) == kjv_text
    assert len(expected) < len(kjv_text.encode()) / 3, "4096 tokens should compress KJV more than 3 bytes a token"


def test_special_token_is_id_zero_and_kept_whole(ours):
    hf = Tokenizer.from_str(ours[1])
    assert hf.token_to_id(SPECIAL) == 0
    ids = hf.encode(f"In the beginning{SPECIAL}God").ids
    assert ids.count(0) == 1


def test_merges_and_vocab_equal_tokenizers_bpe_trainer(ours, reference):
    mine = json.loads(ours[1])["model"]
    ref = reference[0]["model"]
    a, b = merge_strings(mine), merge_strings(ref)
    agree = sum(x == y for x, y in zip(a[:FIRST], b[:FIRST]))
    print(f"\nfirst {FIRST} merges: {agree} agree with BpeTrainer; merges {len(a)} (HF {len(b)}); "
          f"training {ours[2]:.3f} s (HF {reference[1]:.3f} s)")
    assert agree == FIRST
    assert a == b
    assert mine["vocab"] == ref["vocab"]


def test_training_kjv_takes_seconds(ours):
    assert ours[2] < 20, f"training took {ours[2]:.1f} s"
