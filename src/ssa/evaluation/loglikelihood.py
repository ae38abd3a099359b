"""Log-likelihood of continuations and greedy generation, the way lm-evaluation-harness does it.

Encoding follows the harness's causal-LM convention: trailing whitespace of the context moves to
the front of the continuation, the pair is tokenized as one string and the continuation tokens
are the ones past the context's own tokenization; an empty context is replaced by the EOS token.
Inputs longer than `max_length` keep their last `max_length` tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .scoring import forward_kwargs
from .text import encode, eos_id


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    n_space = len(context) - len(context.rstrip())
    if n_space:
        continuation = context[-n_space:] + continuation
        context = context[:-n_space]
    if not context:
        return [eos_id(tokenizer)], encode(tokenizer, continuation)
    whole = encode(tokenizer, context + continuation)
    ctx = encode(tokenizer, context)
    return ctx, whole[len(ctx):]


@torch.no_grad()
def score_continuations(model, pairs: list[tuple[list[int], list[int]]], max_length: int, mode=None,
                        block_count=None, block_size=None, batch_size: int = 8, progress: bool = False,
                        desc: str = "loglikelihood") -> list[tuple[float, bool]]:
    """(sum log p(continuation | context), continuation is the greedy argmax) for each token pair."""
    device = next(model.parameters()).device
    kw = forward_kwargs(mode, block_count, block_size)
    prepared = []
    for i, (ctx, cont) in enumerate(pairs):
        if len(cont) == 0:
            raise ValueError("continuation is empty after tokenization; cannot score it")
        full = (ctx + cont)[-(max_length + 1):]
        inp = full[:-1]
        prepared.append((i, inp, min(len(cont), len(inp))))
    # Longest first: fewer padded positions per batch.
    order = sorted(prepared, key=lambda x: -len(x[1]))
    out: list = [None] * len(pairs)
    pad = 0
    for b in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
        chunk = order[b: b + batch_size]
        L = max(len(x[1]) for x in chunk)
        ids = torch.full((len(chunk), L), pad, dtype=torch.long)
        for r, (_, inp, _) in enumerate(chunk):
            ids[r, : len(inp)] = torch.tensor(inp)  # right padding never affects earlier positions
        logits = model(ids.to(device), **kw).logits
        for r, (i, inp, n_cont) in enumerate(chunk):
            n = len(inp)
            lp = F.log_softmax(logits[r, n - n_cont: n].float(), dim=-1)
            # Targets: the continuation tokens (the last n_cont of context+continuation).
            target = torch.tensor((pairs[i][0] + pairs[i][1])[-n_cont:], device=lp.device)
            ll = float(lp.gather(-1, target[:, None]).sum())
            greedy = bool((lp.argmax(-1) == target).all())
            out[i] = (ll, greedy)
    return out


@torch.no_grad()
def greedy_generate(model, ids: list[int], max_new_tokens: int, stop_ids=(), stop_strings=(), tokenizer=None,
                    max_length: int | None = None, mode=None, block_count=None, block_size=None,
                    stop_when=None) -> list[int]:
    """Greedy decoding by repeated full forwards (no KV cache): returns the new token ids.

    Stops at any id in `stop_ids` (not included) or once the decoded text contains a stop string
    (the text is cut there by the caller), or when `stop_when(new_ids)` returns True.
    """
    device = next(model.parameters()).device
    kw = forward_kwargs(mode, block_count, block_size)
    seq = list(ids)
    new: list[int] = []
    for _ in range(max_new_tokens):
        inp = seq[-max_length:] if max_length else seq
        logits = model(torch.tensor([inp], device=device), **kw).logits
        nxt = int(logits[0, -1].argmax())
        if nxt in stop_ids:
            break
        new.append(nxt)
        seq.append(nxt)
        if stop_when is not None and stop_when(new):
            break
        if stop_strings and tokenizer is not None:
            text = tokenizer.decode(new)
            if any(s in text for s in stop_strings):
                break
    return new
