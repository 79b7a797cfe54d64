"""onnxruntime's side of bench/onnx_speed.sh: the GPT-2 graph llmopt exported (onnx.export with
kv_cache: true, logits: last) run by onnxruntime's CPU provider with N intra-op threads, the
measurements of llmopt's eval.speed stage: prefill of 512 tokens (one call, empty cache, the
last position's logits), best of 5; decode: 128 single-token steps after a 128-token prompt
(the steps only, the cache fed back), best of 3. Prints key=value lines.

    ort_speed.py MODEL.onnx [--threads 2]"""

import argparse
import resource
import time

import numpy as np
import onnxruntime as ort


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    t0 = time.perf_counter()
    s = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    load = time.perf_counter() - t0
    pasts = [i for i in s.get_inputs() if i.name.startswith("past_key_values.")]
    outs = [o.name for o in s.get_outputs()]
    vocab = s.get_outputs()[0].shape[2]
    rng = np.random.default_rng(0)

    def empty():
        return {i.name: np.zeros((1, i.shape[1], 0, i.shape[3]), np.float32) for i in pasts}

    def run(ids, past):
        res = dict(zip(outs, s.run(outs, {"input_ids": ids, **past})))
        return res, {k: res[k.replace("past_key_values", "present")] for k in past}

    best = float("inf")
    ids512 = rng.integers(0, vocab, size=(1, 512)).astype(np.int64)
    run(ids512, empty())  # warm-up
    for _ in range(5):
        t = time.perf_counter()
        run(ids512, empty())
        best = min(best, time.perf_counter() - t)
    decode = float("inf")
    for _ in range(3):
        res, past = run(rng.integers(0, vocab, size=(1, 128)).astype(np.int64), empty())
        tok = np.array([[int(res["logits"][0, -1].argmax())]], np.int64)
        t = time.perf_counter()
        for _ in range(128):
            res, past = run(tok, past)
            tok = np.array([[int(res["logits"][0, -1].argmax())]], np.int64)
        decode = min(decode, time.perf_counter() - t)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"ort_version={ort.__version__}")
    print(f"ort_session_s={load:.3f}")
    print(f"ort_prefill512_s={best:.4f}")
    print(f"ort_prefill512_tok_s={512 / best:.1f}")
    print(f"ort_decode128_s={decode:.4f}")
    print(f"ort_decode_tok_s={128 / decode:.1f}")
    print(f"ort_peak_rss_mib={rss:.0f}")


if __name__ == "__main__":
    main()
