"""AdamW with decoupled weight decay on matrices only, and the warmup + cosine LR schedule.

Weight decay choice: decay applies to every Linear weight (q/k/v/o, the output gate, the MLP and an
untied lm_head). It does not apply to RMSNorm gains (scale parameters: decaying them toward 0 shrinks
activations rather than regularising), biases (the model has none, but a variant might) or token
embeddings (decay pulls rarely seen tokens' rows to zero; with tied embeddings this is also the
output layer, which we leave undecayed as GPT-NeoX / OLMo do).
"""

from __future__ import annotations

import math


def param_groups(model, weight_decay: float) -> list[dict]:
    import torch.nn as nn

    embedding_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    decay, no_decay = [], []
    for _name, p in model.named_parameters():  # shared (tied) tensors appear once
        if not p.requires_grad:
            continue
        if p.ndim >= 2 and id(p) not in embedding_ids:
            decay.append(p)
        else:
            no_decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model, spec):
    import torch

    # On CUDA the fused kernel updates every tensor in a few launches (the per-tensor loops of the
    # default cost measurable step time at small shapes); elsewhere keep torch's default.
    fused = all(p.is_cuda for p in model.parameters()) or None
    return torch.optim.AdamW(
        param_groups(model, spec.weight_decay), lr=spec.lr, betas=tuple(spec.betas), eps=spec.eps, fused=fused,
    )


def lr_at(step: int, *, lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """LR for the optimizer step with 0-based index `step`.

    Linear warmup from lr/warmup to lr over `warmup_steps` steps, then a cosine from lr down to
    `min_lr`, reached at the last step (`max_steps - 1`).
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    span = max(1, max_steps - 1 - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))
