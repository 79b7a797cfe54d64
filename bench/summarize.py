#!/usr/bin/env python3
"""Reads the key=value files bench/run.sh wrote into RESULTS_DIR and prints one markdown table
(plus the derived numbers: prefill GFLOP/s against the sgemm peak, the decode bandwidth bound).

  summarize.py RESULTS_DIR MODEL_DIR

Files (each optional but membw.txt, sgemm.txt and llmopt.txt):
  machine.txt membw.txt sgemm.txt llmopt.txt llmopt_t1.txt torch-<tag>.txt torch-<tag>-load.txt
"""
import json
import os
import struct
import sys


def kv(path):
    out = {}
    if not os.path.exists(path):
        return out
    for line in open(path, errors="replace"):
        for tok in line.split():
            if "=" in tok:
                k, v = tok.split("=", 1)
                out.setdefault(k, v)  # first occurrence wins; per-run lines come before the best
    return out


def sgemm_rows(path):
    rows = []
    for line in open(path):
        if line.startswith("sgemm "):
            rows.append(dict(t.split("=", 1) for t in line.split()[1:]))
    return rows


def lines_with(path, prefix):
    return [dict(t.split("=", 1) for t in line.split()[1:] if "=" in t)
            for line in open(path) if line.startswith(prefix)]


def model_counts(model_dir):
    cfg = json.load(open(os.path.join(model_dir, "config.json")))
    with open(os.path.join(model_dir, "model.safetensors"), "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
    numel = {}
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        c = 1
        for d in v["shape"]:
            c *= d
        numel[k] = c
    return cfg, numel


def fnum(x, nd=1):
    return f"{x:.{nd}f}"


def main():
    res, model_dir = sys.argv[1], sys.argv[2]
    cfg, numel = model_counts(model_dir)
    L, C, V = cfg["n_layer"], cfg["n_embd"], cfg["vocab_size"]
    params = sum(numel.values())
    wpe = next((v for k, v in numel.items() if k.endswith("wpe.weight")), 0)
    # decode: every weight is read once per token (wte in full, as the tied LM head), wpe one row
    bytes_per_token = 4 * (params - wpe + C)
    lin = L * (C * 3 * C + C * C + 2 * C * 4 * C)  # qkv, attn proj, fc, proj weights

    def prefill_flops(T, last_only=True):
        f = 2.0 * T * lin
        f += L * 2 * 2.0 * C * T * (T + 1) / 2  # causal QK^T and PV (only the computed half)
        f += 2.0 * C * V * (1 if last_only else T)
        return f

    mb = {int(d["threads"]): float(d["gbps"]) for d in lines_with(os.path.join(res, "membw.txt"), "membw ")}
    sg = sgemm_rows(os.path.join(res, "sgemm.txt"))
    peak = {}
    for d in sg:
        t = int(d["threads"])
        peak[t] = max(peak.get(t, 0.0), float(d["gflops"]))
    peak_shape = {}
    for d in sg:
        if d["shape"].startswith("gpt2-") and d["shape"] != "gpt2-lm_head_all":
            t = int(d["threads"])
            peak_shape[t] = max(peak_shape.get(t, 0.0), float(d["gflops"]))
    core = kv(os.path.join(res, "sgemm.txt")).get("core", "?")

    lo = kv(os.path.join(res, "llmopt.txt"))
    lo1 = kv(os.path.join(res, "llmopt_t1.txt"))
    torches = []
    for f in sorted(os.listdir(res)):
        if f.startswith("torch-") and f.endswith(".txt") and not f.endswith("-load.txt"):
            tag = f[len("torch-"):-4]
            d = kv(os.path.join(res, f))
            if "prefill512_lasttok_s" in d:
                torches.append((tag, d, kv(os.path.join(res, f"torch-{tag}-load.txt"))))

    T = 512
    fl = prefill_flops(T)
    bw2 = mb.get(2, 0.0)
    bound = bw2 * 1e9 / bytes_per_token if bw2 else 0.0
    p2 = peak.get(2, 0.0)

    print(f"model: GPT-2 124M shape, fp32, {params:,} parameters ({params * 4 / 1e6:.1f} MB)")
    print(f"prefill {T}: {fl / 1e9:.1f} GFLOP (12 layers' matmuls + causal attention + LM head on the last "
          f"position; logits of all {T} positions add {2.0 * C * V * (T - 1) / 1e9:.1f})")
    print(f"OpenBLAS ({core}) sgemm peak: " + ", ".join(f"{t} thr {v:.1f} GFLOP/s" for t, v in sorted(peak.items()))
          + "; best GPT-2 prefill shape: " + ", ".join(f"{t} thr {v:.1f}" for t, v in sorted(peak_shape.items())))
    print("read bandwidth: " + ", ".join(f"{t} thr {v:.2f} GB/s" for t, v in sorted(mb.items())))
    print(f"decode bound: {bytes_per_token / 1e6:.1f} MB of weights per token / {bw2:.2f} GB/s = {bound:.1f} tok/s")
    print()

    cols = ["llmopt"] + [f"torch {d.get('torch_version', tag)}" for tag, d, _ in torches]
    print("| | " + " | ".join(cols) + " | llmopt vs best torch |")
    print("|---|" + "---|" * (len(cols) + 1))

    def row(name, vals, fmt, better="lower", ratio=True):
        cells = [fmt(v) if v is not None else "n/a" for v in vals]
        r = ""
        tv = [v for v in vals[1:] if v is not None]
        if ratio and vals[0] is not None and tv:
            if better == "lower":
                r = f"{min(tv) / vals[0]:.2f}x faster" if min(tv) >= vals[0] else f"{vals[0] / min(tv):.2f}x slower"
            elif better == "smaller":
                r = f"{min(tv) / vals[0]:.2f}x smaller" if min(tv) >= vals[0] else f"{vals[0] / min(tv):.2f}x larger"
            else:
                r = f"{vals[0] / max(tv):.2f}x" + (" faster" if vals[0] >= max(tv) else " (slower)")
        print(f"| {name} | " + " | ".join(cells) + f" | {r} |")

    def g(d, k):
        return float(d[k]) if k in d else None

    pre = [g(lo, "prefill512_s")] + [g(d, "prefill512_lasttok_s") for _, d, _ in torches]
    row(f"prefill {T} tok, last-token logits: s (best)", pre, lambda v: f"{v:.3f}")
    row(f"prefill {T}: tok/s", [T / v if v else None for v in pre], lambda v: f"{v:.0f}", "higher")
    row(f"prefill {T}: GFLOP/s", [fl / v / 1e9 if v else None for v in pre], lambda v: f"{v:.1f}", "higher", False)
    if p2:
        row(f"prefill {T}: % of 2-thread sgemm peak ({p2:.0f} GFLOP/s)", [fl / v / 1e9 / p2 * 100 if v else None for v in pre],
            lambda v: f"{v:.0f}%", "higher", False)
    full = [None] + [g(d, "prefill512_full_s") for _, d, _ in torches]
    row(f"prefill {T}, logits of all positions (HF `model(ids)`): s", full, lambda v: f"{v:.3f}", ratio=False)
    row("prefill 128 tok (ttft; torch: with KV cache out): s", [g(lo, "prefill128_s")] + [g(d, "generate_prefill128_s") for _, d, _ in torches],
        lambda v: f"{v:.3f}")
    dec = [g(lo, "decode128_s")] + [g(d, "decode128_eager_s") for _, d, _ in torches]
    row("decode 128 after 128 (eager loop for torch): tok/s", [128 / v if v else None for v in dec],
        lambda v: f"{v:.1f}", "higher")
    if bound:
        row(f"decode: % of bandwidth bound ({bound:.1f} tok/s)", [128 / v / bound * 100 if v else None for v in dec],
            lambda v: f"{v:.0f}%", "higher", False)
    gen = [None]
    for _, d, _ in torches:
        if "generate128_s" in d and "generate_prefill128_s" in d:
            gen.append(128 / (float(d["generate128_s"]) - float(d["generate_prefill128_s"])))
        else:
            gen.append(None)
    if dec[0]:
        gen[0] = None
    row("torch `generate` greedy 128 (prefill excluded): tok/s", gen, lambda v: f"{v:.1f}", ratio=False)
    if lo1:
        print(f"| llmopt at 1 thread: prefill {T} s / decode tok/s | {float(lo1['prefill512_s']):.3f} / "
              f"{128 / float(lo1['decode128_s']):.1f} |" + " |" * len(torches) + " |")
    row("load + 1-token forward, whole process: s", [g(lo, "load_forward1_s")] + [g(l, "process_wall_s") for _, _, l in torches],
        lambda v: f"{v:.3f}")
    row("  of which from_pretrained (torch, in process): s", [None] + [g(l, "load_s") for _, _, l in torches],
        lambda v: f"{v:.3f}", ratio=False)
    row("peak RSS, load + 1-token forward: MiB", [g(lo, "load_peak_rss_mib")] + [g(l, "process_peak_rss_mib") for _, _, l in torches],
        lambda v: f"{v:.0f}", "smaller")
    row("peak RSS, whole speed run: MiB", [g(lo, "peak_rss_mib")] + [g(d, "peak_rss_mib") for _, d, _ in torches],
        lambda v: f"{v:.0f}", "smaller")
    m = kv(os.path.join(res, "machine.txt"))
    if m:
        print()
        print("load average before / after: " + m.get("load_before", "?").replace("_", " ") + " / "
              + m.get("load_after", "?").replace("_", " ")
              + (f"; CPU pressure (PSI 'some') during the bench: {m['cpu_pressure_pct']}% of the time" if "cpu_pressure_pct" in m else ""))


if __name__ == "__main__":
    main()
