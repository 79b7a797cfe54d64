"""The peer of bench/prune_time.sh: Wanda or SparseGPT on a GPT-2 checkpoint in torch, as the
papers' reference code runs them (locuslab/wanda lib/prune.py prune_wanda, IST-DASLab/sparsegpt
sparsegpt.py fasterprune; neither is on PyPI, so this is a transcription of their procedure).
Block by block: the block's inputs come from the pruned blocks before it; forward hooks on its
linear layers gather the statistics (Wanda: ||X_j||^2 / n per input; SparseGPT: H = 2 X X^T / n)
over all calibration sequences, every linear of the block is pruned, and the block runs again to
make the next one's inputs. Unstructured 50% by default; the calibration sequences are those
llmopt takes (the text tokenized without special tokens, n windows spread evenly).

    torch_prune.py {wanda|sparsegpt} MODEL_DIR TEXT_FILE [--n-samples 128] [--seq-len 512]
                   [--sparsity 0.5] [--threads 2]

Prints wall_s (load excluded) and peak_rss_mib."""

import argparse
import resource
import time

import torch
from tokenizers import Tokenizer
from transformers import GPT2LMHeadModel
from transformers.pytorch_utils import Conv1D


def calibration(model_dir, text, n, seq_len):
    ids = Tokenizer.from_file(f"{model_dir}/tokenizer.json").encode(text, add_special_tokens=False).ids
    step = (len(ids) - seq_len) // (n - 1) if n > 1 else 0
    return torch.tensor([ids[i * step:i * step + seq_len] for i in range(n)])


def weight_out_in(mod):
    return mod.weight.data.t() if isinstance(mod, Conv1D) else mod.weight.data  # a view: writes go through


def prune_wanda(W, scaler_row, sparsity):
    metric = W.abs() * torch.sqrt(scaler_row.reshape(1, -1))
    idx = torch.sort(metric, dim=-1, stable=True)[1][:, :int(W.shape[1] * sparsity)]
    W.scatter_(1, idx, 0.0)


def prune_sparsegpt(W, H, sparsity, blocksize=128, percdamp=0.01):
    Wf = W.float().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    Wf[:, dead] = 0
    H += percdamp * torch.mean(torch.diag(H)) * torch.eye(H.shape[0])
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    for i1 in range(0, Wf.shape[1], blocksize):
        i2 = min(i1 + blocksize, Wf.shape[1])
        W1, Q1, Err1 = Wf[:, i1:i2].clone(), torch.zeros_like(Wf[:, i1:i2]), torch.zeros_like(Wf[:, i1:i2])
        Hinv1 = Hinv[i1:i2, i1:i2]
        tmp = W1 ** 2 / torch.diag(Hinv1).reshape(1, -1) ** 2
        mask1 = tmp <= torch.sort(tmp.flatten())[0][int(tmp.numel() * sparsity)]
        for i in range(i2 - i1):
            w, d = W1[:, i], Hinv1[i, i]
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err
        Wf[:, i1:i2] = Q1
        Wf[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    W.copy_(Wf)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("method", choices=["wanda", "sparsegpt"])
    ap.add_argument("model")
    ap.add_argument("text")
    ap.add_argument("--n-samples", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--sparsity", type=float, default=0.5)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = GPT2LMHeadModel.from_pretrained(a.model, torch_dtype=torch.float32).eval()
    ids = calibration(a.model, open(a.text, encoding="utf-8").read(), a.n_samples, a.seq_len)
    t0 = time.perf_counter()
    with torch.no_grad():
        inps = model.transformer.drop(model.transformer.wte(ids) + model.transformer.wpe(torch.arange(ids.shape[1])))
        for block in model.transformer.h:
            mods = {n: m for n, m in block.named_modules() if isinstance(m, (Conv1D, torch.nn.Linear))}
            stats = {n: [None, 0] for n in mods}

            def hook(name):
                def add_batch(mod, args, out):
                    x = args[0].reshape(-1, args[0].shape[-1]).float()
                    s = stats[name]
                    n, k = s[1], 1  # the reference codes count sequences: one per call here
                    if a.method == "wanda":
                        v = torch.norm(x, p=2, dim=0) ** 2
                        s[0] = v / (n + k) if s[0] is None else s[0] * n / (n + k) + v / (n + k)
                    else:
                        x = (2 / (n + k)) ** 0.5 * x
                        h = x.t() @ x
                        s[0] = h if s[0] is None else s[0] * n / (n + k) + h
                    s[1] = n + k
                return add_batch

            hooks = [m.register_forward_hook(hook(n)) for n, m in mods.items()]
            for j in range(ids.shape[0]):
                block(inps[j:j + 1])
            for h in hooks:
                h.remove()
            for n, m in mods.items():
                W = weight_out_in(m)
                if a.method == "wanda":
                    prune_wanda(W, stats[n][0], a.sparsity)
                else:
                    prune_sparsegpt(W, stats[n][0], a.sparsity)
            inps = torch.cat([block(inps[j:j + 1])[0] for j in range(ids.shape[0])])
    wall = time.perf_counter() - t0
    zeros = sum(int((weight_out_in(m) == 0).sum()) for blk in model.transformer.h for m in blk.modules()
                if isinstance(m, (Conv1D, torch.nn.Linear)))
    total = sum(weight_out_in(m).numel() for blk in model.transformer.h for m in blk.modules()
                if isinstance(m, (Conv1D, torch.nn.Linear)))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"wall_s={wall:.1f} peak_rss_mib={rss:.0f} sparsity={zeros / total:.4f} torch={torch.__version__}")


if __name__ == "__main__":
    main()
