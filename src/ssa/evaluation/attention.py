"""Attention statistics of a checkpoint (docs/design.md §1.5) under full and sparse inference.

The model's forward with `output_attention_stats=True` returns, per layer, the sums computed by
`ssa.ops.statistics.attention_statistics` against that layer's own block selection for the call's
budget. Batches are merged by adding sums, then turned into per-layer / per-head means.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ssa.ops.statistics import merge_layer_lists, summarize_statistics

from .scoring import forward_kwargs


@torch.no_grad()
def collect_statistics(model, rows: torch.Tensor, mode: str, block_count: int | None = None,
                       block_size: int | None = None, batch_size: int = 4, progress: bool = True) -> list:
    """Merged per-layer statistics sums over all rows."""
    device = next(model.parameters()).device
    merged = None
    for i in tqdm(range(0, rows.shape[0], batch_size), desc=f"attention {mode}", disable=not progress, leave=False):
        batch = rows[i: i + batch_size].to(device)
        kw = forward_kwargs(mode, block_count, block_size)
        # Statistics are measured against the selection at this budget in both modes.
        kw["block_count"], kw["block_size"] = block_count, block_size
        out = model(batch, output_attention_stats=True, **kw)
        stats = out.attention_stats
        if not stats:
            raise ValueError("the model returned no attention statistics (output_attention_stats unsupported?)")
        merged = merge_layer_lists(merged, stats)
    return merged


def attention_report(model, rows: torch.Tensor, modes, block_count: int | None = None, block_size: int | None = None,
                     batch_size: int = 4, progress: bool = True) -> dict:
    """{mode: summary} where summary = {"overall": ..., "layers": [...], "distance_bin_edges": ...}."""
    out = {}
    for mode in modes:
        merged = collect_statistics(model, rows, mode, block_count, block_size, batch_size, progress)
        out[mode] = summarize_statistics(merged)
    return out
