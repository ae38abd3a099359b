"""A fixed-lag copy task on CPU, FullAttn against SSA: does sparse inference lose the lagged token?

Rows of T random tokens (vocabulary V) with x[t] = x[t - LAG] for t >= LAG; the loss counts only
those positions. A small model is trained with a plain AdamW loop, then the accuracy on the lagged
positions is read in full mode and in sparse mode at block counts 2, 3 and 4 (blocks of 16 tokens;
the lag is past any such window). Usage: python benchmarks/lag_copy.py METHOD STEPS SEED
"""

import sys
import time

import torch

from ssa.model import SSAConfig, SSAForCausalLM

T, V, LAG, BLOCK, TRAINED_BUDGET = 256, 16, 100, 16, 2


def rows(batch: int, g: torch.Generator) -> torch.Tensor:
    x = torch.randint(0, V, (batch, T), generator=g)
    x[:, LAG:] = x[:, :-LAG].clone()
    return x


def main() -> None:
    method, steps, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(1)
    torch.manual_seed(seed)
    cfg = SSAConfig(method=method, vocab_size=V, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, block_size=BLOCK, block_count=TRAINED_BUDGET, max_position_embeddings=T,
                    alpha=10.0, full_ratio=0.5, backend="torch")
    model = SSAForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed + 100)
    start = time.time()
    for step in range(steps):
        x = rows(16, g)
        labels = x.clone()
        labels[:, :LAG] = -100
        out = model(x, labels=labels)
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        if step % 50 == 0:
            print(f"step {step} ce {out.ce_loss.item():.3f} ({time.time() - start:.0f} s)", flush=True)
    model.eval()
    x = rows(64, g)
    with torch.no_grad():
        for mode, budgets in (("full", [None]), ("sparse", [2, 3, 4])):
            for n in budgets:
                logits = model(x, attention_mode=mode, block_count=n).logits
                acc = (logits[:, LAG - 1:-1].argmax(-1) == x[:, LAG:]).float().mean().item()
                print(f"{method} {mode}{'' if n is None else f' n={n}'}: accuracy {acc:.3f}")


if __name__ == "__main__":
    main()
