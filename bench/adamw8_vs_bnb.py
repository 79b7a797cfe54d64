#!/usr/bin/env python3
"""llmopt's adamw_8bit against bitsandbytes' AdamW8bit and torch.optim.AdamW on one parameter.

  build-bench/torch2-venv/bin/python bench/adamw8_vs_bnb.py [BUILD_DIR] [--n 65536] [--steps 20]

Needs torch and bitsandbytes (the torch2 venv of bench/run.sh: TORCH2=1, which pins both).
Compiles bench/adamw8_traj.c with the cpu plugin's adamw8.c into BUILD_DIR/bench/, then runs the
three optimizers on the same initial values and gradients (lr 1e-3, betas 0.9/0.999, eps 1e-8,
weight decay 0.01): gradients are a steady direction plus noise, each value scaled by 10^-k
with k in 0..3 drawn per value, so one 256-value block holds gradients four decades apart, where
8-bit moments round hardest. Prints, after steps 1, 5 and the last, how far each 8-bit
trajectory is from f32 AdamW's: the mean |p - p_f32| over the mean |p_f32 - p0| (mean), and the
largest |p - p_f32| over the largest |p_f32 - p0| (max); and how far llmopt's dynamic maps are
from bitsandbytes' create_dynamic_map (in ulps).
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("build", nargs="?", default=os.path.join(root, "build-bench"))
    ap.add_argument("--n", type=int, default=65536)
    ap.add_argument("--steps", type=int, default=20)
    a = ap.parse_args()
    import torch
    import bitsandbytes as bnb
    import bitsandbytes.functional as bnbf

    exe = os.path.join(a.build, "bench", "adamw8_traj")
    os.makedirs(os.path.dirname(exe), exist_ok=True)
    cpu = os.path.join(root, "plugins", "cpu")
    subprocess.check_call(["cc", "-O2", "-std=c11", "-D_GNU_SOURCE", "-I", os.path.join(root, "sdk", "include"), "-I", cpu,
                           "-o", exe, os.path.join(root, "bench", "adamw8_traj.c")]
                          + [os.path.join(cpu, f) for f in ("adamw8.c", "check.c", "backward_ref.c", "half.c", "ref.c")]
                          + ["-lm", "-lpthread"])
    n, steps = a.n, a.steps
    lr, b1, b2, eps, wd = 1e-3, 0.9, 0.999, 1e-8, 0.01
    rng = np.random.default_rng(0)
    p0 = (rng.standard_normal(n) * 0.1).astype(np.float32)
    d = rng.standard_normal(n).astype(np.float32)
    gs = [((d + 0.5 * rng.standard_normal(n)) * 10.0 ** -rng.integers(0, 4, n)).astype(np.float32) for _ in range(steps)]
    with tempfile.TemporaryDirectory() as tmp:
        fin, fout = os.path.join(tmp, "in.bin"), os.path.join(tmp, "out.bin")
        with open(fin, "wb") as f:
            f.write(np.int64(n).tobytes() + np.int32(steps).tobytes() + np.array([lr, b1, b2, eps, wd], np.float32).tobytes())
            f.write(p0.tobytes())
            for g in gs:
                f.write(g.tobytes())
        subprocess.check_call([exe, fin, fout])
        ours = np.fromfile(fout, dtype=np.float32).reshape(steps, n)
        maps = np.fromfile(fout + ".maps", dtype=np.float32).reshape(2, 256)

    def run(cls):
        p = torch.nn.Parameter(torch.from_numpy(p0.copy()))
        o = cls([p], lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
        out = []
        for g in gs:
            p.grad = torch.from_numpy(g.copy())
            o.step()
            out.append(p.detach().numpy().copy())
        return np.array(out)

    f32, b8 = run(torch.optim.AdamW), run(bnb.optim.AdamW8bit)
    print(f"torch {torch.__version__}, bitsandbytes {bnb.__version__}; n {n}, {steps} steps")
    for name, ref, ours_map in (("signed", bnbf.create_dynamic_map(signed=True).numpy(), maps[0]),
                                ("unsigned", bnbf.create_dynamic_map(signed=False).numpy(), maps[1])):
        ulps = np.abs(ref.view(np.int32).astype(np.int64) - ours_map.view(np.int32).astype(np.int64))
        print(f"{name} map: {int((ulps > 0).sum())} of 256 values differ from bitsandbytes', by at most {int(ulps.max())} ulp")
    print("| after step | llmopt adamw_8bit: mean | max | bitsandbytes AdamW8bit: mean | max |")
    print("|---|---|---|---|---|")
    for s in sorted({0, 4, steps - 1}):
        mv, mx = np.abs(f32[s] - p0).mean(), np.abs(f32[s] - p0).max()
        cells = [f"{np.abs(r[s] - f32[s]).mean() / mv * 100:.2f}% | {np.abs(r[s] - f32[s]).max() / mx * 100:.1f}%" for r in (ours, b8)]
        print(f"| {s + 1} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    sys.exit(main())
