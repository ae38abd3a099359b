"""Perplexity and bits per byte: budget sweeps at the training length, and length extrapolation.

Budget sweep: the held-out token stream is cut into non-overlapping rows of `seq_len` tokens; every
token but the first of a row is scored (the rows are the same for every mode and budget).

Length extrapolation (PG-19 style): for each document, the targets at positions 1..K-1 of its first
K tokens are scored exactly once at every evaluation length L, by sliding windows of length L that
advance by `stride` (< every L) and score their last `stride` tokens, so each scored token sees
between L - stride and L tokens of context. Numbers at different L are therefore on the same tokens.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from tqdm.auto import tqdm

from .scoring import token_logprobs


class Accumulator:
    """Sums of negative log-likelihood (nats), token counts and UTF-8 bytes."""

    def __init__(self, byte_lengths: np.ndarray):
        self.byte_lengths = torch.as_tensor(byte_lengths)
        self.nll = 0.0
        self.tokens = 0
        self.bytes = 0

    def add(self, logprobs: torch.Tensor, targets: torch.Tensor) -> None:
        self.nll -= float(logprobs.double().sum())
        self.tokens += int(targets.numel())
        self.bytes += int(self.byte_lengths[targets.cpu()].sum())

    def result(self) -> dict:
        nats = self.nll / max(self.tokens, 1)
        return {
            "nll": self.nll, "tokens": self.tokens, "bytes": self.bytes,
            "nats_per_token": nats,
            "ppl": math.exp(min(nats, 700.0)),
            "bpb": self.nll / math.log(2) / max(self.bytes, 1),
        }


def make_rows(stream: torch.Tensor, seq_len: int, limit: int | None = None) -> torch.Tensor:
    """Non-overlapping rows [N, seq_len] of a token stream (the incomplete tail is dropped)."""
    n = stream.numel() // seq_len
    if limit is not None:
        n = min(n, limit)
    if n == 0:
        raise ValueError(f"the evaluation text has {stream.numel()} tokens, fewer than one row of seq_len={seq_len}")
    return stream[: n * seq_len].view(n, seq_len)


def score_rows(model, rows: torch.Tensor, byte_lengths, mode, block_count=None, block_size=None,
               batch_size: int = 8, desc: str | None = None, progress: bool = True) -> dict:
    acc = Accumulator(byte_lengths)
    device = next(model.parameters()).device
    for i in tqdm(range(0, rows.shape[0], batch_size), desc=desc, disable=not progress, leave=False):
        batch = rows[i: i + batch_size].to(device)
        lp = token_logprobs(model, batch, mode, block_count, block_size)
        acc.add(lp, batch[:, 1:])
    return acc.result()


def budget_sweep(model, rows: torch.Tensor, byte_lengths, modes, block_counts, block_size=None,
                 batch_size: int = 8, progress: bool = True) -> list[dict]:
    """Full inference once (the reference line) and sparse inference at every block count."""
    s = block_size or model.config.block_size
    results = []
    if "full" in modes:
        r = score_rows(model, rows, byte_lengths, "full", batch_size=batch_size, desc="ppl full", progress=progress)
        results.append({"mode": "full", "block_count": None, "receptive_field": None, **r})
    if "sparse" in modes:
        for n in block_counts:
            r = score_rows(model, rows, byte_lengths, "sparse", n, s, batch_size=batch_size,
                           desc=f"ppl sparse n={n}", progress=progress)
            results.append({"mode": "sparse", "block_count": n, "receptive_field": n * s, **r})
    return results


def default_block_counts(block_size: int, seq_len: int, lo: int = 64, hi: int = 4096) -> list[int]:
    """Powers of two whose receptive field n*s spans [lo, min(hi, seq_len)] tokens."""
    out, n = [], max(1, lo // block_size)
    while n * block_size <= min(hi, seq_len):
        out.append(n)
        n *= 2
    return out or [max(1, seq_len // block_size)]


def sliding_window_score(model, ids: torch.Tensor, window: int, stride: int, acc: Accumulator, mode,
                         block_count=None, block_size=None) -> None:
    """Score targets 1..len(ids)-1 once each with windows of `window` tokens advancing by `stride`."""
    if not 0 < stride < window:
        raise ValueError(f"stride must be in [1, window-1] so every scored token has context; got stride={stride}, window={window}")
    device = next(model.parameters()).device
    T = ids.numel()
    end = min(window, T)
    # First window: every target in it.
    first = ids[:end].to(device)[None]
    acc.add(token_logprobs(model, first, mode, block_count, block_size)[0], first[0, 1:])
    while end < T:
        new_end = min(end + stride, T)
        begin = max(0, new_end - window)
        x = ids[begin:new_end].to(device)[None]
        lp = token_logprobs(model, x, mode, block_count, block_size)[0]
        k = new_end - end  # targets not scored yet: the last k
        acc.add(lp[-k:], x[0, -k:])
        end = new_end


ROPE_VARIANTS = ("none", "llama3")


def length_extrapolation(loaded, documents: list[torch.Tensor], multiples, ropes=ROPE_VARIANTS, modes=("full", "sparse"),
                         stride: int | None = None, block_count: int | None = None, progress: bool = True) -> list[dict]:
    """Perplexity at lengths multiple x train_len, with the checkpoint's RoPE and with llama3 scaling.

    llama3 scaling uses factor = L / train_len for length L (no scaling at 1x, so that entry is
    the plain model's). The sparse budget stays `block_count` (the config's by default) at every L.
    """
    from .loading import llama3_scaling, with_config

    for r in ropes:
        if r not in ROPE_VARIANTS:
            raise ValueError(f"--rope must be a comma list of {ROPE_VARIANTS}, got {r!r}")
    train_len = loaded.train_len
    lengths = [int(round(m * train_len)) for m in multiples]
    stride = stride or max(1, train_len // 2)
    if stride >= min(lengths):
        raise ValueError(f"--stride ({stride}) must be smaller than the shortest length ({min(lengths)})")
    n = block_count or loaded.config.block_count
    results = []
    jobs = [(r, m, L, mode) for r in ropes for m, L in zip(multiples, lengths) for mode in modes
            if not (r == "llama3" and m <= 1)]
    bar = tqdm(jobs, desc="extrapolation", disable=not progress, leave=False)
    model_cache = {}
    for rope, mult, L, mode in bar:
        bar.set_postfix_str(f"{rope} L={L} {mode}")
        if rope == "none":
            model = loaded.model
        else:
            if mult not in model_cache:
                model_cache.clear()
                model_cache[mult] = with_config(loaded, rope_llama3_scaling=llama3_scaling(mult, train_len)).model
            model = model_cache[mult]
        acc = Accumulator(loaded_byte_lengths(loaded))
        for ids in documents:
            sliding_window_score(model, ids, L, stride, acc, mode, n if mode == "sparse" else None)
        row = {"rope": rope, "multiple": mult, "length": L, "mode": mode,
               "block_count": n if mode == "sparse" else None, "stride": stride, **acc.result()}
        results.append(row)
        if rope == "none" and mult <= 1 and "llama3" in ropes:  # llama3 at 1x is the plain model
            results.append({**row, "rope": "llama3"})
    return results


def loaded_byte_lengths(loaded) -> np.ndarray:
    if not hasattr(loaded, "_byte_lengths"):
        from .text import token_byte_lengths

        loaded._byte_lengths = token_byte_lengths(loaded.tokenizer)
    return loaded._byte_lengths
