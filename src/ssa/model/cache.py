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

Two kinds of storage:

- dynamic (default): buffers grow geometrically (by 1/8) as tokens arrive;
- static (`max_length=N`): buffers are allocated once for N tokens. A one-token step with no mask
  (`begin_decode`) then touches only device tensors: it writes at each row's length, refreshes the
  mean of the block it may have completed from that block's s keys, and bumps the lengths in
  place. Nothing on the host depends on the current length, so the step can be captured in a CUDA
  graph once and replayed (see `ssa.generation`).
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
    end_t: torch.Tensor | None = None  # int32 [B], tokens per row once this pass is in (decode reads it)
    on_device: bool = False  # lengths live only on the device: scatter by slot, read the whole capacity

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
    """The cache `SSAForCausalLM` returns as `cache` (`past_key_values` before transformers 5.24)."""

    # Read by transformers' generate: its compiled path assumes transformers' own static cache
    # layout; the static SSACache is captured by `ssa.generation` instead.
    is_compileable = False

    def __init__(self, num_layers: int, block_size: int, value_means: bool = False, max_length: int | None = None):
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
            raise ValueError(f"max_length must be None (a growing cache) or an int >= 1, got {max_length!r}")
        self.block_size = block_size
        self.value_means = value_means
        # Static capacity in whole blocks, so kbar's slots stay aligned with k.
        self.max_length = None if max_length is None else -(-max_length // block_size) * block_size
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

    @property
    def static(self) -> bool:
        return self.max_length is not None

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
        start = list(self.host_lengths) if self.seen_tokens else [0] * batch
        self._check_room(max(s + c for s, c in zip(start, count)))
        count_t = torch.tensor(count, device=device)
        col = torch.arange(columns, device=device)[None, :]
        offset = col - (columns - count_t[:, None])  # 0 at each row's first real column
        positions = (self.lengths[:, None] + offset).clamp(min=0)
        # Shared by every layer's decode: computed once per pass, not once per layer.
        # int32: what the decode kernel reads, so no per-layer cast.
        end_t = (self.lengths + count_t).int()
        return CacheStep(start, count, columns, self.lengths, positions, end_t)

    def begin_decode(self) -> CacheStep:
        """One new token per row, no padding, on a static cache: no host sync, no host-side length.

        The host lists still advance by one (pure host arithmetic), so eager calls keep working; a
        captured graph replays only the device part, and its runner advances the host side.
        """
        if not self.static or self.seen_tokens == 0:
            raise ValueError("begin_decode needs a static cache (max_length=...) that already holds a prompt")
        self._check_room(max(self.host_lengths) + 1)
        positions = self.lengths[:, None]
        return CacheStep(list(self.host_lengths), [1] * self.batch_size, 1, self.lengths, positions,
                         (self.lengths + 1).int(), on_device=True)

    def commit(self, step: CacheStep) -> None:
        self.host_lengths = [s + c for s, c in zip(step.start, step.count)]
        if step.on_device:  # in place: a captured graph keeps reading and bumping this buffer
            self.lengths.add_(1)
        else:
            self.lengths = step.start_t + torch.tensor(step.count, device=step.start_t.device)
        self.seen_tokens += step.columns

    def _check_room(self, needed: int) -> None:
        if self.static and needed > self.max_length:
            raise ValueError(
                f"the static cache holds {self.max_length} tokens per row but this pass needs {needed}; "
                "build it with a larger max_length"
            )

    def write(self, layer_idx: int, k: torch.Tensor, v: torch.Tensor, step: CacheStep) -> _LayerKV:
        """Store the new keys/values [B, T, HK, D] of one layer and refresh the means of blocks they filled."""
        layer = self.layers[layer_idx]
        self._ensure_capacity(layer, k, step.max_end)
        T = step.columns
        if step.uniform and not step.on_device:
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
        if self.static:  # allocated once, for the whole capacity
            cap = self.max_length
        else:
            # Geometric growth (1/8) keeps appends amortised O(1) while the slack that decoding
            # reads under its length mask stays small; whole blocks keep kbar aligned with k.
            cap = max(needed, have + max(have // 8, 256))
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
