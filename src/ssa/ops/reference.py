"""Pure-PyTorch reference implementation: the source of truth for every fast kernel.

Layout is [batch, seq, heads, dim] with grouped-query attention (HQ = G * HK). Everything is
computed in float32 (or float64 when given float64) and processed in chunks of queries, so memory
grows with T * n * s (sparse) or T * T / s (block scores of one chunk), never with T * T.

No argument checking here: `ssa.ops.api` validates and then calls these functions.

Packed documents (`cu_seqlens`, batch 1): the definition is running every document on its own and
concatenating the results along the sequence, which is literally what `per_document` does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Queries per chunk. Chosen so a chunk's block-score or gathered-key tensors stay small on CPU.
QUERY_CHUNK = 256


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def num_blocks(seq_len: int, block_size: int) -> int:
    return math.ceil(seq_len / block_size)


def pad_to_blocks(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """[B, T, H, D] -> [B, nb, s, H, D], zero-padding the last partial block."""
    B, T, H, D = x.shape
    nb = num_blocks(T, block_size)
    x = F.pad(x, (0, 0, 0, 0, 0, nb * block_size - T))
    return x.view(B, nb, block_size, H, D)


def block_means(x: torch.Tensor, block_size: int) -> torch.Tensor:
    """Mean of each block of tokens: [B, T, H, D] -> [B, nb, H, D].

    A trailing partial block is averaged over the tokens it has. It is never a selection candidate
    (it is always some query's current block), so this choice only matters for debugging output.
    """
    T = x.shape[1]
    blocks = pad_to_blocks(x.to(_compute_dtype(x)), block_size)
    counts = torch.full((blocks.shape[1],), float(block_size), device=x.device, dtype=blocks.dtype)
    counts[-1] = T - (blocks.shape[1] - 1) * block_size
    return blocks.sum(2) / counts[None, :, None, None]


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over the last dim restricted to `mask` (broadcastable to logits).

    A row with no allowed entry has nothing to attend and gives zeros. Non-finite inputs propagate as
    in dense attention: a NaN or +inf logit among the allowed ones makes the whole row NaN.
    """
    probs = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)
    return torch.where(mask.any(-1, keepdim=True), probs, 0.0)


def group_block_scores(logits: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
    """Group scores of docs/design.md §1.1 steps 3-4 from per-head block logits [..., G, nb]: each head's
    softmax over the candidate blocks, summed over the group, [..., nb].

    `candidate` broadcasts to [..., nb]. Non-candidates score -1; candidates score in [0, G], or NaN
    when a non-finite input reached the row's softmax (`top_blocks` ranks NaN first). Shared by
    prefill and decode selection.
    """
    score = masked_softmax(logits, candidate.unsqueeze(-2)).sum(-2)
    return torch.where(candidate, score, -1.0)


def block_scores(q: torch.Tensor, kbar: torch.Tensor, t0: int, block_size: int, scale: float) -> tuple:
    """Group scores of docs/design.md §1.1 steps 3-4 for queries t0..t0+C.

    Returns (score [B, C, HK, nb], candidate mask [C, nb], current block [C]); see `group_block_scores`.
    """
    B, C, HQ, D = q.shape
    nb, HK = kbar.shape[1], kbar.shape[2]
    G = HQ // HK
    qg = q.to(kbar.dtype).view(B, C, HK, G, D)
    logits = torch.einsum("bchgd,bnhd->bchgn", qg, kbar) * scale
    current = torch.arange(t0, t0 + C, device=q.device) // block_size
    candidate = torch.arange(nb, device=q.device)[None, :] < current[:, None]  # [C, nb]
    return group_block_scores(logits, candidate[None, :, None, :]), candidate, current


def top_blocks(score: torch.Tensor, is_current: torch.Tensor, block_count: int) -> torch.Tensor:
    """Steps 5-7 of docs/design.md §1.1 on group scores [..., nb] (non-candidates -1).

    The current block (`is_current`, broadcastable to score) always takes a slot; the rest go to the
    exact top scores, ties to the lower block. A NaN score (a non-finite input) ranks above every
    number, so such rows keep a full, well-formed selection (the lowest blocks when all are NaN), as
    in the Triton kernel. Returns int32 [..., block_count]: block ids ascending, empty slots -1 at the
    end. Shared by prefill selection and single-query decode selection.
    """
    nb = score.shape[-1]
    width = min(block_count, nb)
    score = torch.where(score.isnan(), torch.finfo(score.dtype).max, score)
    score = torch.where(is_current, torch.full_like(score, float("inf")), score)
    # Stable descending sort: equal scores keep ascending block order, so ties go to the lower index.
    top_score, top_idx = torch.sort(score, dim=-1, descending=True, stable=True)
    top_idx = torch.where(top_score[..., :width] >= 0, top_idx[..., :width], nb)
    # Sort the chosen blocks ascending, with empty slots (-1) last.
    chosen = top_idx.sort(dim=-1).values
    chosen = torch.where(chosen == nb, -1, chosen).to(torch.int32)
    return F.pad(chosen, (0, block_count - width), value=-1)


def document_bounds(cu_seqlens: torch.Tensor) -> list[tuple[int, int]]:
    """[(start, end)] of every non-empty document of a `cu_seqlens` [num_docs + 1] tensor."""
    cu = cu_seqlens.tolist()
    return [(a, b) for a, b in zip(cu[:-1], cu[1:]) if b > a]


def per_document(fn, cu_seqlens, *tensors):
    """fn run on each document's slice [:, start:end] of the tensors, outputs concatenated on dim 1.

    `fn` returns a tensor or a tuple of tensors; the tuple is concatenated element-wise.
    """
    outs = [fn(*(x[:, a:b] for x in tensors)) for a, b in document_bounds(cu_seqlens)]
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts, 1) for parts in zip(*outs))
    return torch.cat(outs, 1)


def select_blocks(q, k, block_size: int, block_count: int, scale: float, cu_seqlens=None) -> torch.Tensor:
    """Exact top-k block selection (docs/design.md §1.1). Returns int32 [B, T, HK, block_count].

    With `cu_seqlens` the block ids count from the first token of each query's document."""
    if cu_seqlens is not None:
        return per_document(lambda a, b: select_blocks(a, b, block_size, block_count, scale), cu_seqlens, q, k)
    T = q.shape[1]
    kbar = block_means(k, block_size)
    block_ids = torch.arange(kbar.shape[1], device=q.device)
    chunks = []
    for t0 in range(0, T, QUERY_CHUNK):
        t1 = min(t0 + QUERY_CHUNK, T)
        score, _, current = block_scores(q[:, t0:t1], kbar, t0, block_size, scale)
        is_current = (block_ids[None, :] == current[:, None])[None, :, None, :]
        chunks.append(top_blocks(score, is_current, block_count))
    return torch.cat(chunks, 1)


def block_sparse_attention(q, k, v, block_indices, block_size: int, scale: float, return_lse: bool = False,
                           cu_seqlens=None):
    """Attention of each query over the key blocks listed in block_indices.

    With `cu_seqlens` each document is its own sequence and its block ids count from its first token.

    Selected earlier blocks are fully visible; keys after the query (its own block) are masked, as
    are padding positions past the end of the sequence and empty (-1) slots. Gradients reach only
    the gathered keys and values, so unselected blocks get exactly zero gradient.
    """
    if cu_seqlens is not None:
        return per_document(
            lambda *x: block_sparse_attention(*x, block_size, scale, return_lse), cu_seqlens, q, k, v, block_indices)
    B, T, HQ, D = q.shape
    HK = k.shape[2]
    G = HQ // HK
    s = block_size
    dtype = _compute_dtype(q)
    # Blocks as rows of one table, [B * HK * nb, s * D]: index_select (backward: index_add) is several
    # times faster on CPU than multi-dimensional advanced indexing (backward: index_put).
    nb = num_blocks(T, s)
    k_table = pad_to_blocks(k.to(dtype), s).permute(0, 3, 1, 2, 4).reshape(B * HK * nb, s * D)
    v_table = pad_to_blocks(v.to(dtype), s).permute(0, 3, 1, 2, 4).reshape(B * HK * nb, s * D)
    row_base = (torch.arange(B, device=q.device)[:, None, None, None] * HK
                + torch.arange(HK, device=q.device)[None, None, :, None]) * nb
    offsets = torch.arange(s, device=q.device)
    outs, lses = [], []
    for t0 in range(0, T, QUERY_CHUNK):
        t1 = min(t0 + QUERY_CHUNK, T)
        idx = block_indices[:, t0:t1].long()  # [B, C, HK, n]
        valid = idx >= 0
        idx = idx.clamp(min=0)
        rows = (row_base + idx).flatten()
        k_sel = k_table.index_select(0, rows).view(*idx.shape, s, D)  # [B, C, HK, n, s, D]
        v_sel = v_table.index_select(0, rows).view(*idx.shape, s, D)
        pos = idx[..., None] * s + offsets  # [B, C, HK, n, s] absolute key position
        t = torch.arange(t0, t1, device=q.device)[None, :, None, None, None]
        visible = valid[..., None] & (pos <= t) & (pos < T)
        qg = q[:, t0:t1].to(dtype).view(B, t1 - t0, HK, G, D)
        logits = torch.einsum("bchgd,bchnsd->bchgns", qg, k_sel) * scale
        logits = logits.masked_fill(~visible[:, :, :, None], float("-inf")).flatten(-2)
        lse = torch.logsumexp(logits, dim=-1)  # [B, C, HK, G]
        # A query with no visible key outputs 0; NaN or inf inputs propagate as in dense attention.
        probs = torch.where(lse.isneginf()[..., None], 0.0, torch.exp(logits - lse[..., None]))
        # Masked values are zeroed, not just weighted 0: 0 * NaN would leak a later (or padding-slot)
        # non-finite value into a query that never sees it.
        v_sel = v_sel.masked_fill(~visible[..., None], 0.0)
        o = torch.einsum("bchgm,bchmd->bchgd", probs, v_sel.flatten(3, 4))
        outs.append(o.reshape(B, t1 - t0, HQ, D))
        lses.append(lse.reshape(B, t1 - t0, HQ))
    o = torch.cat(outs, 1).to(q.dtype)
    return (o, torch.cat(lses, 1)) if return_lse else o


# SDPA learned native GQA (no K/V copies) in torch 2.5.
_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


def full_attention(q, k, v, scale: float, cu_seqlens=None, attn_mask=None):
    """Causal softmax attention with GQA through PyTorch SDPA (flash / cuDNN / CPU kernels).

    With `cu_seqlens`, one SDPA call per document. `attn_mask` (bool [T, T], True = attend) replaces
    the causal mask."""
    if cu_seqlens is not None:
        return per_document(lambda *x: full_attention(*x, scale), cu_seqlens, q, k, v)
    HQ, HK = q.shape[2], k.shape[2]
    qt, kt, vt = (x.transpose(1, 2) for x in (q, k, v))
    mask = dict(is_causal=True) if attn_mask is None else dict(attn_mask=attn_mask)
    if HK == HQ:
        o = F.scaled_dot_product_attention(qt, kt, vt, scale=scale, **mask)
    elif _SDPA_HAS_GQA:
        o = F.scaled_dot_product_attention(qt, kt, vt, scale=scale, enable_gqa=True, **mask)
    else:
        kt, vt = kt.repeat_interleave(HQ // HK, dim=1), vt.repeat_interleave(HQ // HK, dim=1)
        o = F.scaled_dot_product_attention(qt, kt, vt, scale=scale, **mask)
    return o.transpose(1, 2)


def compressed_attention(q, k, v, block_size: int, scale: float, cu_seqlens=None, max_seqlen=None):
    """NSA compression branch: attention over mean-pooled K/V of the complete blocks before the query's block.

    Queries in the first block have nothing to attend to and output zeros. With `cu_seqlens` each
    document is run on its own (the definition of the packed op); `max_seqlen`, a bound on the
    documents' lengths that the GPU path sizes its tiles from, changes nothing here.
    """
    if cu_seqlens is not None:
        return per_document(lambda *x: compressed_attention(*x, block_size, scale), cu_seqlens, q, k, v)
    B, T, HQ, D = q.shape
    HK = k.shape[2]
    G = HQ // HK
    kbar = block_means(k, block_size)
    vbar = block_means(v, block_size)
    nb = kbar.shape[1]
    outs = []
    for t0 in range(0, T, QUERY_CHUNK):
        t1 = min(t0 + QUERY_CHUNK, T)
        qg = q[:, t0:t1].to(kbar.dtype).view(B, t1 - t0, HK, G, D)
        logits = torch.einsum("bchgd,bnhd->bchgn", qg, kbar) * scale
        current = torch.arange(t0, t1, device=q.device) // block_size
        candidate = torch.arange(nb, device=q.device)[None, :] < current[:, None]
        probs = masked_softmax(logits, candidate[None, :, None, None, :])
        outs.append(torch.einsum("bchgn,bnhd->bchgd", probs, vbar).reshape(B, t1 - t0, HQ, D))
    return torch.cat(outs, 1).to(q.dtype)


def sliding_window_attention(q, k, v, window: int, scale: float, cu_seqlens=None):
    """Causal attention over the last `window` keys (the query included), chunked over queries.

    With `cu_seqlens` each document is run on its own (the definition of the packed op)."""
    if cu_seqlens is not None:
        return per_document(lambda *x: sliding_window_attention(*x, window, scale), cu_seqlens, q, k, v)
    B, T, HQ, D = q.shape
    HK = k.shape[2]
    G = HQ // HK
    outs = []
    for t0 in range(0, T, QUERY_CHUNK):
        t1 = min(t0 + QUERY_CHUNK, T)
        k0 = max(0, t0 - window + 1)
        qt = q[:, t0:t1].transpose(1, 2)
        kt = k[:, k0:t1].transpose(1, 2).repeat_interleave(G, dim=1)
        vt = v[:, k0:t1].transpose(1, 2).repeat_interleave(G, dim=1)
        tq = torch.arange(t0, t1, device=q.device)[:, None]
        tk = torch.arange(k0, t1, device=q.device)[None, :]
        mask = (tk <= tq) & (tk > tq - window)
        o = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale)
        outs.append(o.transpose(1, 2))
    return torch.cat(outs, 1)


def alignment_loss(o_full, o_sparse, direction: str, kind: str):
    """SSA alignment of one layer's two attention outputs (docs/design.md §1.3), float32 0-dim.

    The sparsity term dist(o_full, o_sparse.detach()) sends gradient into the full stream only; the
    commitment term dist(o_full.detach(), o_sparse) into the sparse stream only. `direction` picks
    the terms ("both", "sparsity", "commitment", "none"); `kind` the distance: "smooth_l1" (beta=1)
    or the squared error ("l2", also called "mse"). Mean over all elements, in float32.
    """
    distance = (lambda a, b: F.smooth_l1_loss(a, b, beta=1.0)) if kind == "smooth_l1" else F.mse_loss
    o_full, o_sparse = o_full.float(), o_sparse.float()
    loss = o_full.new_zeros(())
    if direction in ("both", "sparsity"):
        loss = loss + distance(o_full, o_sparse.detach())
    if direction in ("both", "commitment"):
        loss = loss + distance(o_full.detach(), o_sparse)
    return loss


def gated_alignment(o_full, o_sparse, gate, mode: str, direction: str, kind: str):
    """(gate * o_mode, alignment_loss(gate * o_full, gate * o_sparse, direction, kind)): one layer's
    gated output for `mode` ("full" or "sparse") and the alignment of its two gated streams."""
    gated_full, gated_sparse = gate * o_full, gate * o_sparse
    return (gated_full if mode == "full" else gated_sparse), alignment_loss(gated_full, gated_sparse, direction, kind)
