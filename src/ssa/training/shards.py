"""Pre-tokenized token shards: `ssa data prepare` writes them, the trainer memory-maps them.

Layout of a shard directory:
    DIR/index.json          {"format": "ssa-token-shards", "version": 1, "dtype": "uint16",
                             "tokenizer": SPEC, "tokenizer_fingerprint": HASH, "eos_token_id": ID,
                             "splits": {"train": [{"file", "tokens", "documents"}, ...], "val": [...]}}
    DIR/train_00000.bin     raw little-endian token ids, one EOS after every document
    DIR/val_00000.bin

A split is the concatenation of its shards in index order: the same token stream `load_tokens`
builds from the text sources, so packing, the resumable row order and any document-boundary
reader (EOS positions) work on it unchanged. Documents are tokenized in batches by worker
processes; the main process writes the batches in input order, so the shards do not depend on the
number of workers. Each shard is written under a temporary name and renamed when complete; the
index is written last, so a directory with an index.json is always whole.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

FORMAT = "ssa-token-shards"
INDEX = "index.json"
SPLITS = ("train", "val")
DEFAULT_SHARD_TOKENS = 1 << 28  # 256M tokens: 512 MiB of uint16 per shard


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------
class ShardTokens:
    """The token stream of one split as a read-only 1-D array: `len()` and slicing with step 1.

    Slices that cross a shard boundary are stitched together; nothing is read until sliced.
    """

    def __init__(self, paths: list[Path], lengths: list[int], dtype):
        self.dtype = np.dtype(dtype)
        self._maps = [np.memmap(p, dtype=self.dtype, mode="r", shape=(n,)) if n else np.zeros(0, self.dtype)
                      for p, n in zip(paths, lengths)]
        self._starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def __getitem__(self, item):
        if isinstance(item, (int, np.integer)):
            i = int(item) + (len(self) if item < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"token index {item} out of range for {len(self)} tokens")
            s = int(np.searchsorted(self._starts, i, side="right")) - 1
            return self._maps[s][i - self._starts[s]]
        if not isinstance(item, slice) or item.step not in (None, 1):
            raise TypeError("ShardTokens supports integer indices and slices with step 1")
        start, stop, _ = item.indices(len(self))
        if stop <= start:
            return np.zeros(0, self.dtype)
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        parts = []
        s = first
        while s < len(self._maps) and self._starts[s] < stop:
            lo, hi = max(start, self._starts[s]) - self._starts[s], min(stop, self._starts[s + 1]) - self._starts[s]
            if hi > lo:
                parts.append(self._maps[s][lo:hi])
            s += 1
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def __array__(self, dtype=None, copy=None):
        out = self[:]
        return out.astype(dtype) if dtype is not None else np.asarray(out)


def is_shard_source(source) -> bool:
    return isinstance(source, str) and source.startswith("shards:")


def shard_dir(source: str) -> Path:
    return Path(source[len("shards:"):]).expanduser()


def read_index(directory) -> dict:
    d = Path(directory)
    f = d / INDEX
    if not f.is_file():
        raise FileNotFoundError(f"data.source shards:{d}: no {INDEX} (prepare it with `ssa data prepare --out {d}`)")
    try:
        index = json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{f} is not valid JSON: {err.msg}") from None
    if index.get("format") != FORMAT or index.get("version") != 1:
        raise ValueError(f"{f} is not an ssa token-shard index (format {FORMAT!r} version 1)")
    return index


def open_split(directory, split: str, tokenizer=None) -> ShardTokens:
    """The split's tokens; with `tokenizer`, check that the shards were made by the same one."""
    from .tokenizer import tokenizer_fingerprint

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    d = Path(directory)
    index = read_index(d)
    if tokenizer is not None and index["tokenizer_fingerprint"] != tokenizer_fingerprint(tokenizer):
        raise ValueError(
            f"data.source shards:{d} was tokenized with {index['tokenizer']!r}, which differs from this run's "
            f"tokenizer: set data.tokenizer={index['tokenizer']!r} or prepare the shards again"
        )
    entries = index["splits"].get(split, [])
    paths = [d / e["file"] for e in entries]
    itemsize = np.dtype(index["dtype"]).itemsize
    for p, e in zip(paths, entries):
        if not p.is_file() or p.stat().st_size != e["tokens"] * itemsize:
            raise ValueError(f"shard {p} is missing or its size differs from the {e['tokens']} tokens in {INDEX}")
    return ShardTokens(paths, [e["tokens"] for e in entries], index["dtype"])


# ----------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------
_WORKER: dict = {}


def _init_worker(tokenizer_json: str | None) -> None:
    if tokenizer_json is not None:
        from tokenizers import Tokenizer

        _WORKER["tok"] = Tokenizer.from_str(tokenizer_json)
    else:
        _WORKER["tok"] = None


def _encode_batch(docs: list[str]) -> list[np.ndarray]:
    """Token ids of each document (no EOS); `None` tokenizer = the byte tokenizer (id == byte)."""
    tok = _WORKER["tok"]
    if tok is None:
        return [np.frombuffer(d.encode("utf-8"), dtype=np.uint8) for d in docs]
    return [np.asarray(e.ids, dtype=np.uint32) for e in tok.encode_batch(docs, add_special_tokens=False)]


def _batches(docs: Iterable[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for d in docs:
        batch.append(d)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class _ShardWriter:
    """Appends token arrays to DIR/{split}_NNNNN.bin, starting a new shard every `shard_tokens`."""

    def __init__(self, out: Path, split: str, dtype, shard_tokens: int):
        self.out, self.split, self.dtype, self.limit = out, split, np.dtype(dtype), shard_tokens
        self.entries: list[dict] = []
        self._fh = None

    def _open(self) -> None:
        name = f"{self.split}_{len(self.entries):05d}.bin"
        self._tmp = self.out / f".{name}.tmp"
        self._fh = open(self._tmp, "wb")
        self.entries.append({"file": name, "tokens": 0, "documents": 0})

    def _close(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            os.replace(self._tmp, self.out / self.entries[-1]["file"])
            self._fh = None

    def add(self, ids: np.ndarray, eos: int) -> None:
        """One document: its ids then EOS. A document may span two shards (the stream is one)."""
        doc = np.concatenate([ids.astype(self.dtype, copy=False), np.array([eos], self.dtype)])
        pos = 0
        while pos < len(doc):
            if self._fh is None or self.entries[-1]["tokens"] >= self.limit:
                self._close()
                self._open()
            take = min(len(doc) - pos, self.limit - self.entries[-1]["tokens"])
            self._fh.write(doc[pos:pos + take].tobytes())
            self.entries[-1]["tokens"] += take
            pos += take
        self.entries[-1]["documents"] += 1

    def finish(self) -> list[dict]:
        self._close()
        return self.entries


def _split_documents(inputs, val_inputs, val_fraction: float, text_field: str, max_documents):
    """{"train": docs, "val": docs} iterators: the val files, or a hash split of the inputs."""
    from ssa.textfiles import iter_file_documents

    from .data import _in_val

    def read(files):
        n = 0
        for f in files:
            for doc in iter_file_documents(Path(f), text_field, label="--input"):
                if max_documents is not None and n >= max_documents:
                    return
                n += 1
                yield doc

    if val_inputs:
        return {"train": read(inputs), "val": read(val_inputs)}
    return {"train": (d for d in read(inputs) if not _in_val(d, val_fraction)),
            "val": (d for d in read(inputs) if _in_val(d, val_fraction))}


def prepare_shards(inputs: list, out, tokenizer_spec: str, *, val_inputs: list | None = None,
                   val_fraction: float = 0.01, workers: int = 1, shard_tokens: int = DEFAULT_SHARD_TOKENS,
                   text_field: str = "text", batch_documents: int = 64, max_documents: int | None = None,
                   progress: bool = False) -> dict:
    """Tokenize `inputs` (.jsonl / .jsonl.gz / .txt / .txt.gz) into shards under `out`; the index."""
    from .tokenizer import build_tokenizer, is_byte_level, tokenizer_fingerprint

    if tokenizer_spec.startswith("train-bpe:"):
        raise ValueError("--tokenizer train-bpe:N is trained per run; prepare shards with a fixed tokenizer "
                         "(bytes, gpt2, gpt2:PATH or a tokenizer.json)")
    for name, v, lo in (("--workers", workers, 1), ("--shard-tokens", shard_tokens, 1)):
        if not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"--val-fraction must be in (0, 1), got {val_fraction!r}")
    missing = [str(f) for f in list(inputs) + list(val_inputs or []) if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f"--input file(s) not found: {', '.join(missing)}")
    out = Path(out).expanduser()
    if (out / INDEX).exists():
        raise ValueError(f"--out {out} already holds token shards ({INDEX}); choose another directory")
    tokenizer = build_tokenizer(tokenizer_spec)
    dtype = np.uint16 if len(tokenizer) <= 1 << 16 else np.uint32
    eos = tokenizer.eos_token_id
    tok_json = None if is_byte_level(tokenizer) else tokenizer.backend_tokenizer.to_str()
    out.mkdir(parents=True, exist_ok=True)
    splits = _split_documents(inputs, val_inputs, val_fraction, text_field, max_documents)
    index = {"format": FORMAT, "version": 1, "dtype": np.dtype(dtype).name, "tokenizer": tokenizer_spec,
             "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer), "eos_token_id": int(eos),
             "vocab": len(tokenizer), "splits": {}}
    pool = None
    if workers > 1:
        import multiprocessing as mp

        # fork where available: a worker needs only numpy and `tokenizers`, while spawn would import
        # the whole package (torch, transformers) again in every worker. The Rust tokenizer turns
        # its own thread pool off in forked children, and the workers never touch torch.
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        pool = mp.get_context(method).Pool(workers, initializer=_init_worker, initargs=(tok_json,))
    else:
        _init_worker(tok_json)
    try:
        for split, docs in splits.items():
            writer = _ShardWriter(out, split, dtype, shard_tokens)
            batches = _batches(docs, batch_documents)
            encoded = pool.imap(_encode_batch, batches, chunksize=1) if pool else map(_encode_batch, batches)
            for arrays in encoded:  # imap keeps input order: shards do not depend on `workers`
                for ids in arrays:
                    writer.add(ids, eos)
            index["splits"][split] = writer.finish()
            if progress:
                n = sum(e["tokens"] for e in index["splits"][split])
                print(f"{split}: {n:,} tokens in {len(index['splits'][split])} shard(s)", flush=True)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    from .checkpoint import write_text_atomic

    write_text_atomic(out / INDEX, json.dumps(index, indent=2) + "\n")
    return index
