"""Copy accuracy on the embedded `synthetic-copy` task, under full and sparse inference.

Held-out copy documents (`[SEG] filler [SEG]`, from the run's validation seed stream) are packed
into rows of the training length exactly as training packs them. At every position of a repeated
segment but its first symbol (see `synthetic.copy_span`), the model's greedy next-token prediction
is compared with the true symbol. The repetition lies further back than the sparse window, so a
sparse model only gets it right when its block selection finds the first occurrence; chance is
1/alphabet (`data.synthetic.alphabet`, 36 by default).
"""

from __future__ import annotations

import torch

from .scoring import logits_of


def copy_rows(docs: list[str], tokenizer, seq_len: int, max_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [N, seq_len] of the packed documents and a bool mask of the positions to predict."""
    from ssa.training.synthetic import copy_span

    from .text import encode, eos_id

    eos = eos_id(tokenizer)
    ids: list[int] = []
    mask: list[bool] = []
    for doc in docs:
        toks = encode(tokenizer, doc)
        if len(toks) != len(doc.encode("utf-8")):
            raise ValueError("copy accuracy needs a byte-level tokenizer (data.tokenizer=bytes)")
        a, b = copy_span(doc)
        ids += toks + [eos]
        mask += [a <= i < b for i in range(len(toks))] + [False]
        if len(ids) >= (max_rows + 1) * seq_len:
            break
    n = min(max_rows, len(ids) // seq_len)
    if n == 0:
        raise ValueError(f"the copy documents give no complete row of {seq_len} tokens")
    rows = torch.tensor(ids[: n * seq_len]).view(n, seq_len)
    targets = torch.tensor(mask[: n * seq_len]).view(n, seq_len)
    targets[:, 0] = False  # the first token of a row has no prediction
    return rows, targets


@torch.no_grad()
def copy_accuracy(model, rows: torch.Tensor, targets: torch.Tensor, mode: str, block_count: int | None = None,
                  batch_size: int = 8) -> dict:
    """{"accuracy", "positions"}: fraction of masked positions whose argmax prediction is right."""
    device = next(model.parameters()).device
    right = total = 0
    for i in range(0, rows.shape[0], batch_size):
        x = rows[i: i + batch_size].to(device)
        m = targets[i: i + batch_size, 1:].to(device)
        logits = logits_of(model, x, mode, block_count if mode == "sparse" else None)
        pred = logits[:, :-1].argmax(-1)
        right += int(((pred == x[:, 1:]) & m).sum())
        total += int(m.sum())
    return {"accuracy": right / max(total, 1), "positions": total}
