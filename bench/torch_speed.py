#!/usr/bin/env python3
"""PyTorch CPU side of the llmopt speed bench (bench/run.sh runs it; see bench/README.md).

  torch_speed.py make DIR             GPT2LMHeadModel(GPT2Config()) with random weights (seed 0),
                                      save_pretrained(DIR, safe_serialization=True) in float32
  torch_speed.py make-llama DIR       LlamaForCausalLM with random weights (seed 0) of about the same
                                      size: 12 layers, hidden 768, 12 heads over 4 KV heads (GQA),
                                      MLP 2048 (SwiGLU), vocabulary 32000, untied head; float32
  torch_speed.py make-llama3-1b DIR   LlamaForCausalLM of Llama 3.2 1B's shape (16 layers, hidden
                                      2048, 32 heads over 8 KV heads of 64, MLP 8192, vocabulary
                                      128256, tied, llama3 rope scaling factor 32) with random
                                      weights (seed 0), in bfloat16 as Meta ships it
  torch_speed.py load DIR             import, from_pretrained, one forward of one token; prints the
                                      seconds of each and the peak RSS (run it in a fresh process)
  torch_speed.py speed DIR [--threads 2] [--repeats 5] [--decode 128] [--prompt 128] [--prefill 512]
                      [--dynamic-int8]     the same on torch's dynamic int8 (every Linear, LM head too)
                      [--dtype bfloat16]   the weights in that dtype (default float32); any GPT-2 or
                                           Llama checkpoint (AutoModelForCausalLM)

`speed` prints `key=value` lines:
  prefill512_lasttok_s   transformer(ids) + lm_head on the last position (what llmopt's eval.speed
                         times: logits of the last token only); best of --repeats
  prefill512_full_s      model(ids): logits of all 512 positions (the usual HF call; 40 GFLOP more)
  decode_eager_s         --decode single-token steps after a --prompt prefill, past_key_values fed
                         back by hand in a Python loop under inference_mode (the "eager loop");
                         the steps only, best of --repeats
  generate_s, generate_prefill_s   model.generate(prompt, greedy, exactly --decode new tokens)
                         and the prompt's prefill alone, for a decode rate that excludes it
The token ids are a fixed xorshift sequence like the one llmopt's eval.speed draws (which seeds
it from the stage); the ids do not change the work done.
"""
import argparse
import os
import resource
import sys
import time


def xorshift_ids(n, vocab, seed=0):
    # plugins/eval/speed.c: x = seed | 1; x ^= x << 13; x ^= x >> 7; x ^= x << 17 (uint64)
    m = (1 << 64) - 1
    x = (seed | 1) & m
    out = []
    for _ in range(n):
        x ^= (x << 13) & m
        x ^= x >> 7
        x ^= (x << 17) & m
        out.append(x % vocab)
    return out


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cmd_make(d):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config()).float().eval()
    model.save_pretrained(d, safe_serialization=True)
    n = sum(p.numel() for p in model.parameters())
    print(f"made {d} params={n}")


def cmd_make_llama(d):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                      num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5,
                      tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).float().eval()
    model.save_pretrained(d, safe_serialization=True)
    n = sum(p.numel() for p in model.parameters())
    print(f"made {d} params={n}")


def cmd_make_llama3_1b(d):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                      num_key_value_heads=8, head_dim=64, vocab_size=128256, max_position_embeddings=131072,
                      rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                      rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                      bos_token_id=128000, eos_token_id=128001, torch_dtype="bfloat16")
    model = LlamaForCausalLM(cfg).to(torch.bfloat16).eval()
    model.save_pretrained(d, safe_serialization=True)
    n = sum(p.numel() for p in model.parameters())
    print(f"made {d} params={n}")


def cmd_load(d, threads):
    t0 = time.perf_counter()
    import torch
    from transformers import GPT2LMHeadModel

    torch.set_num_threads(threads)
    t1 = time.perf_counter()
    model = GPT2LMHeadModel.from_pretrained(d, torch_dtype=torch.float32).eval()
    t2 = time.perf_counter()
    rss_load = peak_rss_mib()
    with torch.inference_mode():
        model(torch.tensor([[1]]))
    t3 = time.perf_counter()
    print(f"torch_version={torch.__version__}")
    print(f"import_s={t1 - t0:.4f}")
    print(f"load_s={t2 - t1:.4f}")
    print(f"forward1_s={t3 - t2:.4f}")
    print(f"peak_rss_after_load_mib={rss_load:.1f}")
    print(f"peak_rss_mib={peak_rss_mib():.1f}")


def best_of(reps, fn):
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def dynamic_int8(model):
    """torch.quantization.quantize_dynamic, the int8 most users try first. GPT-2's blocks are
    transformers' Conv1D, which quantize_dynamic does not know (it would quantize the LM head
    alone), so each becomes the nn.Linear it is (weight transposed) first; then every Linear,
    the LM head included, holds int8 weights per output channel and quantizes activations per
    call (fbgemm on x86)."""
    import torch
    from transformers.pytorch_utils import Conv1D

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Conv1D):
                lin = torch.nn.Linear(child.weight.shape[0], child.weight.shape[1])
                lin.weight.data = child.weight.data.t().contiguous()
                lin.bias.data = child.bias.data.clone()
                setattr(parent, name, lin)
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())  # untie
    q = torch.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    print(f"quantized=dynamic_int8 engine={torch.backends.quantized.engine}")
    return q


def cmd_speed(a):
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(a.threads)
    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=getattr(torch, a.dtype)).eval()
    if a.dynamic_int8:
        model = dynamic_int8(model)
    vocab = model.config.vocab_size
    ids = torch.tensor([xorshift_ids(max(a.prefill, a.prompt + a.decode), vocab)])
    print(f"torch_version={torch.__version__}")
    print(f"transformers_version={transformers.__version__}")
    print(f"torch_threads={torch.get_num_threads()}")
    print(f"dtype={a.dtype}")
    cpu = getattr(torch.backends, "cpu", None)
    print(f"cpu_capability={cpu.get_cpu_capability() if cpu else 'n/a'}")
    print(f"attn_implementation={getattr(model.config, '_attn_implementation', 'n/a')}")
    sys.stdout.flush()

    with torch.inference_mode():
        x = ids[:, : a.prefill]

        def prefill_last():
            h = model.base_model(x, use_cache=False).last_hidden_state  # GPT-2's transformer, Llama's model
            return model.lm_head(h[:, -1:, :])

        def prefill_full():
            return model(x, use_cache=False).logits

        prefill_last()  # warm-up
        print(f"prefill{a.prefill}_lasttok_s={best_of(a.repeats, prefill_last):.5f}")
        prefill_full()
        print(f"prefill{a.prefill}_full_s={best_of(a.repeats, prefill_full):.5f}")
        sys.stdout.flush()

        prompt = ids[:, : a.prompt]

        def decode_eager():
            out = model(prompt, use_cache=True)
            past = out.past_key_values
            t0 = time.perf_counter()
            for i in range(a.decode):
                tok = ids[:, a.prompt + i : a.prompt + i + 1]
                out = model(tok, past_key_values=past, use_cache=True)
                past = out.past_key_values
                out.logits[:, -1, :].argmax(-1)
            return time.perf_counter() - t0

        decode_eager()  # warm-up
        print(f"decode{a.decode}_eager_s={min(decode_eager() for _ in range(a.repeats)):.5f}")
        sys.stdout.flush()

        def prefill_prompt():
            return model(prompt, use_cache=True).logits[:, -1, :]

        prefill_prompt()
        t_prompt = best_of(a.repeats, prefill_prompt)
        gen_kw = dict(max_new_tokens=a.decode, min_new_tokens=a.decode, do_sample=False,
                      pad_token_id=model.config.eos_token_id, attention_mask=torch.ones_like(prompt))

        def gen():
            out = model.generate(prompt, **gen_kw)
            assert out.shape[1] == a.prompt + a.decode, out.shape

        print(f"generate_prefill{a.prompt}_s={t_prompt:.5f}")
        try:
            gen()
        except Exception as e:  # torch 1.13 + Python 3.11: generate's imports of torch.distributed fail
            print(f"generate_error={type(e).__name__}:{str(e)[:80].replace(' ', '_')}")
        else:
            print(f"generate{a.decode}_s={best_of(max(1, a.repeats // 2), gen):.5f}")
    print(f"peak_rss_mib={peak_rss_mib():.1f}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("dir")
    ml = sub.add_parser("make-llama")
    ml.add_argument("dir")
    m3 = sub.add_parser("make-llama3-1b")
    m3.add_argument("dir")
    lo = sub.add_parser("load")
    lo.add_argument("dir")
    lo.add_argument("--threads", type=int, default=2)
    s = sub.add_parser("speed")
    s.add_argument("model")
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--repeats", type=int, default=5)
    s.add_argument("--decode", type=int, default=128)
    s.add_argument("--prompt", type=int, default=128)
    s.add_argument("--prefill", type=int, default=512)
    s.add_argument("--dynamic-int8", action="store_true", help="time torch.quantization.quantize_dynamic (int8 Linear)")
    s.add_argument("--dtype", default="float32", help="torch dtype of the weights (float32, bfloat16, float16)")
    a = p.parse_args()
    if a.cmd == "make":
        cmd_make(a.dir)
    elif a.cmd == "make-llama":
        cmd_make_llama(a.dir)
    elif a.cmd == "make-llama3-1b":
        cmd_make_llama3_1b(a.dir)
    elif a.cmd == "load":
        cmd_load(a.dir, a.threads)
    else:
        cmd_speed(a)


if __name__ == "__main__":
    main()
