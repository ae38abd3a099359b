"""Fast greedy generation: a static KV cache and a one-token step replayed as a CUDA graph.

A decode step of a small model runs well under a millisecond of GPU work, but launching its few
hundred kernels from Python takes several milliseconds, so eager decoding is bound by the host. On
a static cache (`model.new_cache(max_length)`) the one-token step touches only device tensors, so
it is captured once and replayed: one launch per token.

    from ssa.generation import greedy_generate
    out = greedy_generate(model, input_ids, max_new_tokens=256)  # [B, T + 256]

The eager path (CPU, or `capture=False`) runs the same step function, so both give the same
tokens; `model.generate(...)` (transformers) keeps working for sampling, beam search and streaming.
"""

from __future__ import annotations

import torch

from .model.cache import SSACache


class GreedyStep:
    """next_tokens = step(tokens): one greedy token per row on a static cache.

    With `capture=True` (default on CUDA) the first `warmup` calls run eagerly on a side stream
    (compiling kernels and settling the allocator) and the next one captures the step in a CUDA
    graph; every later call replays it. Replays advance the cache's host bookkeeping themselves,
    since the Python code of the step does not run then.
    """

    def __init__(self, model, cache: SSACache, attention_mode=None, block_count=None, capture=None, warmup: int = 2):
        if not cache.static:
            raise ValueError("GreedyStep needs a static cache: model.new_cache(max_length=...)")
        if not cache.seen_tokens:
            raise ValueError("GreedyStep needs a cache that already holds the prompt (run the prefill first)")
        device = cache.lengths.device
        if capture is None:
            capture = device.type == "cuda"
        if capture and device.type != "cuda":
            raise ValueError("capture=True needs the model on a CUDA device")
        self.model, self.cache, self.capture, self.warmup = model, cache, capture, warmup
        self.kwargs = dict(attention_mode=attention_mode, block_count=block_count)
        self.calls = 0
        self.graph = None
        self.tokens = None  # the graph's input and output: [B, 1] long

    def _step(self, tokens):
        logits = self.model(tokens, cache=self.cache, logits_to_keep=1, **self.kwargs).logits
        return logits[:, -1].argmax(-1, keepdim=True)

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if not self.capture:
            return self._step(tokens)
        if self.graph is None and self.calls <= self.warmup:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                out = self._step(tokens)
            torch.cuda.current_stream().wait_stream(side)
            return out
        cache = self.cache
        cache._check_room(max(cache.host_lengths) + 1)  # before the replay writes past the end
        if self.graph is None:
            self._capture(tokens)
        else:
            self.tokens.copy_(tokens)
        self.graph.replay()
        cache.host_lengths = [n + 1 for n in cache.host_lengths]
        cache.seen_tokens += 1
        return self.tokens.clone()

    def _capture(self, tokens):
        cache = self.cache
        self.tokens = tokens.clone()
        host = (list(cache.host_lengths), cache.seen_tokens)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.tokens.copy_(self._step(self.tokens))
        # Capturing recorded the step without running it: undo its host-side bookkeeping.
        cache.host_lengths, cache.seen_tokens = host


@torch.no_grad()
def greedy_generate(model, input_ids, max_new_tokens: int, attention_mask=None, attention_mode=None,
                    block_count=None, capture=None, prefill_chunk: int | None = None) -> torch.Tensor:
    """Greedy continuation of `input_ids` [B, T] by exactly `max_new_tokens` tokens: [B, T + new].

    `attention_mask` may mark left padding of the prompt. `prefill_chunk=N` feeds the prompt to the
    cache N tokens at a time (long prompts in less activation memory; no padding then). The decode
    steps are CUDA-graph replays on GPU (`capture=None`: when the model is on CUDA).
    """
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if prefill_chunk is not None:
        if isinstance(prefill_chunk, bool) or not isinstance(prefill_chunk, int) or prefill_chunk < 1:
            raise ValueError(f"prefill_chunk must be None or an int >= 1, got {prefill_chunk!r}")
        if attention_mask is not None:
            raise ValueError("prefill_chunk cannot be combined with a padded attention_mask")
    B, T = input_ids.shape
    cache = model.new_cache(max_length=T + max_new_tokens)
    kwargs = dict(attention_mode=attention_mode, block_count=block_count)
    chunk = prefill_chunk or T
    for t0 in range(0, T, chunk):
        mask = attention_mask if t0 == 0 and chunk >= T else None
        logits = model(input_ids[:, t0:t0 + chunk], cache=cache, attention_mask=mask, logits_to_keep=1, **kwargs).logits
    tokens = [logits[:, -1].argmax(-1, keepdim=True)]
    step = GreedyStep(model, cache, capture=capture, **kwargs)
    for _ in range(max_new_tokens - 1):
        tokens.append(step(tokens[-1]))
    return torch.cat([input_ids, *tokens], 1)
