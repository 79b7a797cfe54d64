#!/usr/bin/env python3
"""PyTorch CPU side of the training bench (bench/train_speed.sh runs it; see bench/README.md).

  torch_train_speed.py MODEL_DIR [--mode full|lora] [--batch 4] [--seq 128] [--steps 5] [--warmup 1]
                       [--threads 2] [--rank 8] [--alpha 16] [--targets c_attn] [--vocab-ids 4096]
                       [--autocast-bf16] [--gradient-checkpointing] [--optimizer adamw|adamw_8bit]

The training step llmopt's finetune.full / finetune.lora takes, written the way a PyTorch user
writes it: AutoModelForCausalLM.from_pretrained(MODEL_DIR, float32) (GPT-2 or Llama), model.train()
with every dropout probability set to 0 (llmopt's engine has no dropout in full fine-tuning; LoRA
dropout 0 in both),
logits of the B x T inputs, mean cross-entropy against the next tokens, backward,
clip_grad_norm_(1.0) (finetune's grad_clip default), torch.optim.AdamW(lr, betas (0.9, 0.999),
eps 1e-8, weight_decay 0.01), zero_grad(set_to_none=True).

LoRA is hand-made (no PEFT in this venv): each target Conv1D (GPT-2's [in, out] linear layers) or
nn.Linear (Llama's) becomes y = base(x) + (alpha / r) (x Aᵀ) Bᵀ with A [r, in] Kaiming-uniform and
B [out, r] zero, as PEFT's LoraLayer; the base is frozen (requires_grad False), only A and B go to
the optimizer.

--autocast-bf16 runs the forward and the loss under torch.autocast("cpu", dtype=torch.bfloat16), the
mixed precision PyTorch offers on CPUs (matmuls in bf16, weights and optimizer f32): the peer of
llmopt's matmul_precision medium.

--gradient-checkpointing calls transformers' model.gradient_checkpointing_enable() (non-reentrant
torch.utils.checkpoint at each decoder layer, so a frozen base with LoRA still gets its gradients):
the peer of finetune's gradient_checkpointing: true.

--optimizer adamw_8bit steps with bitsandbytes.optim.AdamW8bit (the same hyperparameters;
block-wise 8-bit moments, f32 ones for tensors under 4096 values): the peer of finetune's
optimizer: adamw_8bit. It needs bitsandbytes (bench/requirements-torch2.txt pins it).

--warmup steps run first and are not timed; then --steps steps are timed as one interval.
Inputs are a fixed xorshift sequence of ids below --vocab-ids (the ids do not change the work).
Prints key=value lines: tokens_per_s = B * T * steps / seconds (every input position),
tokens_per_cpu_s (the same per process CPU second, time.process_time: every thread), step_s,
loss_first / loss_last, trainable_params, peak_rss_mib (getrusage of this process; the shell
script also takes /usr/bin/time's).
"""
import argparse
import math
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_speed import xorshift_ids  # noqa: E402  the ids llmopt's eval.speed draws


def add_lora(model, targets, r, alpha):
    import torch
    from transformers.pytorch_utils import Conv1D

    class LoraConv1D(torch.nn.Module):
        def __init__(self, base):
            super().__init__()
            self.base = base
            # Conv1D keeps W as [in, out], nn.Linear as [out, in]
            fin, fout = base.weight.shape if isinstance(base, Conv1D) else base.weight.shape[::-1]
            self.lora_A = torch.nn.Parameter(torch.empty(r, fin))
            self.lora_B = torch.nn.Parameter(torch.zeros(fout, r))
            torch.nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            self.scale = alpha / r

        def forward(self, x):
            return self.base(x) + (x @ self.lora_A.t() @ self.lora_B.t()) * self.scale

    for p in model.parameters():
        p.requires_grad_(False)
    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (Conv1D, torch.nn.Linear)) and name in targets:
                setattr(parent, name, LoraConv1D(child))
                n += 1
    if n == 0:
        sys.exit(f"no Conv1D or Linear module named {targets}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--mode", choices=["full", "lora"], default="full")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--alpha", type=float, default=16)
    p.add_argument("--targets", default="c_attn")
    p.add_argument("--vocab-ids", type=int, default=4096)
    p.add_argument("--autocast-bf16", action="store_true")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--optimizer", choices=["adamw", "adamw_8bit"], default="adamw")
    a = p.parse_args()

    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    kind = AutoConfig.from_pretrained(a.model).model_type
    no_dropout = ({"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0} if kind == "gpt2"
                  else {"attention_dropout": 0.0})
    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32, **no_dropout)
    if a.mode == "lora":
        add_lora(model, set(a.targets.split(",")), a.rank, a.alpha)
    if a.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    params = [q for q in model.parameters() if q.requires_grad]
    if a.optimizer == "adamw_8bit":
        try:
            import bitsandbytes
        except ImportError as e:
            sys.exit(f"--optimizer adamw_8bit needs bitsandbytes: {e}")
        opt = bitsandbytes.optim.AdamW8bit(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
        print(f"bitsandbytes_version={bitsandbytes.__version__}")
    else:
        opt = torch.optim.AdamW(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    print(f"optimizer={a.optimizer}")
    B, T = a.batch, a.seq
    ids = torch.tensor(xorshift_ids(B * (T + 1) * (a.warmup + a.steps), min(a.vocab_ids, model.config.vocab_size)))
    ids = ids.view(a.warmup + a.steps, B, T + 1)
    print(f"torch_version={torch.__version__}")
    print(f"transformers_version={transformers.__version__}")
    print(f"torch_threads={torch.get_num_threads()}")
    cpu = getattr(torch.backends, "cpu", None)
    print(f"cpu_capability={cpu.get_cpu_capability() if cpu else 'n/a'}")
    print(f"attn_implementation={getattr(model.config, '_attn_implementation', 'n/a')}")
    print(f"model_type={kind}")
    print(f"mode={a.mode} batch={B} seq={T} steps={a.steps} warmup={a.warmup}")
    print(f"autocast_bf16={int(a.autocast_bf16)}")
    print(f"gradient_checkpointing={int(a.gradient_checkpointing)}")
    print(f"trainable_params={sum(q.numel() for q in params)}")
    sys.stdout.flush()

    def step(i):
        x, y = ids[i, :, :T], ids[i, :, 1:]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.autocast_bf16):
            logits = model(input_ids=x, use_cache=False).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    losses = [step(i) for i in range(a.warmup)]
    t0, c0 = time.perf_counter(), time.process_time()
    losses += [step(a.warmup + i) for i in range(a.steps)]
    el, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"timed_s={el:.4f}")
    print(f"step_s={el / a.steps:.4f}")
    print(f"tokens_per_s={B * T * a.steps / el:.2f}")
    print(f"timed_cpu_s={cpu:.4f}")
    print(f"tokens_per_cpu_s={B * T * a.steps / cpu:.2f}")
    print(f"loss_first={losses[0]:.4f}")
    print(f"loss_last={losses[-1]:.4f}")
    print(f"peak_rss_mib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0:.1f}")


if __name__ == "__main__":
    main()
