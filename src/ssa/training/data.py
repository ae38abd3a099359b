"""Training data: document sources, held-out split, token cache, packing and a resumable sampler.

Pipeline: documents (strings) -> token ids with one EOS after every document, concatenated into a
single stream -> cut into non-overlapping rows of `seq_len` tokens (the incomplete tail is dropped)
-> rows visited in a seeded random order per epoch.

Packing (`data.pack`): "stream" lets every token attend to everything earlier in its row, across
document boundaries, with positions 0..seq_len-1. "documents" keeps the same rows but makes every
document its own sequence: `row_positions` restarts the positions after every EOS (and at every
row start, so a document cut by a row boundary continues as a new one), and the model reads those
restarting positions as document boundaries for both attention streams (packed-document masking).

The sampler is stateless apart from one integer, `position` = rows consumed so far by all ranks
together. Row `p` of the infinite visiting order is `perm(epoch = p // n_rows)[p % n_rows]`, where
`perm(e)` is a permutation seeded by (seed, e). Saving `position` in the checkpoint is therefore
enough for `--resume` to continue with exactly the next batch, and each DDP rank takes a disjoint,
contiguous slice of every global batch.

Sources (`data.source`):
  "synthetic-recall"  embedded generated corpus with long-range key->value recall (synthetic.py)
  "synthetic-copy"    embedded generated corpus: a random segment repeated after filler (synthetic.py)
  "python-stdlib"     the .py files of this Python's standard library (one document per file)
  "shards:DIR"        token shards written by `ssa data prepare` (train / val splits, memory-mapped)
  "shared:REL"        REL inside the data folder ($SSA_DATA_DIR, else ~/.cache/ssa/data)
  PATH / GLOB / DIR   .txt (one document per file), .jsonl or .jsonl.gz (one document per line,
                      field `data.text_field`); a list of these is accepted too
Held-out split: synthetic uses a different seed stream; gutenberg-style `train.jsonl.gz` uses the
sibling `val.jsonl.gz`; otherwise documents are split by a hash of their text, and a source with a
single document gives its last `val_fraction` of characters to validation.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
import os
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ssa.textfiles import iter_file_documents

from .keys import spec_from_dict
from .shards import is_shard_source, open_split, shard_dir
from .synthetic import CopySpec, RecallSpec, copy_documents, recall_documents
from .tokenizer import encode_document, require_data_dir, tokenizer_fingerprint

EMBEDDED_SOURCES = ("synthetic-recall", "synthetic-copy", "python-stdlib")
# Generated sources: source name -> (spec class of `data.synthetic`, document generator).
SYNTHETIC = {"synthetic-recall": (RecallSpec, recall_documents), "synthetic-copy": (CopySpec, copy_documents)}
FILE_SUFFIXES = (".txt", ".jsonl", ".jsonl.gz")
SPLITS = ("train", "val")
PACKINGS = ("documents", "stream")


# ----------------------------------------------------------------------------------------------
# Documents
# ----------------------------------------------------------------------------------------------
def _has_suffix(path: Path) -> bool:
    return any(path.name.endswith(s) for s in FILE_SUFFIXES)


def resolve_files(source: str | os.PathLike | list) -> list[Path]:
    """Expand a path, directory, glob or list of them into a sorted list of readable files."""
    items = source if isinstance(source, (list, tuple)) else [source]
    files: list[Path] = []
    for item in items:
        s = str(item)
        if s.startswith("shared:"):
            # "shared:gutenberg/train.jsonl.gz" -> inside the data folder ($SSA_DATA_DIR).
            s = str(require_data_dir(f"data.source {s}") / s[len("shared:"):])
        p = Path(s).expanduser()
        if p.is_file():
            if not _has_suffix(p):
                raise ValueError(f"data.source {p}: unsupported file type (allowed: {', '.join(FILE_SUFFIXES)})")
            files.append(p)
        elif p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and _has_suffix(q))
            if not found:
                raise FileNotFoundError(f"data.source {p}: directory holds no {'/'.join(FILE_SUFFIXES)} files")
            files += found
        elif any(ch in s for ch in "*?["):
            found = sorted(Path(q) for q in globlib.glob(os.path.expanduser(s), recursive=True))
            found = [q for q in found if q.is_file() and _has_suffix(q)]
            if not found:
                raise FileNotFoundError(f"data.source {s}: glob matches no {'/'.join(FILE_SUFFIXES)} files")
            files += found
        else:
            raise FileNotFoundError(
                f"data.source {s}: no such file or directory (or use one of {', '.join(EMBEDDED_SOURCES)})"
            )
    return files


def _read_file(path: Path, text_field: str) -> Iterator[str]:
    """Documents of one file; any decoding problem becomes a one-line ValueError naming the file."""
    return iter_file_documents(path, text_field, label="data file")


def python_stdlib_files() -> list[Path]:
    """The standard library's own .py sources, without site-packages and test suites."""
    root = Path(sysconfig.get_paths()["stdlib"])
    out = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root).parts
        if "site-packages" in rel or "dist-packages" in rel or any(part in ("test", "tests") for part in rel):
            continue
        out.append(p)
    return out


def _in_val(text: str, val_fraction: float) -> bool:
    """Deterministic document-level split by a hash of the document text."""
    h = zlib.crc32(text[:4096].encode("utf-8", "replace")) ^ len(text)
    return (h % 100_000) < val_fraction * 100_000


@dataclass
class DataSpec:
    """The `data` section of a training config, with the defaults used when a key is absent."""

    source: object = "synthetic-recall"
    val_source: object = None
    text_field: str = "text"
    tokenizer: str = "bytes"
    seq_len: int = 512
    val_fraction: float = 0.01
    synthetic_train_bytes: int = 4_000_000
    synthetic_val_bytes: int = 200_000
    synthetic: dict | None = None
    cache_dir: str | None = None
    max_documents: int | None = None  # cap per split (quick experiments, tests)
    pack: str = "stream"  # "documents": attention and positions restart at every document

    @classmethod
    def from_dict(cls, d: dict) -> "DataSpec":
        spec = spec_from_dict(cls, d, "data")
        if spec.source in SYNTHETIC:
            # Record every generator setting, so a run's data stays reproducible if defaults change.
            from dataclasses import asdict

            spec.synthetic = asdict(spec.recall_spec())
            row_len = spec.synthetic.get("row_len", 0)
            if row_len and row_len != spec.seq_len:
                raise ValueError(f"data.synthetic.row_len ({row_len}) must equal data.seq_len ({spec.seq_len}) "
                                 "so that every row holds one whole document, or be 0")
            if spec.synthetic.get("loss", "all") != "all" and spec.tokenizer != "bytes":
                raise ValueError(f"data.synthetic.loss={spec.synthetic['loss']} needs data.tokenizer=bytes "
                                 f"(it finds the repeat by its bracket bytes), got {spec.tokenizer!r}")
        return spec

    def validate(self) -> None:
        if not isinstance(self.seq_len, int) or isinstance(self.seq_len, bool) or self.seq_len < 2:
            raise ValueError(f"data.seq_len must be an integer >= 2, got {self.seq_len!r}")
        if not isinstance(self.val_fraction, (int, float)) or not 0 < self.val_fraction < 1:
            raise ValueError(f"data.val_fraction must be in (0, 1), got {self.val_fraction!r}")
        for name in ("synthetic_train_bytes", "synthetic_val_bytes"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"data.{name} must be a positive integer, got {v!r}")
        if self.max_documents is not None and (not isinstance(self.max_documents, int) or self.max_documents < 1):
            raise ValueError(f"data.max_documents must be a positive integer or null, got {self.max_documents!r}")
        if self.pack not in PACKINGS:
            raise ValueError(f"data.pack must be one of {PACKINGS}, got {self.pack!r}")
        if self.synthetic is not None:
            self.recall_spec()  # validates the keys
        if is_shard_source(self.source) and str(self.tokenizer).startswith("train-bpe:"):
            raise ValueError("data.source shards:DIR is already tokenized: data.tokenizer must be the shards' "
                             "tokenizer, not train-bpe:N")

    def recall_spec(self):
        """The generator settings of a synthetic source (RecallSpec or CopySpec)."""
        cls = SYNTHETIC.get(self.source, (RecallSpec,))[0]
        return spec_from_dict(cls, dict(self.synthetic or {}), "data.synthetic")


def loss_labels(spec: DataSpec, tokenizer):
    """`labels(x)`: the labels of a batch of rows for the training and validation loss; the rows
    themselves, or with `data.synthetic.loss=repeat` the rows with every position outside the
    repeated segment set to the ignored label. None when every token counts."""
    if spec.source != "synthetic-copy" or (spec.synthetic or {}).get("loss", "all") == "all":
        return None
    from ssa.model.loss import IGNORE_INDEX

    from .synthetic import COPY_CLOSE, COPY_OPEN, repeat_mask

    open_id, close_id = (tokenizer.convert_tokens_to_ids(tokenizer.tokenize(c))[0] for c in (COPY_OPEN, COPY_CLOSE))

    def labels(x):
        return x.masked_fill(~repeat_mask(x, open_id, close_id), IGNORE_INDEX)

    return labels


def _sibling_val(files: list[Path]) -> list[Path] | None:
    """`.../train.jsonl.gz` -> `.../val.jsonl.gz` when every training file has such a sibling."""
    out = []
    for f in files:
        if "train" not in f.name:
            return None
        v = f.with_name(f.name.replace("train", "val", 1))
        if not v.is_file():
            return None
        out.append(v)
    return out


def iter_documents(spec: DataSpec, split: str, seed: int = 0) -> Iterator[str]:
    """The documents of one split, in a deterministic order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    docs = _iter_documents(spec, split, seed)
    if spec.max_documents is not None:
        docs = (d for i, d in zip(range(spec.max_documents), docs))
    return docs


def _iter_documents(spec: DataSpec, split: str, seed: int) -> Iterator[str]:
    src = spec.source
    if src in SYNTHETIC:
        # Disjoint seed streams: train and val never share a generator state.
        stream_seed = (seed * 1_000_003 + (1 if split == "train" else 2)) & 0x7FFFFFFF
        n = spec.synthetic_train_bytes if split == "train" else spec.synthetic_val_bytes
        yield from SYNTHETIC[src][1](stream_seed, n, spec.recall_spec())
        return
    if split == "val" and spec.val_source is not None:
        for f in resolve_files(spec.val_source):
            yield from _read_file(f, spec.text_field)
        return
    if src == "python-stdlib":
        files = python_stdlib_files()
    elif isinstance(src, (str, os.PathLike, list, tuple)):
        files = resolve_files(src)
    else:
        raise ValueError(f"data.source must be a path, glob, list or one of {EMBEDDED_SOURCES}, got {src!r}")
    if src != "python-stdlib" and spec.val_source is None:
        siblings = _sibling_val(files)
        if siblings is not None:
            for f in files if split == "train" else siblings:
                yield from _read_file(f, spec.text_field)
            return
    yield from _hash_split(files, spec, split)


def _hash_split(files: list[Path], spec: DataSpec, split: str) -> Iterator[str]:
    def read_all():
        for f in files:
            if src_is_stdlib:
                yield f.read_text(encoding="utf-8", errors="replace")
            else:
                yield from _read_file(f, spec.text_field)

    src_is_stdlib = spec.source == "python-stdlib"
    # One pass to learn whether the hash split leaves validation empty (tiny sources, one .txt).
    n_docs, n_val = 0, 0
    for doc in read_all():
        n_docs += 1
        n_val += _in_val(doc, spec.val_fraction)
    if n_docs == 0:
        raise ValueError(f"data.source {spec.source}: no documents found")
    if n_val == 0 or n_val == n_docs:
        # Too few documents for a document-level split: cut the last document by characters.
        for i, doc in enumerate(read_all()):
            if i < n_docs - 1:
                if split == "train":
                    yield doc
                continue
            cut = int(len(doc) * (1 - spec.val_fraction))
            yield doc[:cut] if split == "train" else doc[cut:]
        return
    for doc in read_all():
        if _in_val(doc, spec.val_fraction) == (split == "val"):
            yield doc


# ----------------------------------------------------------------------------------------------
# Token stream with cache
# ----------------------------------------------------------------------------------------------
def _source_key(spec: DataSpec, split: str, seed: int, tokenizer) -> str:
    """Cache key: source identity (paths, sizes, mtimes), split settings and the tokenizer."""
    ident: list = []
    if spec.source in EMBEDDED_SOURCES:
        ident.append(spec.source)
        if spec.source == "python-stdlib":
            ident.append(sysconfig.get_paths()["stdlib"])
    else:
        for f in resolve_files(spec.source) + (resolve_files(spec.val_source) if spec.val_source else []):
            st = f.stat()
            ident.append([str(f.resolve()), st.st_size, int(st.st_mtime)])
    blob = json.dumps(
        [ident, split, seed if spec.source in SYNTHETIC else None, spec.text_field,
         spec.val_fraction, spec.max_documents, spec.synthetic, spec.synthetic_train_bytes,
         spec.synthetic_val_bytes, tokenizer_fingerprint(tokenizer)],
        sort_keys=True, default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def tokenize_documents(docs: Iterable[str], tokenizer, eos_id: int, batch: int = 256) -> np.ndarray:
    """Concatenate the token ids of `docs`, with `eos_id` after each one, streaming in batches."""
    dtype = np.uint16 if len(tokenizer) <= np.iinfo(np.uint16).max + 1 else np.int32
    chunks: list[np.ndarray] = []
    eos = np.array([eos_id], dtype=dtype)
    pending: list[str] = []

    def flush():
        if not pending:
            return
        if hasattr(tokenizer, "backend_tokenizer") and not _is_bytes(tokenizer):
            encs = tokenizer.backend_tokenizer.encode_batch(pending, add_special_tokens=False)
            arrays = [np.asarray(e.ids, dtype=dtype) for e in encs]
        else:
            arrays = [encode_document(tokenizer, d).astype(dtype) for d in pending]
        for a in arrays:
            chunks.append(a)
            chunks.append(eos)
        pending.clear()

    for doc in docs:
        pending.append(doc)
        if len(pending) >= batch:
            flush()
    flush()
    if not chunks:
        return np.zeros(0, dtype=dtype)
    return np.concatenate(chunks)


def _is_bytes(tokenizer) -> bool:
    from .tokenizer import is_byte_level

    return is_byte_level(tokenizer)


def default_cache_dir() -> Path:
    return Path(os.environ.get("SSA_CACHE_DIR", Path.home() / ".cache" / "ssa")) / "tokens"


def load_tokens(spec: DataSpec, split: str, tokenizer, seed: int = 0) -> np.ndarray:
    """The split's token stream, from the cache when possible (generated sources are not cached)."""
    eos_id = tokenizer.eos_token_id
    if is_shard_source(spec.source):  # pre-tokenized by `ssa data prepare`: memory-mapped, no cache
        return open_split(shard_dir(spec.source), split, tokenizer)
    if spec.source in SYNTHETIC:
        return tokenize_documents(iter_documents(spec, split, seed), tokenizer, eos_id)
    cache_dir = Path(spec.cache_dir) if spec.cache_dir else default_cache_dir()
    path = cache_dir / f"{split}-{_source_key(spec, split, seed, tokenizer)}.npy"
    if path.is_file():
        try:
            return np.load(path, mmap_mode="r")
        except (ValueError, OSError):
            pass  # a damaged cache entry is rebuilt below
    tokens = tokenize_documents(iter_documents(spec, split, seed), tokenizer, eos_id)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            np.save(fh, tokens)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs speed
    return tokens


# ----------------------------------------------------------------------------------------------
# Packing and sampling
# ----------------------------------------------------------------------------------------------
class PackedRows:
    """Non-overlapping rows of `seq_len` tokens over a token stream (the partial tail is dropped)."""

    def __init__(self, tokens: np.ndarray, seq_len: int):
        self.tokens = tokens
        self.seq_len = seq_len
        self.n_rows = len(tokens) // seq_len

    def __len__(self) -> int:
        return self.n_rows

    def rows(self, indices: Iterable[int]) -> np.ndarray:
        L = self.seq_len
        return np.stack([np.asarray(self.tokens[i * L:(i + 1) * L], dtype=np.int64) for i in indices])


def row_positions(rows, eos_id: int):
    """Positions of `pack: documents` for rows [N, L] (numpy or torch, on any device), as an int64
    torch tensor: 0 at every row start and after every EOS, then counting up, so each document (its
    EOS included) is numbered from 0."""
    import torch

    rows = torch.as_tensor(rows)
    col = torch.arange(rows.shape[1], device=rows.device).expand(rows.shape)
    starts = torch.zeros(rows.shape, dtype=torch.bool, device=rows.device)
    starts[:, 0] = True
    starts[:, 1:] = rows[:, :-1] == eos_id
    # The column of the latest document start at or before each column (running maximum).
    return col - torch.where(starts, col, 0).cummax(1).values


class RowSampler:
    """The visiting order of rows: a fresh seeded permutation per epoch, indexed by global position."""

    def __init__(self, n_rows: int, seed: int, shuffle: bool = True):
        if n_rows < 1:
            raise ValueError("the training data gives no complete row: use more data or a smaller data.seq_len")
        self.n_rows, self.seed, self.shuffle = n_rows, seed, shuffle
        self._perm_epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> np.ndarray:
        if self._perm_epoch != epoch:
            if self.shuffle:
                self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_rows)
            else:
                self._perm = np.arange(self.n_rows)
            self._perm_epoch = epoch
        return self._perm

    def indices(self, start: int, count: int) -> list[int]:
        out = []
        for p in range(start, start + count):
            epoch, i = divmod(p, self.n_rows)
            out.append(int(self._permutation(epoch)[i]))
        return out


class TrainLoader:
    """Global batches of `micro_batch * grad_accum * world_size` rows; this rank's share per step.

    `position` counts rows consumed by all ranks; it is the only state a checkpoint needs.
    """

    def __init__(self, rows: PackedRows, *, micro_batch: int, grad_accum: int, seed: int,
                 rank: int = 0, world_size: int = 1, position: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.rows, self.micro_batch, self.grad_accum = rows, micro_batch, grad_accum
        self.rank, self.world_size = rank, world_size
        self.sampler = RowSampler(len(rows), seed)
        self.position = position

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.world_size

    @property
    def epoch(self) -> int:
        return self.position // self.sampler.n_rows

    def next_step(self) -> list[np.ndarray]:
        """This rank's `grad_accum` micro-batches [micro_batch, seq_len] for the next step."""
        per_rank = self.micro_batch * self.grad_accum
        start = self.position + self.rank * per_rank
        idx = self.sampler.indices(start, per_rank)
        self.position += self.global_batch
        data = self.rows.rows(idx)
        return [data[i * self.micro_batch:(i + 1) * self.micro_batch] for i in range(self.grad_accum)]

    def state_dict(self) -> dict:
        return {"position": self.position, "epoch": self.epoch, "n_rows": self.sampler.n_rows,
                "global_batch": self.global_batch}

    def load_state_dict(self, state: dict) -> None:
        if state.get("n_rows") not in (None, self.sampler.n_rows):
            raise ValueError(
                f"checkpoint data position was recorded over {state['n_rows']} rows but the data now "
                f"gives {self.sampler.n_rows}: the data source, tokenizer or seq_len changed"
            )
        self.position = int(state["position"])


def val_rows(rows: PackedRows, count: int) -> np.ndarray:
    """The first `count` validation rows (fixed, unshuffled: the same rows at every evaluation)."""
    count = min(count, len(rows))
    return rows.rows(range(count)) if count else np.zeros((0, rows.seq_len), dtype=np.int64)
