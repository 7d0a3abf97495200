#!/usr/bin/python3
"""PyTorch peer of `mixtrain bench step`: the same two workloads (MLP 784-2048-2048-10 at batch
256; GPT 6 layers, width 384, 6 heads, context 256, batch 8), the same step (forward,
cross-entropy, backward, AdamW on fp32 parameters, zero_grad), the same JSON fields.

  /usr/bin/python3 bench/peer_torch.py --model gpt --precision bf16 [--batch N] [--threads 2]

bf16 runs under torch.autocast("cpu", dtype=torch.bfloat16) (fp32 parameters and optimizer,
bf16 matmuls through oneDNN), as the PyTorch docs recommend for CPU mixed precision. fp32 is
plain fp32 (Debian's torch 1.13 has no BLAS for fp32 matmul, so it is slow: compare its
throughput with the fp32 GEMM peak, not with mixtrain). fp16 autocast does not exist on the
CPU in torch 1.13: --precision fp16 exits 2 with a message.
"""
import argparse
import json
import math
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class MLP(nn.Module):
    def __init__(self, sizes):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i + 1 < len(self.layers):
                x = F.relu(x)
        return x


class Block(nn.Module):
    """Pre-LN block as mixtrain's nn::Block: x + attn(ln1(x)), then + mlp(ln2(x)), GELU (tanh)."""

    def __init__(self, C, H):
        super().__init__()
        self.H = H
        self.ln1 = nn.LayerNorm(C)
        self.qkv = nn.Linear(C, 3 * C)
        self.proj = nn.Linear(C, C)
        self.ln2 = nn.LayerNorm(C)
        self.fc = nn.Linear(C, 4 * C)
        self.fc_proj = nn.Linear(4 * C, C)

    def attn(self, x):
        B, T, C = x.shape
        H, D = self.H, C // self.H
        q, k, v = self.qkv(x).view(B, T, 3, H, D).permute(2, 0, 3, 1, 4)
        # torch 1.13 has no scaled_dot_product_attention: the nanoGPT "slow" path, scores
        # materialised [B, H, T, T], fp32 softmax under autocast.
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D))
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~mask, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att.to(v.dtype) @ v).transpose(1, 2).reshape(B, T, C)
        return self.proj(y)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc_proj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, V, L, C, H, T):
        super().__init__()
        self.tok = nn.Embedding(V, C)
        self.pos = nn.Embedding(T, C)
        self.blocks = nn.ModuleList(Block(C, H) for _ in range(L))
        self.ln_f = nn.LayerNorm(C)
        self.head = nn.Linear(C, V, bias=False)
        for n, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * L) if n.endswith(("proj.weight",)) else 0.02
                nn.init.normal_(p, 0.0, std)
            elif n.endswith("bias") and "ln" not in n:
                nn.init.zeros_(p)

    def forward(self, ids):
        T = ids.shape[1]
        x = self.tok(ids) + self.pos(torch.arange(T, device=ids.device))
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln_f(x))


def matmul_peak(dtype, n=2048, seconds=0.5):
    """GFLOP/s of torch.matmul at n x n in `dtype` (median of repeats after a warm-up)."""
    a = torch.rand(n, n).to(dtype)
    b = torch.rand(n, n).to(dtype)
    torch.matmul(a, b)
    times = []
    t_end = time.perf_counter() + seconds
    while len(times) < 3 or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - t0)
    return 2.0 * n ** 3 / statistics.median(times) / 1e9


def memcpy_gbps(nbytes=64 << 20, seconds=0.3):
    src = torch.ones(nbytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    times = []
    t_end = time.perf_counter() + seconds
    while len(times) < 5 or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - t0)
    return 2.0 * nbytes / statistics.median(times) / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["mlp", "gpt"], default="mlp")
    ap.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="bf16")
    ap.add_argument("--batch", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--peak-time", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="accepted for symmetry; output is JSON")
    a = ap.parse_args()
    if a.precision == "fp16":
        print("peer_torch: torch 1.13 has no fp16 autocast on the CPU", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    bf16 = a.precision == "bf16"
    compute = torch.bfloat16 if bf16 else torch.float32

    L, C, H, T, V = 6, 384, 6, 256, 256
    if a.model == "mlp":
        batch = a.batch or 256
        model = MLP([784, 2048, 2048, 10])
        x = torch.randn(batch, 784)
        y = torch.randint(0, 10, (batch,))
        items, unit = batch, "samples/s"
    else:
        batch = a.batch or 8
        model = GPT(V, L, C, H, T)
        x = torch.randint(0, V, (batch, T))
        y = torch.randint(0, V, (batch, T))
        items, unit = batch * T, "tokens/s"
    model.train()
    N = sum(p.numel() for p in model.parameters())
    per_item = 6.0 * N + (6.0 * L * C * T if a.model == "gpt" else 0.0)
    flops = per_item * items
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)

    fwd, bwd, upd, tot = [], [], [], []
    last_loss = float("nan")

    def step(timed):
        nonlocal last_loss
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
        last_loss = loss.item()
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        if timed:
            fwd.append((t1 - t0) * 1e3)
            bwd.append((t2 - t1) * 1e3)
            upd.append((t3 - t2) * 1e3)
            tot.append((t3 - t0) * 1e3)

    for _ in range(a.warmup):
        step(False)
    for _ in range(a.repeats):
        step(True)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    # The matmul peak after the peak RSS is read, as mixtrain's bench step measures its own:
    # neither process's peak RSS includes the n = 2048 product's buffers.
    peak = matmul_peak(compute, seconds=a.peak_time) if a.peak_time > 0 else float("nan")

    # The AdamW step alone: fp32 gradient read; param, exp_avg, exp_avg_sq read and written.
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))
    loss.backward()
    opt.step()
    ot = []
    for _ in range(max(5, a.repeats)):
        t0 = time.perf_counter()
        opt.step()
        ot.append((time.perf_counter() - t0) * 1e3)
    opt_ms = statistics.median(ot)
    opt_bytes = float(N) * (4 + 3 * 2 * 4)
    opt_gbps = opt_bytes / (opt_ms * 1e-3) / 1e9
    mem = memcpy_gbps()

    ms = statistics.median(tot)
    gf = flops / (ms * 1e-3) / 1e9

    def num(v):
        return v if math.isfinite(v) else None

    out = {
        "impl": "torch " + torch.__version__,
        "model": a.model,
        "precision": a.precision,
        "policy": "autocast bf16, fp32 params" if bf16 else "fp32",
        "batch": batch,
        "parameters": N,
        "items_per_step": items,
        "throughput_unit": unit,
        "flops_per_step": flops,
        "ms_per_step": ms,
        "ms_min": min(tot),
        "ms_max": max(tot),
        "forward_ms": statistics.median(fwd),
        "backward_ms": statistics.median(bwd),
        "optimizer_ms": statistics.median(upd),
        "throughput": items / (ms * 1e-3),
        "model_gflops_per_s": gf,
        "gemm_peak_dtype": a.precision,
        "gemm_peak_gflops": num(peak),
        "gemm_peak_source": "torch.matmul n=2048",
        "mfu": num(gf / peak),
        "loss": last_loss,
        "peak_rss_bytes": rss,
        "optimizer_alone_ms": opt_ms,
        "optimizer_bytes": opt_bytes,
        "optimizer_gbps": opt_gbps,
        "memcpy_gbps": mem,
        "optimizer_bandwidth_ratio": opt_gbps / mem,
        "threads": torch.get_num_threads(),
        "warmup": a.warmup,
        "repeats": a.repeats,
    }
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
