"""Writes the loader seeds of fuzz_gguf (tests/fuzz/corpus/fuzz_gguf/load-*.gguf) with the `gguf`
package's GGUFWriter: a tiny Llama and a tiny GPT-2 (hidden 32, one block, vocabulary 8) whose
tensors cover every type the loader maps (f32, f16, bf16, q8_0, q4_0, q4_1), the q/k un-permute,
the GPT-2 transposes (float) and kept [out, in] rows (quantized), the tied GPT-2 head, and both
tokenizer kinds (gpt2 BPE with merges, llama SentencePiece with scores and types), and a Llama
with Q4_K/Q5_K/Q6_K tensors (dequantized on load), and the Llama again with llama3 rope scaling's
rope_freqs.weight. Each is a few KB, under scripts/fuzz.sh's
-max_len. Usage: python tests/fuzz/gguf_seeds.py OUT_DIR"""

import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as QT
from gguf import GGUFWriter
from gguf.quants import quantize

C, FF, V, CTX = 32, 32, 8, 16
rng = np.random.default_rng(5)


def w(*shape):
    return (rng.standard_normal(shape) * 0.1).astype(np.float32)


def add(g, name, arr, qt):
    if qt in (QT.Q8_0, QT.Q4_0, QT.Q4_1):
        g.add_tensor(name, quantize(arr, qt), raw_dtype=qt)
    elif qt == QT.F16:
        g.add_tensor(name, arr.astype(np.float16))
    elif qt == QT.BF16:
        g.add_tensor(name, quantize(arr, QT.BF16), raw_dtype=QT.BF16)
    else:
        g.add_tensor(name, arr)


def llama(path, llama3=False):
    g = GGUFWriter(str(path), "llama")
    g.add_context_length(CTX)
    g.add_embedding_length(C)
    g.add_block_count(1)
    g.add_feed_forward_length(FF)
    g.add_head_count(2)
    g.add_head_count_kv(1)
    g.add_layer_norm_rms_eps(1e-5)
    g.add_rope_freq_base(10000.0)
    g.add_tokenizer_model("llama")
    g.add_token_list(["<unk>", "<s>", "</s>", "\u2581a", "\u2581b", "a", "b", "<0x41>"])
    g.add_token_scores([0.0, 0.0, 0.0, -1.0, -2.0, -3.0, -4.0, 0.0])
    g.add_token_types([2, 3, 3, 1, 1, 1, 1, 6])
    g.add_bos_token_id(1)
    g.add_eos_token_id(2)
    add(g, "token_embd.weight", w(V, C), QT.F16)
    add(g, "output_norm.weight", w(C) + 1, QT.F32)
    add(g, "output.weight", w(V, C), QT.Q8_0)
    add(g, "blk.0.attn_norm.weight", w(C) + 1, QT.F32)
    add(g, "blk.0.attn_q.weight", w(C, C), QT.Q8_0)
    add(g, "blk.0.attn_k.weight", w(C // 2, C), QT.Q4_0)
    add(g, "blk.0.attn_v.weight", w(C // 2, C), QT.Q4_1)
    add(g, "blk.0.attn_output.weight", w(C, C), QT.F16)
    add(g, "blk.0.ffn_norm.weight", w(C) + 1, QT.F32)
    add(g, "blk.0.ffn_gate.weight", w(FF, C), QT.BF16)
    add(g, "blk.0.ffn_up.weight", w(FF, C), QT.Q4_0)
    add(g, "blk.0.ffn_down.weight", w(C, FF), QT.F32)
    if llama3:  # Llama 3.1's rope scaling as llama.cpp's converter writes it (factor 4, ramp 16..64)
        f = []
        for i in range(0, C // 2, 2):
            wl = 2 * np.pi * 10000.0 ** (i / (C // 2))
            s = (64 / wl - 1) / 3
            f.append(1.0 if wl < 16 else 4.0 if wl > 64 else 1 / ((1 - s) / 4 + s))
        add(g, "rope_freqs.weight", np.array(f, dtype=np.float32), QT.F32)
    write(g)


def gpt2(path):
    g = GGUFWriter(str(path), "gpt2")
    g.add_context_length(CTX)
    g.add_embedding_length(C)
    g.add_block_count(1)
    g.add_feed_forward_length(FF)
    g.add_head_count(2)
    g.add_layer_norm_eps(1e-5)
    g.add_tokenizer_model("gpt2")
    g.add_tokenizer_pre("gpt-2")
    g.add_token_list(["a", "b", "c", "\u0120", "ab", "\u0120a", "abc", "<|endoftext|>"])
    g.add_token_types([1, 1, 1, 1, 1, 1, 1, 3])
    g.add_token_merges(["a b", "\u0120 a", "ab c"])
    g.add_eos_token_id(7)
    emb = w(V, C)
    add(g, "token_embd.weight", emb, QT.F32)
    add(g, "position_embd.weight", w(CTX, C), QT.F16)
    add(g, "output_norm.weight", w(C) + 1, QT.F32)
    add(g, "output_norm.bias", w(C), QT.F32)
    add(g, "output.weight", emb, QT.F32)  # tied: the converter writes the embedding again
    add(g, "blk.0.attn_norm.weight", w(C) + 1, QT.F32)
    add(g, "blk.0.attn_norm.bias", w(C), QT.F32)
    add(g, "blk.0.attn_qkv.weight", w(3 * C, C), QT.Q4_0)
    add(g, "blk.0.attn_qkv.bias", w(3 * C), QT.F32)
    add(g, "blk.0.attn_output.weight", w(C, C), QT.F32)
    add(g, "blk.0.attn_output.bias", w(C), QT.F32)
    add(g, "blk.0.ffn_norm.weight", w(C) + 1, QT.F32)
    add(g, "blk.0.ffn_norm.bias", w(C), QT.F32)
    add(g, "blk.0.ffn_up.weight", w(FF, C), QT.Q8_0)
    add(g, "blk.0.ffn_up.bias", w(FF), QT.F32)
    add(g, "blk.0.ffn_down.weight", w(C, FF), QT.F16)
    add(g, "blk.0.ffn_down.bias", w(C), QT.F32)
    write(g)


def kquant(path):
    """k-quant tensors (imported as f32): few rows of one 256-weight super-block each, so the
    file stays small; the shapes do not fit the config (arch_from_model refuses the model), which
    the loader itself does not check."""
    g = GGUFWriter(str(path), "llama")
    g.add_embedding_length(256)
    g.add_block_count(1)
    g.add_feed_forward_length(256)
    g.add_head_count(2)
    g.add_head_count_kv(2)
    sizes = {QT.Q4_K: 144, QT.Q5_K: 176, QT.Q6_K: 210}
    for name, qt, rows in (("token_embd.weight", QT.Q6_K, 8), ("output_norm.weight", QT.Q5_K, 1),
                           ("blk.0.attn_q.weight", QT.Q4_K, 4), ("blk.0.attn_k.weight", QT.Q5_K, 4),
                           ("blk.0.ffn_down.weight", QT.Q6_K, 2)):
        b = rng.integers(0, 256, size=(rows, sizes[qt]), dtype=np.uint8)
        g.add_tensor(name, b if rows > 1 else b.reshape(-1), raw_dtype=qt)
    write(g)


def write(g):
    g.write_header_to_file()
    g.write_kv_data_to_file()
    g.write_tensors_to_file()
    g.close()


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    llama(out / "load-llama-mixed.gguf")
    llama(out / "load-llama3-rope.gguf", llama3=True)
    gpt2(out / "load-gpt2-mixed.gguf")
    kquant(out / "load-llama-kquant.gguf")
