"""A plain compiled Llama-style model as the throughput reference for `ssa train`'s step.

The model (about 60 lines below) is what a short nanoGPT-style script would write: RMSNorm, RoPE,
GQA through SDPA, SwiGLU, tied embeddings, the vocabulary padded to a multiple of 64, bf16 autocast,
fused AdamW, torch.compile of the whole model. The driver times it and then the library's own
training step (`ssa.commands.bench.training_step`: the trainer's optimizer, chunked loss, compile
of the blocks) at the same shape, one model at a time in one process, and prints tokens/s, MFU
and peak memory of each.

    python benchmarks/plain_gpt.py --hidden 512 --layers 8 --heads 8 --kv-heads 2 --seq-len 2048 --batch 16
"""

from __future__ import annotations

import argparse
import json
import math

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, d, heads, kv_heads, ffn):
        super().__init__()
        self.h, self.kv, self.hd = heads, kv_heads, d // heads
        self.n1, self.n2 = nn.RMSNorm(d), nn.RMSNorm(d)
        self.qkv = nn.Linear(d, (heads + 2 * kv_heads) * self.hd, bias=False)
        self.o = nn.Linear(heads * self.hd, d, bias=False)
        self.up = nn.Linear(d, 2 * ffn, bias=False)
        self.down = nn.Linear(ffn, d, bias=False)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q, k, v = self.qkv(self.n1(x)).view(B, T, -1, self.hd).split([self.h, self.kv, self.kv], dim=2)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        a = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                           is_causal=True, enable_gqa=True)
        x = x + self.o(a.transpose(1, 2).reshape(B, T, -1))
        gate, up = self.up(self.n2(x)).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


def rope(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).type_as(x)


class PlainGPT(nn.Module):
    def __init__(self, vocab, d, layers, heads, kv_heads, ffn, ctx, theta=500000.0):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d, heads, kv_heads, ffn) for _ in range(layers))
        self.norm = nn.RMSNorm(d)
        inv = 1.0 / theta ** (torch.arange(0, d // heads, 2).float() / (d // heads))
        ang = torch.outer(torch.arange(ctx).float(), inv)
        self.register_buffer("cos", ang.cos()[None, :, None], persistent=False)
        self.register_buffer("sin", ang.sin()[None, :, None], persistent=False)
        for p in self.parameters():
            if p.ndim == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, ids, targets):
        T = ids.shape[1]
        x = self.emb(ids)
        for b in self.blocks:
            x = b(x, self.cos[:, :T], self.sin[:, :T])
        logits = F.linear(self.norm(x), self.emb.weight)  # tied head
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets[:, 1:].flatten())


# ------------------------------------------------------------------------------------------ driver
def time_steps(step, warmup: int, steps: int) -> tuple[float, float]:
    """(ms per step after warm-up, peak GiB allocated)."""
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(steps):
        step()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / steps, torch.cuda.max_memory_allocated() / 2**30


def plain_step(args, vocab, compile: bool = True):
    """(step, model): one training step of the plain model (`compile=False`: eager)."""
    torch.manual_seed(0)
    ffn = -(-(8 * args.hidden // 3) // 64) * 64  # the same SwiGLU width SSAConfig picks
    model = PlainGPT(vocab, args.hidden, args.layers, args.heads, args.kv_heads, ffn, args.seq_len).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=True)
    fwd = torch.compile(model) if compile else model
    ids = torch.randint(0, args.vocab, (args.batch, args.seq_len), device="cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fwd(ids, ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--vocab", type=int, default=50257, help="real vocabulary; both models pad it to --pad")
    p.add_argument("--pad", type=int, default=64)
    p.add_argument("--methods", default="plain,full,ssa", help="plain and/or ssa methods, one at a time")
    p.add_argument("--no-compile", action="store_true", help="run our step eagerly (the plain one stays compiled)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from ssa.commands.bench import training_step
    from ssa.model import SSAConfig
    from ssa.training.flops import flops_per_token, peak_flops

    padded = math.ceil(args.vocab / args.pad) * args.pad
    shape = dict(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                 num_key_value_heads=args.kv_heads, max_position_embeddings=args.seq_len, rope_theta=500000.0,
                 tie_word_embeddings=True, block_size=16, block_count=16, pad_vocab_multiple=args.pad)
    peak = peak_flops(torch.cuda.get_device_name())
    tokens = args.batch * args.seq_len
    rows = []
    for name in args.methods.split(","):
        if name == "plain":
            step, model = plain_step(args, padded)
            flops = flops_per_token(SSAConfig(method="full", vocab_size=args.vocab, **shape), args.seq_len)
        else:
            step, model = training_step(name, shape, args.vocab, args.batch, args.seq_len, compile=not args.no_compile)
            flops = flops_per_token(model.config, args.seq_len, name)
        ms, peak_gib = time_steps(step, args.warmup, args.steps)
        row = {"model": name, "step_ms": ms, "tokens_per_s": tokens / ms * 1e3, "peak_gib": peak_gib,
               "flops_per_token": flops, "mfu": tokens / ms * 1e3 * flops / peak if peak else None,
               "params_m": sum(p.numel() for p in model.parameters()) / 1e6}
        rows.append(row)
        print(json.dumps(row), flush=True)
        del step, model
        torch.cuda.empty_cache()
    base = next((r["tokens_per_s"] for r in rows if r["model"] == "plain"), None)
    print(f"\n# {torch.cuda.get_device_name()}, batch {args.batch} x {args.seq_len}, hidden {args.hidden}, "
          f"{args.layers} layers, {args.heads}/{args.kv_heads} heads, vocab {args.vocab} padded to {padded}")
    print("| model | step ms | tokens/s | vs plain | MFU | peak GiB |\n|---|---|---|---|---|---|")
    for r in rows:
        vs = f"{r['tokens_per_s'] / base:.2f}x" if base else "-"
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        print(f"| {r['model']} | {r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | {vs} | {mfu} | {r['peak_gib']:.2f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "args": vars(args), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
