"""Documents, token streams and byte counts for evaluation.

Bits per byte divides the summed negative log-likelihood (in bits) of the scored tokens by the
number of UTF-8 bytes those tokens stand for. Each token's byte length comes from the tokenizer's
byte-level vocabulary (GPT-2 style symbols map back to single bytes); the document separator
(EOS) counts as one byte, like the newline it replaces. For the byte tokenizer every token is one
byte, so bits per byte = nats per token / ln 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from ssa.textfiles import iter_file_documents


def gpt2_byte_symbols() -> dict[str, int]:
    """Inverse of the GPT-2 byte -> printable character map used by byte-level BPE vocabularies."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out, extra = {}, 0
    for b in range(256):
        if b in printable:
            out[chr(b)] = b
        else:
            out[chr(256 + extra)] = b
            extra += 1
    return out


def token_byte_lengths(tokenizer) -> np.ndarray:
    """UTF-8 byte length of every token id (special tokens count as 1 byte)."""
    symbols = gpt2_byte_symbols()
    vocab = tokenizer.get_vocab()
    size = max(max(vocab.values()) + 1, len(tokenizer))
    lengths = np.ones(size, dtype=np.int64)
    special = set(getattr(tokenizer, "all_special_tokens", []) or [])
    for tok, i in vocab.items():
        if tok in special:
            continue
        if all(ch in symbols for ch in tok):
            lengths[i] = len(tok)  # one symbol per byte
        else:
            lengths[i] = len(tok.encode("utf-8"))
    return lengths


def eos_id(tokenizer) -> int:
    eid = tokenizer.eos_token_id
    if eid is None:
        raise ValueError("the checkpoint's tokenizer has no EOS token; evaluation needs one to separate documents")
    return int(eid)


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of `text` without special tokens."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def read_documents(path, text_field: str = "text") -> Iterator[str]:
    """Documents of a .txt (one document), .jsonl or .jsonl.gz (one per line) file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--data {p} does not exist (expected a .txt, .jsonl or .jsonl.gz file, or 'val')")
    yield from iter_file_documents(p, text_field, label="--data")


def held_out_documents(train_config: dict, source: str = "val", text_field: str = "text") -> Iterator[str]:
    """'val' = the run's own held-out split (as training defined it); otherwise a file path."""
    if source != "val":
        yield from read_documents(source, text_field)
        return
    from ssa.training.data import DataSpec, iter_documents

    data = dict(train_config.get("data") or {})
    if not data:
        raise ValueError("--data val needs the run's train_config.json; pass --data FILE for a bare checkpoint")
    spec = DataSpec.from_dict(data)
    seed = int((train_config.get("train") or {}).get("seed", 0))
    yield from iter_documents(spec, "val", seed)


def token_stream(docs: Iterable[str], tokenizer, max_tokens: int | None = None) -> torch.Tensor:
    """Documents tokenized and concatenated with one EOS after each, as training packs them."""
    eos = eos_id(tokenizer)
    parts, total = [], 0
    for doc in docs:
        ids = encode(tokenizer, doc) + [eos]
        parts.append(torch.tensor(ids, dtype=torch.long))
        total += len(ids)
        if max_tokens is not None and total >= max_tokens:
            break
    if not parts:
        raise ValueError("no evaluation text: the data source has no documents")
    stream = torch.cat(parts)
    return stream[:max_tokens] if max_tokens is not None else stream


def document_tokens(docs: Iterable[str], tokenizer, min_tokens: int, max_tokens: int, limit: int | None) -> list[torch.Tensor]:
    """The first `max_tokens` tokens of each document holding at least `min_tokens` (up to `limit` docs)."""
    out = []
    for doc in docs:
        if limit is not None and len(out) >= limit:
            break
        # Tokenize only a generous character prefix: books are long.
        ids = encode(tokenizer, doc[: max_tokens * 8])
        if len(ids) >= min_tokens:
            out.append(torch.tensor(ids[:max_tokens], dtype=torch.long))
    return out

