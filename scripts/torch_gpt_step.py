#!/usr/bin/env python3
"""One training step of mixtrain's GPT (src/nn/models.cpp) in plain PyTorch eager mode, timed:
the reference scripts/device_check.sh sets mixtrain's `bench step --device cuda` against.

The model is mixtrain's, layer for layer: token and position embeddings (normal 0.02), pre-LN
blocks (LayerNorm eps 1e-5; qkv Linear C->3C with bias; causal scaled-dot-product attention
over H heads; proj Linear C->C with bias; residual; LayerNorm; fc Linear C->4C; GELU, tanh
approximation; fc_proj 4C->C; residual), a final LayerNorm and an untied head Linear C->V
without bias; the loss is the mean cross-entropy over every position. The step is autocast
bf16 forward (fp32 weights), backward, and AdamW (lr 1e-3, weight decay 1e-2, fp32 state),
zero_grad: PyTorch's usual mixed-precision recipe. Dropout is 0 as in the benchmark.

Prints one JSON line: ms_per_step (median of the timed steps), tokens/s, the parameter count
and model GFLOP/s by the same count bench step uses (6N + 6LCT per token).
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def sdpa_causal(q, k, v):
    if hasattr(F, "scaled_dot_product_attention"):  # torch >= 2.0: flash / efficient kernels
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    t = q.shape[-2]
    s = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    mask = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
    return torch.softmax(s.masked_fill(~mask, float("-inf")), dim=-1) @ v


class Block(nn.Module):
    def __init__(self, c, h):
        super().__init__()
        self.h = h
        self.ln1 = nn.LayerNorm(c, eps=1e-5)
        self.qkv = nn.Linear(c, 3 * c, bias=True)
        self.proj = nn.Linear(c, c, bias=True)
        self.ln2 = nn.LayerNorm(c, eps=1e-5)
        self.fc = nn.Linear(c, 4 * c, bias=True)
        self.fc_proj = nn.Linear(4 * c, c, bias=True)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.h, c // self.h).transpose(1, 2) for z in (q, k, v))
        y = sdpa_causal(q, k, v)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.fc_proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, vocab, layers, width, heads, context):
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width, eps=1e-5)
        self.head = nn.Linear(width, vocab, bias=False)
        # GPT-2's initialisation, as mixtrain's: normal(0, 0.02), residual projections
        # 0.02 / sqrt(2L), biases zero.
        for name, p in self.named_parameters():
            if p.dim() == 2:
                nn.init.normal_(p, 0.0, 0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        for b in self.blocks:
            nn.init.normal_(b.proj.weight, 0.0, 0.02 / math.sqrt(2 * layers))
            nn.init.normal_(b.fc_proj.weight, 0.0, 0.02 / math.sqrt(2 * layers))

    def forward(self, ids):
        t = ids.shape[1]
        x = self.tok(ids) + self.pos(torch.arange(t, device=ids.device))
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln_f(x))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    ap.add_argument("--fused-adamw", action="store_true", help="AdamW(fused=True)")
    ap.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a smoke test)")
    a = ap.parse_args()

    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    if a.dtype == "fp32":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    model = GPT(a.vocab, a.layers, a.width, a.heads, a.context).to(dev)
    extra = {"fused": True} if a.fused_adamw else {}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2, **extra)
    ids = torch.randint(0, a.vocab, (a.batch, a.context), device=dev)
    targets = torch.randint(0, a.vocab, (a.batch, a.context), device=dev)
    n_params = sum(p.numel() for p in model.parameters())

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=a.dtype == "bf16"):
            logits = model(ids)
        loss = F.cross_entropy(logits.float().view(-1, a.vocab), targets.view(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(a.warmup):
        step()
    sync()
    times = []
    loss = None
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        loss = step()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    ms = statistics.median(times)
    tokens = a.batch * a.context
    flops = (6.0 * n_params + 6.0 * a.layers * a.width * a.context) * tokens
    print(json.dumps({
        "impl": "torch-eager", "torch": torch.__version__, "gpu": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
        "precision": "autocast-bf16" if a.dtype == "bf16" else "fp32-no-tf32",
        "layers": a.layers, "width": a.width, "heads": a.heads, "context": a.context,
        "vocab": a.vocab, "batch": a.batch, "parameters": n_params,
        "ms_per_step": ms, "ms_min": min(times), "ms_max": max(times),
        "throughput": tokens / (ms * 1e-3), "throughput_unit": "tokens/s",
        "model_gflops_per_s": flops / (ms * 1e-3) / 1e9, "loss": float(loss),
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if dev.type == "cuda" else None,
    }))


if __name__ == "__main__":
    main()
