"""Recall of a key's latest value on CPU, FullAttn against SSA: does sparse inference lose it?

Each row is P (key, value) pairs, keys drawn from K symbols and values from V symbols, so every key
recurs several times with fresh values. At a key that occurred before, the model must predict the
value that followed that key's most recent earlier occurrence; the loss and the accuracy count
only those positions. By default each pair is one token (id key * V + value) and the logits at a
pair predict its key's latest earlier value; `--two-tokens` writes the key and the value as two
tokens instead (ids 0..K-1 and K..K+V-1) and asks at the key, which needs an induction circuit.
Under sparse inference the query's own block is always kept and the other blocks are chosen by the
block means of the keys: a block holding two older occurrences of the key may outscore the block
holding the latest one. `--distinct` draws the keys of each block without repetition (so the
answer always lies in an earlier block, and a block holds the key at most once).

A small model (2 layers, 64 wide) is trained with a plain AdamW loop at a constant LR, then the
accuracy is read in full mode and in sparse mode at several block counts; "far" is the accuracy
on queries whose answer lies outside their own block. Prints the CPU seconds of training.

Usage: python benchmarks/recency_recall.py METHOD STEPS SEED [--keys 8] [--values 8]
       [--pairs 64] [--two-tokens | --distinct] [--block 8] [--budget 2] [--lr 3e-3] [--alpha 10]
       [--full-ratio 0.5] [--batch 32] [--heads 4] [--kv-heads 2] [--eval-budgets 2,3,4]
METHOD is full or ssa. e.g. python benchmarks/recency_recall.py ssa 1000 0
"""

import argparse
import time

import torch

from ssa.model import SSAConfig, SSAForCausalLM


def rows(batch: int, keys: int, values: int, pairs: int, g: torch.Generator, fused: bool = False,
         distinct_block: int = 0):
    """Tokens [batch, 2*pairs], labels (the latest earlier value, -100 where the key is new) and
    the position of the answer token (-1 where none). `fused`: one token per pair instead
    (id key * values + value, [batch, pairs]); the logits at a pair predict its key's latest
    earlier value."""
    if distinct_block:  # each block of `distinct_block` pairs holds distinct keys
        u = torch.rand(batch, pairs // distinct_block, keys, generator=g)
        k = u.argsort(-1)[..., :distinct_block].flatten(1)
    else:
        k = torch.randint(0, keys, (batch, pairs), generator=g)
    v = torch.randint(0, values, (batch, pairs), generator=g)
    prev_v, prev_j = latest_earlier(k, v)
    if fused:
        x = k * values + v
        labels = torch.full_like(x, -100)  # labels[i + 1] is what the logits at pair i must predict
        source = torch.full_like(x, -1)
        labels[:, 1:], source[:, 1:] = prev_v[:, :-1], prev_j[:, :-1]
        return x, labels, source
    x = torch.stack([k, v + keys], dim=2).flatten(1)  # value ids follow the key ids
    labels = torch.full_like(x, -100)
    source = torch.full_like(x, -1)
    labels[:, 1::2] = torch.where(prev_j >= 0, prev_v + keys, -100)  # asked at the key, answered at its value
    source[:, 1::2] = torch.where(prev_j >= 0, 2 * prev_j + 1, -1)
    return x, labels, source


def latest_earlier(k: torch.Tensor, v: torch.Tensor):
    """Per pair, the value and pair index of its key's latest earlier occurrence (-100 / -1 if none)."""
    batch, pairs = k.shape
    prev_v = torch.full_like(k, -100)
    prev_j = torch.full_like(k, -1)
    last = torch.full((batch, int(k.max()) + 1), -1, dtype=torch.long)  # latest pair index of each key
    rows_ = torch.arange(batch)
    for i in range(pairs):
        j = last[rows_, k[:, i]]
        seen = j >= 0
        prev_v[seen, i] = v[seen, j[seen]]
        prev_j[seen, i] = j[seen]
        last[rows_, k[:, i]] = i
    return prev_v, prev_j


def accuracy(model, x, labels, source, block: int, mode: str, n):
    with torch.no_grad():
        logits = model(x, attention_mode=mode, block_count=n).logits
    pred = logits[:, :-1].argmax(-1)  # logits at t predict the label at t + 1
    target, src = labels[:, 1:], source[:, 1:]
    query = torch.arange(x.shape[1] - 1)[None, :].expand_as(target)  # the key token that asks
    scored = target != -100
    far = scored & (src // block != query // block)
    hit = pred == target
    return hit[scored].float().mean().item(), hit[far].float().mean().item(), far.sum().item() / scored.sum().item()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("method", choices=["full", "ssa"])
    p.add_argument("steps", type=int)
    p.add_argument("seed", type=int)
    p.add_argument("--keys", type=int, default=8)
    p.add_argument("--values", type=int, default=8)
    p.add_argument("--pairs", type=int, default=64)
    p.add_argument("--block", type=int, default=8)
    p.add_argument("--budget", type=int, default=2, help="trained sparse block count (own block included)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--alpha", type=float, default=10.0)
    p.add_argument("--full-ratio", type=float, default=0.5)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--eval-budgets", default="2,3,4")
    p.add_argument("--distinct", action="store_true",
                   help="no key twice in one block (one token per pair only; needs keys >= block)")
    p.add_argument("--two-tokens", action="store_true", help="key and value as two tokens (default: one per pair)")
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    fused = not a.two_tokens
    if a.distinct and (not fused or a.keys < a.block or a.pairs % a.block):
        p.error("--distinct needs one token per pair, --keys >= --block and --pairs a multiple of --block")
    distinct = a.block if a.distinct else 0
    T = a.pairs if fused else 2 * a.pairs
    vocab = a.keys * a.values if fused else a.keys + a.values
    cfg = SSAConfig(method=a.method, vocab_size=vocab, hidden_size=a.hidden, num_hidden_layers=2,
                    num_attention_heads=a.heads, num_key_value_heads=a.kv_heads, block_size=a.block,
                    block_count=a.budget, max_position_embeddings=T, rope_theta=10000.0, alpha=a.alpha,
                    full_ratio=a.full_ratio, backend="torch")
    model = SSAForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(a.seed + 100)
    start = time.process_time()
    for step in range(a.steps):
        x, labels, _ = rows(a.batch, a.keys, a.values, a.pairs, g, fused, distinct)
        out = model(x, labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        if step % 100 == 0 or step == a.steps - 1:
            print(f"step {step} ce {out.ce_loss.item():.3f} ({time.process_time() - start:.0f} CPU s)", flush=True)
    cpu = time.process_time() - start
    model.eval()
    x, labels, source = rows(256, a.keys, a.values, a.pairs, torch.Generator().manual_seed(12345), fused,
                                  distinct)
    results = [("full", None)] + [("sparse", int(n)) for n in a.eval_budgets.split(",")]
    line = []
    for mode, n in results:
        acc, far, far_share = accuracy(model, x, labels, source, a.block, mode, n)
        name = mode if n is None else f"n={n}"
        print(f"{a.method} seed {a.seed} {name}: accuracy {100 * acc:.1f}% far {100 * far:.1f}% "
              f"(far share {100 * far_share:.0f}%)")
        line.append(f"{name} {100 * acc:.1f}/{100 * far:.1f}")
    print(f"RESULT {a.method} seed {a.seed} steps {a.steps} train {cpu:.0f} CPU s | " + " | ".join(line))


if __name__ == "__main__":
    main()
