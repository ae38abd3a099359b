"""Rotary position embeddings with optional llama3-style frequency scaling (for length extrapolation)."""

from __future__ import annotations

import math

import torch
from torch import nn


def rope_inverse_frequencies(head_dim: int, theta: float, scaling: dict | None) -> torch.Tensor:
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if scaling is None:
        return inv_freq.float()
    # llama3 scaling: long wavelengths (beyond the original context / low_freq_factor) are slowed by
    # `factor`, short ones (below original context / high_freq_factor) are kept, and the band in
    # between is interpolated, so local word order is untouched while far positions stay in range.
    factor = float(scaling["factor"])
    low = float(scaling.get("low_freq_factor", 1.0))
    high = float(scaling.get("high_freq_factor", 4.0))
    original = float(scaling["original_max_position_embeddings"])
    wavelength = 2 * math.pi / inv_freq
    smooth = ((original / wavelength - low) / (high - low)).clamp(0.0, 1.0)
    scaled = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    return scaled.float()


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, theta: float, scaling: dict | None = None):
        super().__init__()
        # A plain attribute, not a buffer: Hugging Face loading builds modules on the meta device and
        # never restores non-persistent buffers, so the frequencies are recomputed per device instead.
        self.head_dim, self.theta, self.scaling = head_dim, theta, scaling
        self._inv_freq: dict[torch.device, torch.Tensor] = {}

    def inv_freq(self, device) -> torch.Tensor:
        if device not in self._inv_freq:
            self._inv_freq[device] = rope_inverse_frequencies(self.head_dim, self.theta, self.scaling).to(device)
        return self._inv_freq[device]

    def forward(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids [B, T] -> cos, sin [B, T, 1, head_dim] in float32."""
        freqs = position_ids[..., None].float() * self.inv_freq(position_ids.device)
        angles = torch.cat([freqs, freqs], dim=-1)[:, :, None, :]
        return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate [B, T, H, D] by the half-split convention of Hugging Face Llama (so weights convert as-is)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return (x.float() * cos + rotated.float() * sin).to(x.dtype)
