"""llmopt's tokenizer against HF tokenizers on tokenizers trained by the `tokenizers` fixture:
encode (whole KJV text, adversarial strings), decode, and ill-formed UTF-8 input.

Interface under test (llmopt-host help tokenize):
  llmopt-host tokenize DIR --file F                 {"ids": [...], "n": N}: Tokenizer.encode(text).ids
  llmopt-host tokenize DIR --decode --text '[ids]'  the text, as is: Tokenizer.decode(ids,
                                                    skip_special_tokens=False); --no-special: True"""

import functools
import json
import shutil
import unicodedata
from pathlib import Path

import pytest
from tokenizers import Tokenizer

from conftest import TOKENIZER_SPECS

ADVERSARIAL = {
    "empty": "",
    "one_space": " ",
    "emoji": "I 😀 love 🎉 fire🔥!",
    "emoji_zwj_family": "family: 👨‍👩‍👧‍👦 and 👩‍❤️‍💋‍👨 end",
    "emoji_skin_tones": "waves 👋🏻👋🏼👋🏽👋🏾👋🏿 thumbs👍🏿",
    "emoji_flags_keycaps": "flags 🇫🇷🇯🇵🏴‍☠️ keycap 1️⃣ #️⃣",
    "cjk": "太初有道，道与神同在，道就是神。日本語のテキスト、한국어 텍스트",
    "arabic": "في البدء كان الكلمة، والكلمة كان عند الله",
    "hebrew_rtl_marks": "\u200fבְּרֵאשִׁית בָּרָא\u200e end",
    "combining_marks": "e\u0301 a\u0300\u0316 Z\u0351\u0308\u034c\u0364\u036b\u0309 n\u0303o\u0308",
    "decomposed_vs_precomposed": "caf\u00e9 cafe\u0301 \u212b \u00c5 A\u030a",
    # for Qwen2's NFC: conjoining jamo (L V T, and an LV syllable + T), marks out of canonical
    # order, composition exclusions and singletons, a leading non-starter, blocked marks
    "hangul_jamo": "\u1100\u1161\u11a8 \u1112\u1161\u11ab\u1100\u1173\u11af \uac00\u11a8 \u1100\u1161 \u11a8",
    "mark_reordering": "a\u0302\u0323 q\u0307\u0323 \u1e0b\u0323 \u0958\u2126\u212a\u0344 \u0301lead x\u0315\u0300\u05ae\u0300 a\u0301\u0301",
    "vietnamese_nfd": unicodedata.normalize("NFD", "Ti\u1ebfng Vi\u1ec7t c\u00f3 d\u1ea5u, \u0111\u01b0\u1ee3c kh\u00f4ng?"),
    "control_chars": "a\x00b\x01c\x07d\x1be\x7ff\x85g\u2028h\u2029i",
    "tabs_crs": "col1\tcol2\t\tcol3\r\nline2\rline3\n\n\n\tindented\r\n",
    "whitespace_runs": "a" + " " * 50 + "b" + "\t " * 20 + "c\n" + "\n" * 30 + "   d   ",
    "unicode_spaces": "a\u00a0b\u2003c\u3000d\u200be\ufeff",
    "special_endoftext_inside": "In the beginning<|endoftext|>was the Word <|endoftext|><|endoftext|>",
    "special_llama_inside": "<s>In the beginning</s> was <unk> the <s> Word<s>",
    "special_partial": "<|endoftext| <|endof <s </s <0x41> <0xFF>",
    "numbers": "Ge1:1 3.14159 1,000,000 007 12345678901234567890 -42 1e10 ½ ² ٣ ۴ १२",
    "contractions_case": "I'm you're HE'LL she'd It's DON'T 'tis o'er",
    # (?i:'s) of Llama 3's Split: U+017F (long s) folds to s; U+212A (Kelvin) to k, which no
    # contraction has; an apostrophe at the end
    "contractions_folding": "it'\u017f thou'\u017ft 'Re 'rE 'LL 'lL \u212a'\u212a 'x '",
    # Llama 3's \p{N}{1,3} and its other alternatives around numbers, newlines and spaces
    "digit_runs_and_newlines": "1 12 123 1234 12345 \u0663\u0664\u0665\u0666 x1y22z333 \n \n\n \r\n\t\n  \n  a\t\tb \t!",
    "punct_before_letters": "(hello) [world]! ,comma .dot ;x 'quote \"dq\" \u00bfqu\u00e9? \u00a1s\u00ed! \tlead\n\nword",
    "mixed_scripts": "Hello мир κόσμε 世界 עולם दुनिया 🌍 done",
    # the case-aware Splits (tekken, o200k): upper then lower runs, all caps, titlecase (U+01C5),
    # modifier letters (Lm), marks inside and before words, contractions after words, slashes
    "letter_case_runs": "HELLO World iPhone McDonald's CamelCaseWORDS ABCdef aBC \u01c5ungla \u01c4X "
                        "\u02b0ab A\u02b0B \u03a3\u038a\u03a3\u03a5\u03a6\u039f\u03a3 E\u0301COLE e\u0301cole "
                        "!\u0301x THEY'RE they'LL Don'T x'd path/to/file\n/ a//\r\n//b \u0301\u0301 .\u0301",
    "punctuation_runs": "?!?!...---,,,;;;:::'''\"\"\"((()))[[[]]]{{{}}}",
    "long_word": "Mahershalalhashbaz" * 20,
    "private_use_and_astral": "\ue000\U000f0000 \U0001d400\U0001d401 \U00020000",
    "surrogate_range_neighbours": "\ud7ff\ue000\uffff\ufffd",
    "kjv_verse": "Ge1:1 In the beginning God created the heaven and the earth.\n",
}


def parse_ids(stdout):
    v = json.loads(stdout)
    assert isinstance(v, dict) and isinstance(v.get("ids"), list), f"{stdout[:300]!r}"
    assert all(isinstance(x, int) for x in v["ids"]) and v.get("n", len(v["ids"])) == len(v["ids"])
    return v["ids"]


def our_encode(host, tok_dir, data, tmp_path):
    f = tmp_path / "input.txt"
    f.write_bytes(data)
    return parse_ids(host.run("tokenize", tok_dir, "--file", f).stdout)


def our_decode(host, tok_dir, ids, skip_special=False):
    flags = ["--no-special"] if skip_special else []
    return host.run("tokenize", tok_dir, "--decode", *flags, "--text", json.dumps(ids)).stdout


@pytest.fixture
def tokenize(host):
    host.require_command("tokenize")
    return host


def _first_diff(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def assert_same_ids(got, want, tok, what):
    if got == want:
        return
    i = _first_diff(got, want)
    pytest.fail(
        f"{what}: {len(got)} ids vs {len(want)} from tokenizers; first difference at {i}: "
        f"ours {got[max(0, i - 3):i + 5]} vs {want[max(0, i - 3):i + 5]} "
        f"(tokens {[tok.id_to_token(x) for x in want[max(0, i - 3):i + 5]]})"
    )


TOKENIZERS = list(TOKENIZER_SPECS)


@functools.lru_cache(maxsize=None)
def reference_kjv_ids(tokenizer_json, kjv_path):
    """tokenizers' ids of the whole KJV text (about 3 s each, so once per session)."""
    text = Path(kjv_path).read_text(encoding="utf-8")
    return Tokenizer.from_file(str(tokenizer_json)).encode(text).ids


@pytest.mark.parametrize("name", TOKENIZERS)
def test_reference_tokenizer_round_trips_kjv(tokenizers, kjv_file, kjv_text, name):
    # The fixture itself: trained to the intended size, and lossless on its training text.
    ref = Tokenizer.from_file(str(tokenizers[name] / "tokenizer.json"))
    assert ref.get_vocab_size() == 2000
    assert ref.decode(reference_kjv_ids(tokenizers[name] / "tokenizer.json", kjv_file)) == kjv_text


def test_reference_llama_tokenizer_has_llamas_layout(tokenizers):
    ref = Tokenizer.from_file(str(tokenizers["llama_bpe"] / "tokenizer.json"))
    assert [ref.id_to_token(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    assert [ref.id_to_token(3 + b) for b in range(256)] == [f"<0x{b:02X}>" for b in range(256)]
    # "<s>", the prepended "▁", then 中 (not in the vocabulary) as its UTF-8 bytes
    assert ref.encode("中").ids == [1, ref.token_to_id("▁"), 3 + 0xE4, 3 + 0xB8, 3 + 0xAD]


@pytest.mark.parametrize("name", TOKENIZERS)
def test_encode_whole_kjv_matches_tokenizers(tokenize, tokenizers, kjv_file, name):
    ref = Tokenizer.from_file(str(tokenizers[name] / "tokenizer.json"))
    want = reference_kjv_ids(tokenizers[name] / "tokenizer.json", kjv_file)
    got = parse_ids(tokenize.run("tokenize", tokenizers[name], "--file", kjv_file).stdout)
    assert_same_ids(got, want, ref, "whole KJV")


@pytest.mark.parametrize("case", list(ADVERSARIAL))
@pytest.mark.parametrize("name", TOKENIZERS)
def test_encode_adversarial_matches_tokenizers(tokenize, tokenizers, name, case, tmp_path):
    text = ADVERSARIAL[case]
    ref = Tokenizer.from_file(str(tokenizers[name] / "tokenizer.json"))
    got = our_encode(tokenize, tokenizers[name], text.encode(), tmp_path)
    assert_same_ids(got, ref.encode(text).ids, ref, repr(text))


@pytest.mark.parametrize("pattern", ["llama3", "qwen2", "tekken", "o200k"])
def test_split_pre_tokenizer_cuts_where_tokenizers_does(tokenize, tokenizers, kjv_text, pattern, tmp_path):
    """Llama 3's (and Qwen2's, Mistral's tekken, GPT-4o's o200k) Split regex, written out by
    hand, against tokenizers' own regex engine: a vocabulary of the byte alphabet plus every
    piece tokenizers cuts the adversarial strings and a KJV passage into, with ignore_merges,
    gives each of those pieces one id, so the ids show every cut; a piece cut elsewhere falls
    apart into bytes."""
    from tokenizers import Regex, pre_tokenizers

    from conftest import LLAMA3_SPLIT, O200K_SPLIT, QWEN2_SPLIT, TEKKEN_SPLIT

    rx = {"llama3": LLAMA3_SPLIT, "qwen2": QWEN2_SPLIT, "tekken": TEKKEN_SPLIT, "o200k": O200K_SPLIT}[pattern]
    j = json.loads((tokenizers["llama3_bpe"] / "tokenizer.json").read_text())
    j["pre_tokenizer"]["pretokenizers"][0]["pattern"] = {"Regex": rx}
    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(rx), behavior="isolated", invert=False),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    texts = [t for t in ADVERSARIAL.values() if "<|" not in t] + [kjv_text[:20000]]
    vocab = {c: i for i, c in enumerate(sorted(set(pre_tokenizers.ByteLevel.alphabet())))}
    for t in texts:
        for piece, _ in pre.pre_tokenize_str(t):
            vocab.setdefault(piece, len(vocab))
    for a in j["added_tokens"]:
        a["id"] = len(vocab)
        vocab[a["content"]] = a["id"]
    j["model"]["vocab"], j["model"]["merges"] = vocab, []
    j["post_processor"]["processors"][1]["special_tokens"]["<|begin_of_text|>"]["ids"] = [vocab["<|begin_of_text|>"]]
    d = tmp_path / "tok"
    d.mkdir()
    (d / "tokenizer.json").write_text(json.dumps(j))
    shutil.copy(tokenizers["llama3_bpe"] / "tokenizer_config.json", d)
    ref = Tokenizer.from_file(str(d / "tokenizer.json"))
    for t in texts:
        want = ref.encode(t).ids
        assert len(want) == 1 + len(pre.pre_tokenize_str(t))  # <|begin_of_text|>, then a piece an id
        assert_same_ids(our_encode(tokenize, d, t.encode(), tmp_path), want, ref, repr(t[:60]))


@pytest.mark.parametrize("skip_special", [False, True], ids=["specials", "no_special"])
@pytest.mark.parametrize("case", list(ADVERSARIAL) + ["kjv_prefix"])
@pytest.mark.parametrize("name", TOKENIZERS)
def test_decode_matches_tokenizers(tokenize, tokenizers, kjv_text, name, case, skip_special):
    ref = Tokenizer.from_file(str(tokenizers[name] / "tokenizer.json"))
    text = kjv_text[:8000] if case == "kjv_prefix" else ADVERSARIAL[case]
    ids = ref.encode(text).ids
    want = ref.decode(ids, skip_special_tokens=skip_special).encode()
    got = our_decode(tokenize, tokenizers[name], ids, skip_special)
    assert got == want, f"ids {ids[:40]}: ours {got[:200]!r}, tokenizers {want[:200]!r}"


INVALID_UTF8 = {
    "lone_continuation": b"abc\x80def",
    "truncated_3byte": b"x\xe2\x82 y",
    "truncated_at_end": b"In the beginning\xf0\x9f\x98",
    "overlong_slash": b"a\xc0\xafb",
    "surrogate_encoded": b"\xed\xa0\x80\xed\xbf\xbf",
    "beyond_u10ffff": b"\xf4\x90\x80\x80 \xf8\x88\x80\x80\x80",
    "ff_fe_bytes": b"\xff\xfe\xff text \xfe",
    "mixed_with_valid": "émoji 😀".encode() + b"\x80\x81" + "中文".encode() + b"\xc3",
    "random_bytes": bytes((i * 37 + 11) % 256 for i in range(600)),
}


def _byte_level_decoder(tok_json):
    """GPT-2's bytes_to_unicode, inverted: token string -> bytes."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    char_to_byte = {chr(c): b for b, c in zip(bs, cs)}
    id_to_token = {i: t for t, i in tok_json["model"]["vocab"].items()}
    specials = {a["id"] for a in tok_json["added_tokens"]}

    def decode(ids):
        assert not specials.intersection(ids), "a special token from ill-formed input"
        return b"".join(bytes(char_to_byte[c] for c in id_to_token[i]) for i in ids)

    return decode


@pytest.mark.parametrize("name", ["byte_level_bpe", "qwen2_bpe"])  # qwen2_bpe: through NFC
@pytest.mark.parametrize("case", list(INVALID_UTF8))
def test_invalid_utf8_byte_level_round_trips_bytes(tokenize, tokenizers, case, name, tmp_path):
    d = tokenizers[name]
    decode = _byte_level_decoder(json.loads((d / "tokenizer.json").read_text()))
    ids = our_encode(tokenize, d, INVALID_UTF8[case], tmp_path)
    assert decode(ids) == INVALID_UTF8[case]


@pytest.mark.parametrize("case", list(INVALID_UTF8))
def test_invalid_utf8_byte_level_decode_gives_the_bytes_back(tokenize, tokenizers, case,
                                                             tmp_path):
    d = tokenizers["byte_level_bpe"]
    ids = our_encode(tokenize, d, INVALID_UTF8[case], tmp_path)
    assert our_decode(tokenize, d, ids) == INVALID_UTF8[case]


@pytest.mark.parametrize("case", list(INVALID_UTF8))
def test_invalid_utf8_llama_encodes_without_crashing(tokenize, tokenizers, case, tmp_path):
    d = tokenizers["llama_bpe"]
    n_vocab = Tokenizer.from_file(str(d / "tokenizer.json")).get_vocab_size()
    ids = our_encode(tokenize, d, INVALID_UTF8[case], tmp_path)  # fails on a non-zero exit
    assert ids and all(0 <= i < n_vocab for i in ids)


@pytest.mark.parametrize("case", list(INVALID_UTF8))
def test_invalid_utf8_llama_encodes_as_tokenizers_does_the_replaced_text(tokenize, tokenizers, case, tmp_path):
    """tokenizers takes text, not bytes: what a caller gives it for ill-formed UTF-8 is the text
    Python (and Rust's from_utf8_lossy) make of it, U+FFFD for each maximal ill-formed subpart.
    The Llama-style tokenizer (no byte-level pre-tokenizer) must encode the bytes to those ids."""
    d = tokenizers["llama_bpe"]
    ref = Tokenizer.from_file(str(d / "tokenizer.json"))
    want = ref.encode(INVALID_UTF8[case].decode("utf-8", errors="replace")).ids
    assert_same_ids(our_encode(tokenize, d, INVALID_UTF8[case], tmp_path), want, ref, repr(INVALID_UTF8[case]))


@pytest.mark.parametrize("name", TOKENIZERS)
def test_decode_whole_kjv_matches_tokenizers(tokenize, tokenizers, kjv_file, kjv_text, name, tmp_path):
    ref = Tokenizer.from_file(str(tokenizers[name] / "tokenizer.json"))
    ids = reference_kjv_ids(tokenizers[name] / "tokenizer.json", kjv_file)
    f = tmp_path / "ids.json"
    f.write_text(json.dumps(ids))
    got = tokenize.run("tokenize", tokenizers[name], "--decode", "--file", f).stdout
    want = ref.decode(ids, skip_special_tokens=False).encode()
    assert got == want, f"first difference at byte {next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)}"
