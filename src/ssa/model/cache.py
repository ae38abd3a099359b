"""KV cache for SSA models: per-layer keys/values plus the block means that sparse decoding scores.

Rows may hold different numbers of tokens (left-padded prompts are stored without their padding),
so the cache keeps per-row lengths. Each layer stores

- `k`, `v`   [B, capacity, HK, D] in the model dtype, row b's tokens in slots 0..length[b]-1;
- `kbar`     [B, capacity // s, HK, D] float32, the mean key of every *complete* block, written
             when the block fills (entries of incomplete blocks are never read);
- `vbar`     the same for values, kept only for NSA (its compression branch attends to them).

A forward pass calls `begin` (which positions the new tokens get), each layer calls `write`, and
`commit` advances the lengths once every layer has written. Generation reads `seen_tokens` (input
columns consumed, padding included) to know which input ids are new.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CacheStep:
    """Where the T new input columns of one forward pass go, per row."""

    start: list[int]  # tokens cached per row before this pass
    count: list[int]  # real (non-padding) new tokens per row; they are the last count[b] columns
    columns: int  # T, padding included
    start_t: torch.Tensor  # start as a LongTensor [B] on the model device
    positions: torch.Tensor  # [B, T] position of each column (0 for padding)
    column_lengths: list  # decode: per column j, tokens cached per row once j is in ([B] tensors)

    @property
    def prefill(self) -> bool:
        return max(self.start) == 0

    @property
    def padded(self) -> bool:
        return min(self.count) < self.columns

    @property
    def uniform(self) -> bool:
        """All rows start at the same length and have no padding: plain slicing works."""
        return not self.padded and min(self.start) == max(self.start)

    @property
    def max_end(self) -> int:
        return max(s + c for s, c in zip(self.start, self.count))


class _LayerKV:
    __slots__ = ("k", "v", "kbar", "vbar")

    def __init__(self):
        self.k = self.v = self.kbar = self.vbar = None


class SSACache:
    """The cache `SSAForCausalLM` returns as `past_key_values` (and `generate` passes back)."""

    # Read by transformers' generate: this cache grows dynamically, so it must not be compiled.
    is_compileable = False

    def __init__(self, num_layers: int, block_size: int, value_means: bool = False):
        self.block_size = block_size
        self.value_means = value_means
        self.layers = [_LayerKV() for _ in range(num_layers)]
        self.host_lengths: list[int] = []  # per row, on the host: no device sync to size buffers
        self.lengths: torch.Tensor | None = None  # the same on the model device
        self.seen_tokens = 0

    # ------------------------------------------------------------------ transformers-facing API

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Input columns consumed so far (left padding included), as generate expects."""
        return self.seen_tokens

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def batch_size(self) -> int:
        return len(self.host_lengths)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> "SSACache":
        """Keep row beam_idx[i] as row i (beam search)."""
        order = beam_idx.tolist()
        self.host_lengths = [self.host_lengths[i] for i in order]
        if self.lengths is not None:
            self.lengths = self.lengths.index_select(0, beam_idx.to(self.lengths.device))
        for layer in self.layers:
            for name in _LayerKV.__slots__:
                x = getattr(layer, name)
                if x is not None:
                    setattr(layer, name, x.index_select(0, beam_idx.to(x.device)))
        return self

    # ------------------------------------------------------------------ one forward pass

    def begin(self, attention_mask: torch.Tensor | None, batch: int, columns: int, device) -> CacheStep:
        """Validate the new columns' padding and give every column its position."""
        if self.seen_tokens == 0:
            self.host_lengths = [0] * batch
            self.lengths = torch.zeros(batch, dtype=torch.long, device=device)
        elif batch != self.batch_size:
            raise ValueError(f"input batch size {batch} does not match the cache's batch size {self.batch_size}")
        count = [columns] * batch
        if attention_mask is not None:
            new = attention_mask[:, -columns:].to(device=device, dtype=torch.long)
            count = new.sum(1).tolist()
            if self.seen_tokens == 0:
                left_padded = torch.arange(columns, device=device)[None, :] >= (columns - new.sum(1, keepdim=True))
                if not torch.equal(new.bool(), left_padded) or min(count) < 1:
                    raise ValueError(
                        "attention_mask must be left padding: per row zeros then at least one 1 "
                        "(right or inner padding is not supported)"
                    )
            elif min(count) < columns:
                raise ValueError("attention_mask may contain zeros only in the prompt's left padding, not in new tokens")
        count_t = torch.tensor(count, device=device)
        col = torch.arange(columns, device=device)[None, :]
        offset = col - (columns - count_t[:, None])  # 0 at each row's first real column
        positions = (self.lengths[:, None] + offset).clamp(min=0)
        # Shared by every layer's decode: computed once per pass, not once per layer.
        # int32: what the decode kernel reads, so no per-layer cast.
        column_lengths = [] if self.seen_tokens == 0 else [(self.lengths + j + 1).int() for j in range(columns)]
        return CacheStep(list(self.host_lengths), count, columns, self.lengths, positions, column_lengths)

    def commit(self, step: CacheStep) -> None:
        self.host_lengths = [s + c for s, c in zip(step.start, step.count)]
        self.lengths = step.start_t + torch.tensor(step.count, device=step.start_t.device)
        self.seen_tokens += step.columns

    def write(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor, step: CacheStep) -> _LayerKV:
        """Store the new keys/values [B, T, HK, D] of one layer and refresh the means of blocks they filled."""
        layer = self.layers[layer_idx]
        self._ensure_capacity(layer, k, step.max_end)
        T = step.columns
        if step.uniform:
            s0 = step.start[0]
            layer.k[:, s0:s0 + T] = k
            layer.v[:, s0:s0 + T] = v
            self._refresh_means(layer, slice(None), s0, s0 + T)
        elif not step.padded:  # rows of different lengths, every column real: scatter by slot
            rows = torch.arange(k.shape[0], device=k.device)[:, None]
            slots = step.start_t[:, None] + torch.arange(T, device=k.device)[None, :]
            layer.k[rows, slots] = k
            layer.v[rows, slots] = v
            if T == 1:
                self._refresh_latest_block(layer, step.start_t + 1)
            else:
                for b, (s0, c) in enumerate(zip(step.start, step.count)):
                    self._refresh_means(layer, b, s0, s0 + c)
        else:  # left-padded prompt: each row keeps only its real tokens
            for b, (s0, c) in enumerate(zip(step.start, step.count)):
                layer.k[b, s0:s0 + c] = k[b, T - c:]
                layer.v[b, s0:s0 + c] = v[b, T - c:]
                self._refresh_means(layer, b, s0, s0 + c)
        return layer

    # ------------------------------------------------------------------ internals

    def _ensure_capacity(self, layer: _LayerKV, like: torch.Tensor, needed: int) -> None:
        s = self.block_size
        have = 0 if layer.k is None else layer.k.shape[1]
        if needed <= have:
            return
        # Doubling keeps appends amortised O(1); whole blocks keep kbar's slots aligned with k.
        cap = max(needed, 2 * have, 64)
        cap = -(-cap // s) * s
        B, _, HK, D = like.shape

        def grown(old, length, dtype):
            new = torch.zeros(B, length, HK, D, dtype=dtype, device=like.device)
            if old is not None:
                new[:, : old.shape[1]] = old
            return new

        layer.k = grown(layer.k, cap, like.dtype)
        layer.v = grown(layer.v, cap, like.dtype)
        layer.kbar = grown(layer.kbar, cap // s, torch.float32)
        if self.value_means:
            layer.vbar = grown(layer.vbar, cap // s, torch.float32)

    def _refresh_means(self, layer: _LayerKV, rows, start: int, end: int) -> None:
        """Means of the blocks completed by tokens start..end-1 (the same arithmetic as ops.reference.block_means)."""
        s = self.block_size
        lo, hi = start // s, end // s
        if hi <= lo:
            return
        for src, dst in ((layer.k, layer.kbar), (layer.v, layer.vbar)):
            if dst is None:
                continue
            x = src[rows, lo * s: hi * s].float()
            x = x.view(*x.shape[:-3], hi - lo, s, *x.shape[-2:])
            dst[rows, lo:hi] = x.sum(-3) / s

    def _refresh_latest_block(self, layer: _LayerKV, new_lengths: torch.Tensor) -> None:
        """Recompute each row's latest complete block from its s keys (no host sync, O(s) reads).

        Rows whose last token did not complete a block rewrite an already-correct mean with the
        same value; rows with no complete block yet write block 0, which is not a candidate until
        it fills and is rewritten then.
        """
        s = self.block_size
        block = (new_lengths // s - 1).clamp(min=0)
        rows = torch.arange(new_lengths.shape[0], device=new_lengths.device)
        slots = block[:, None] * s + torch.arange(s, device=block.device)[None, :]
        for src, dst in ((layer.k, layer.kbar), (layer.v, layer.vbar)):
            if dst is not None:
                dst[rows, block] = src[rows[:, None], slots].float().sum(1) / s
