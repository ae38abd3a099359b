"""NSA compression branch on the GPU with PyTorch SDPA (see ops.compressed_attention)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def compressed_attention(q, k, v, block_size: int, scale: float):
    B, T, HQ, D = q.shape
    HK = k.shape[2]
    G = HQ // HK
    s = block_size
    nbf = T // s  # only complete blocks are ever candidates (with none, only the zero key is seen)

    def pooled(x):  # means in float32 (as the reference), then the attention dtype
        means = x[:, : nbf * s].float().view(B, nbf, s, HK, D).mean(2).to(x.dtype)
        return torch.cat([means.new_zeros(B, 1, HK, D), means], 1)  # [B, nbf + 1, HK, D]

    kc, vc = pooled(k), pooled(v)
    cur = torch.arange(T, device=q.device) // s
    col = torch.arange(nbf + 1, device=q.device)
    visible = torch.where(col[None, :] == 0, (cur == 0)[:, None], (col - 1)[None, :] < cur[:, None])
    qt = q.transpose(1, 2)
    kt = kc.transpose(1, 2).repeat_interleave(G, 1)  # [B, HQ, nbf + 1, D]: small, no T x T
    vt = vc.transpose(1, 2).repeat_interleave(G, 1)
    o = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=visible, scale=scale)
    return o.transpose(1, 2)
