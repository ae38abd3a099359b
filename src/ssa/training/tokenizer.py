"""Tokenizers: byte-level, GPT-2 BPE from files, or a BPE trained on the corpus.

Every tokenizer is a Hugging Face `tokenizers.Tokenizer` wrapped as
`transformers.PreTrainedTokenizerFast`, so `save_pretrained` writes a `tokenizer.json` next to the
model weights and `AutoTokenizer.from_pretrained(checkpoint_dir)` loads it back without this module.

Spec strings accepted by `build_tokenizer`:
  "bytes"            256 byte tokens (id == byte value) + "<|endoftext|>" (id 256)
  "gpt2"             the GPT-2 BPE of the data folder (tokenizer/gpt2/vocab.json + merges.txt)
  "gpt2:PATH" / PATH a directory holding vocab.json + merges.txt, or a tokenizer.json file
  "train-bpe:N"      a byte-level BPE with N tokens trained on the training corpus
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable

EOS_TOKEN = "<|endoftext|>"
SPECS = ("bytes", "gpt2", "gpt2:PATH", "PATH (dir with vocab.json+merges.txt, or tokenizer.json)", "train-bpe:N")

# The data folder (GPT-2 tokenizer files, Gutenberg books, evaluation tasks; layout in
# docs/training.md): $SSA_DATA_DIR, else this default.
DATA_DIR_ENV = "SSA_DATA_DIR"
DEFAULT_DATA_DIR = "~/.cache/ssa/data"


def shared_data_dir() -> Path | None:
    """The data folder if it exists: $SSA_DATA_DIR, else ~/.cache/ssa/data."""
    path = Path(os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR).expanduser()
    return path if path.is_dir() else None


def require_data_dir(what: str, alternative: str = "") -> Path:
    """The data folder, or a FileNotFoundError saying that `what` needs it and how to provide it."""
    root = shared_data_dir()
    if root is not None:
        return root
    env = os.environ.get(DATA_DIR_ENV)
    where = (f"{DATA_DIR_ENV}={env} is not a directory" if env else
             f"{DATA_DIR_ENV} is not set and the default {DEFAULT_DATA_DIR} does not exist")
    raise FileNotFoundError(f"{what} needs the data folder: {where} (set {DATA_DIR_ENV}{alternative})")


def _bytes_to_unicode() -> dict[int, str]:
    """The GPT-2 byte -> printable-unicode map that the `tokenizers` ByteLevel pre-tokenizer uses.

    Printable latin-1 bytes map to themselves; the other 68 bytes map to code points from 256 up,
    in byte order. We need it to give byte b the token id b in the "bytes" tokenizer.
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    mapping, extra = {}, 0
    for b in range(256):
        if b in keep:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _wrap(tok, *, kind: str):
    """Wrap a raw `tokenizers.Tokenizer` with EOS/BOS/PAD = <|endoftext|>."""
    from transformers import PreTrainedTokenizerFast

    if tok.token_to_id(EOS_TOKEN) is None:
        tok.add_special_tokens([EOS_TOKEN])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        unk_token=None,
        model_max_length=int(1e30),
    )
    fast.init_kwargs["ssa_tokenizer_kind"] = kind  # survives save_pretrained, for information
    return fast


def _byte_level_parts():
    from tokenizers import decoders, pre_tokenizers

    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), decoders.ByteLevel()


def byte_tokenizer():
    """256 byte tokens whose id equals the byte value, plus <|endoftext|> = 256.

    A BPE model with no merges over the ByteLevel alphabet: every UTF-8 byte is one token, so
    encode/decode round-trips any text exactly and len(ids) == len(text.encode("utf-8")).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    pre, dec = _byte_level_parts()
    # Without the regex split the pre-tokenizer only maps bytes to symbols: no merges exist anyway.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = dec
    return _wrap(tok, kind="bytes")


def gpt2_tokenizer(path: str | os.PathLike | None = None):
    """GPT-2 byte-level BPE from a directory with vocab.json + merges.txt, or from a tokenizer.json."""
    from tokenizers import Tokenizer, models

    if path is None:
        path = require_data_dir("tokenizer 'gpt2'", " or pass 'gpt2:PATH'") / "tokenizer" / "gpt2"
    p = Path(path)
    if p.is_file() and p.suffix == ".json":
        try:
            tok = Tokenizer.from_file(str(p))
        except Exception as err:  # tokenizers raises a bare Exception on malformed files
            raise ValueError(f"tokenizer file {p} could not be read: {err}") from None
        return _wrap(tok, kind=f"file:{p}")
    if (p / "tokenizer.json").is_file() and not (p / "vocab.json").is_file():
        return gpt2_tokenizer(p / "tokenizer.json")
    vocab, merges = p / "vocab.json", p / "merges.txt"
    if not vocab.is_file() or not merges.is_file():
        raise FileNotFoundError(f"tokenizer: {p} holds neither vocab.json+merges.txt nor tokenizer.json")
    try:
        tok = Tokenizer(models.BPE.from_file(str(vocab), str(merges)))
    except Exception as err:
        raise ValueError(f"tokenizer files in {p} could not be read: {err}") from None
    tok.pre_tokenizer, tok.decoder = _byte_level_parts()
    return _wrap(tok, kind="gpt2")


def train_bpe(texts: Iterable[str], vocab_size: int):
    """Train a byte-level BPE of `vocab_size` tokens (including the 256 bytes and <|endoftext|>)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise ValueError(f"data.tokenizer train-bpe:N needs N >= 257 (256 bytes + <|endoftext|>), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer, tok.decoder = _byte_level_parts()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte stays encodable
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return _wrap(tok, kind=f"train-bpe:{vocab_size}")


def build_tokenizer(spec: str, corpus: Iterable[str] | None = None):
    """Build the tokenizer named by `spec` (see module docstring); `corpus` feeds train-bpe:N."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"data.tokenizer must be one of {SPECS}, got {spec!r}")
    if spec == "bytes":
        return byte_tokenizer()
    if spec == "gpt2":
        return gpt2_tokenizer()
    if spec.startswith("gpt2:"):
        return gpt2_tokenizer(spec[len("gpt2:"):])
    if spec.startswith("train-bpe:"):
        try:
            n = int(spec[len("train-bpe:"):])
        except ValueError:
            raise ValueError(f"data.tokenizer 'train-bpe:N' needs an integer N, got {spec!r}") from None
        if corpus is None:
            raise ValueError("data.tokenizer train-bpe:N needs the training corpus")
        return train_bpe(corpus, n)
    if Path(spec).exists():
        return gpt2_tokenizer(spec)
    raise ValueError(f"data.tokenizer must be one of {SPECS}, got {spec!r} (no such file either)")


def is_byte_level(tokenizer) -> bool:
    """True for the "bytes" tokenizer: one token per UTF-8 byte (so nats/token -> bits/byte directly)."""
    return tokenizer.init_kwargs.get("ssa_tokenizer_kind") == "bytes" or (
        len(tokenizer) == 257 and tokenizer.convert_tokens_to_ids(EOS_TOKEN) == 256
    )


def bytes_of(text: str) -> int:
    """UTF-8 byte count of `text`: the denominator of bits-per-byte for any tokenizer."""
    return len(text.encode("utf-8"))


def encode_document(tokenizer, text: str):
    """Token ids of one document as a numpy array (uint8->int64 fast path for byte tokenizers)."""
    import numpy as np

    if is_byte_level(tokenizer):
        # Identical to tokenizer.encode(text) (id == byte value) but ~100x faster.
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
    return np.asarray(tokenizer.encode(text, add_special_tokens=False), dtype=np.int64)


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of the tokenizer's full JSON: keys the token cache."""
    import hashlib

    blob = tokenizer.backend_tokenizer.to_str() if hasattr(tokenizer, "backend_tokenizer") else json.dumps(
        tokenizer.get_vocab(), sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
