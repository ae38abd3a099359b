"""Per-token log-likelihoods under a chosen attention mode and budget."""

from __future__ import annotations

import torch
import torch.nn.functional as F

MODES = ("full", "sparse")
# Positions per log-softmax chunk: bounds the float32 copy of [B, chunk, vocab].
_LOGSOFTMAX_CHUNK = 1024


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"attention mode must be one of {MODES}, got {mode!r}")
    return mode


def forward_kwargs(mode: str | None, block_count: int | None = None, block_size: int | None = None) -> dict:
    """Keyword arguments of the model's forward that select the inference mode and budget."""
    if mode is not None:
        check_mode(mode)
    kw = {"attention_mode": mode}
    if mode == "sparse" or mode is None:
        kw["block_count"] = block_count
        kw["block_size"] = block_size
    return kw


@torch.no_grad()
def token_logprobs(model, input_ids: torch.Tensor, mode: str | None = None, block_count: int | None = None,
                   block_size: int | None = None) -> torch.Tensor:
    """log p(input_ids[:, t] | input_ids[:, :t]) for t = 1..T-1, float32 [B, T-1]."""
    out = model(input_ids, **forward_kwargs(mode, block_count, block_size))
    logits = out.logits
    B, T, _ = logits.shape
    res = torch.empty(B, T - 1, dtype=torch.float32, device=logits.device)
    for t0 in range(0, T - 1, _LOGSOFTMAX_CHUNK):
        t1 = min(t0 + _LOGSOFTMAX_CHUNK, T - 1)
        lp = F.log_softmax(logits[:, t0:t1].float(), dim=-1)
        res[:, t0:t1] = lp.gather(-1, input_ids[:, t0 + 1:t1 + 1, None]).squeeze(-1)
    return res


@torch.no_grad()
def logits_of(model, input_ids: torch.Tensor, mode: str | None = None, block_count: int | None = None,
              block_size: int | None = None) -> torch.Tensor:
    return model(input_ids, **forward_kwargs(mode, block_count, block_size)).logits
