"""`ssa data prepare` token shards: the same stream as tokenizing the text, any worker count, any
shard size; the trainer reads them (and resumes over them) like any other source."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from ssa.cli import main
from ssa.training.data import DataSpec, load_tokens
from ssa.training.shards import ShardTokens, open_split, prepare_shards, read_index
from ssa.training.tokenizer import build_tokenizer, shared_data_dir

DOCS = ["The quick brown fox.\nJumps over", "é ü — unicode", "short", "x" * 97, "last document\n\n"]
VAL_DOCS = ["held out one", "held out two, a bit longer"]


def _write_corpus(root: Path) -> tuple[Path, Path]:
    train, val = root / "train.jsonl", root / "val.jsonl"
    train.write_text("".join(json.dumps({"text": d}) + "\n" for d in DOCS), encoding="utf-8")
    val.write_text("".join(json.dumps({"text": d}) + "\n" for d in VAL_DOCS), encoding="utf-8")
    return train, val


def _expected_stream(docs, tokenizer) -> np.ndarray:
    """Independent expectation: each document's ids from the tokenizer, then EOS."""
    out = []
    for d in docs:
        out += tokenizer.encode(d, add_special_tokens=False) + [tokenizer.eos_token_id]
    return np.array(out)


@pytest.mark.parametrize("shard_tokens", [7, 1 << 20])
def test_shards_hold_the_tokenized_stream(tmp_path, shard_tokens):
    train, val = _write_corpus(tmp_path)
    index = prepare_shards([train], tmp_path / "s", "bytes", val_inputs=[val], shard_tokens=shard_tokens)
    tok = build_tokenizer("bytes")
    want = _expected_stream(DOCS, tok)
    got = open_split(tmp_path / "s", "train", tok)
    assert len(got) == len(want) and np.array_equal(got[:], want)
    assert np.array_equal(open_split(tmp_path / "s", "val", tok)[:], _expected_stream(VAL_DOCS, tok))
    assert index["dtype"] == "uint16" and sum(e["documents"] for e in index["splits"]["train"]) == len(DOCS)
    assert len(index["splits"]["train"]) == (-(-len(want) // 7) if shard_tokens == 7 else 1)
    # Slices across shard boundaries, and the text loader reads the same stream.
    for a, b in [(0, 1), (5, 23), (6, 8), (len(want) - 3, len(want) + 5), (30, 30)]:
        assert np.array_equal(got[a:b], want[a:b])
    text = load_tokens(DataSpec(source=str(train), tokenizer="bytes", cache_dir=str(tmp_path / "c")), "train", tok)
    assert np.array_equal(np.asarray(text), want)


def test_worker_count_does_not_change_the_shards(tmp_path):
    train, _ = _write_corpus(tmp_path)
    gz = tmp_path / "extra.txt.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as fh:
        fh.write("a gzipped text file is one document")
    one = prepare_shards([train, gz], tmp_path / "one", "bytes", val_fraction=0.3, batch_documents=2)
    two = prepare_shards([train, gz], tmp_path / "two", "bytes", val_fraction=0.3, batch_documents=2, workers=2)
    assert one["splits"] == two["splits"]
    for e in one["splits"]["train"] + one["splits"]["val"]:
        assert (tmp_path / "one" / e["file"]).read_bytes() == (tmp_path / "two" / e["file"]).read_bytes()
    n_docs = sum(e["documents"] for s in ("train", "val") for e in one["splits"][s])
    assert n_docs == len(DOCS) + 1 and one["splits"]["val"]  # the hash split left documents on both sides


def test_bad_input_and_mismatched_tokenizer(tmp_path, capsys):
    train, _ = _write_corpus(tmp_path)
    assert main(["data", "prepare", "--input", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "x")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["data", "prepare", "--input", str(train), "--tokenizer", "bytes", "--workers", "0",
                 "--out", str(tmp_path / "x")]) == 2
    assert "--workers" in capsys.readouterr().err
    assert not (tmp_path / "x" / "index.json").exists()
    assert main(["data", "prepare", "--input", str(train), "--tokenizer", "bytes", "--out", str(tmp_path / "s")]) == 0
    assert main(["data", "prepare", "--input", str(train), "--tokenizer", "bytes", "--out", str(tmp_path / "s")]) == 2
    assert "already holds" in capsys.readouterr().err
    other = build_tokenizer("train-bpe:300", iter(DOCS * 3))
    with pytest.raises(ValueError, match="tokenized with 'bytes'"):
        open_split(tmp_path / "s", "train", other)
    with pytest.raises(ValueError, match="train-bpe"):
        DataSpec.from_dict({"source": f"shards:{tmp_path / 's'}", "tokenizer": "train-bpe:300"})
    (tmp_path / "s" / "train_00000.bin").write_bytes(b"\x00\x01")
    with pytest.raises(ValueError, match="size differs"):
        open_split(tmp_path / "s", "train")


def test_shard_tokens_indexing_errors():
    t = ShardTokens([], [], "uint16")
    assert len(t) == 0 and len(t[0:5]) == 0
    with pytest.raises(IndexError):
        t[0]
    with pytest.raises(TypeError, match="step 1"):
        t[::2]


def test_train_on_shards_and_resume(tmp_path):
    """A run on shards resumes where it stopped: steps 3-4 after a resume equal an uninterrupted run's."""
    from ssa.training import trainer as T
    from ssa.training.config import resolve_config

    train, val = _write_corpus(tmp_path)
    prepare_shards([train] * 40, tmp_path / "s", "bytes", val_inputs=[val] * 20)

    def cfg(max_steps):
        return resolve_config({
            "model": dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                          block_size=4, block_count=2, pad_vocab_multiple=64),
            "train": dict(micro_batch_size=2, grad_accum=1, max_steps=max_steps, warmup_steps=1, log_every=1,
                          eval_every=100, eval_batches=1, save_every=2, device="cpu", num_threads=1),
            "data": dict(source=f"shards:{tmp_path / 's'}", tokenizer="bytes", seq_len=32)}, method="full")

    T.train(cfg(4), tmp_path / "a", progress=False)
    T.train(cfg(2), tmp_path / "b", progress=False)
    T.train(cfg(4), tmp_path / "b", resume=True, progress=False)

    def losses(run):
        lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
        return {m["step"]: m["loss"] for m in lines if "loss" in m}

    a, b = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert a[3] == b[3] and a[4] == b[4]
    record = json.loads((tmp_path / "a" / "train_config.json").read_text())
    assert record["data_stats"]["train_tokens"] == len(_expected_stream(DOCS, build_tokenizer("bytes"))) * 40


@pytest.mark.skipif(shared_data_dir() is None or not (shared_data_dir() / "gutenberg" / "train.jsonl.gz").is_file(),
                    reason="shared Gutenberg data not available")
def test_gutenberg_slice_with_gpt2_in_two_workers(tmp_path):
    from ssa.textfiles import iter_file_documents

    root = shared_data_dir() / "gutenberg"
    # A small slice: the first 3 books, 20k characters of each (tokenizing whole books costs CI time).
    docs = [d[:20_000] for _, d in zip(range(3), iter_file_documents(root / "train.jsonl.gz"))]
    src = tmp_path / "slice.jsonl.gz"
    with gzip.open(src, "wt", encoding="utf-8") as fh:
        fh.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    index = prepare_shards([src], tmp_path / "g", "gpt2", val_fraction=0.01, workers=2, batch_documents=1)
    tok = build_tokenizer("gpt2")
    assert read_index(tmp_path / "g")["vocab"] == len(tok) and index["dtype"] == "uint16"
    from ssa.training.data import _in_val

    kept = [d for d in docs if not _in_val(d, 0.01)]
    stream = open_split(tmp_path / "g", "train", tok)
    assert np.array_equal(stream[:], _expected_stream(kept, tok))
    assert tok.decode(stream[:50].tolist()) == kept[0][:len(tok.decode(stream[:50].tolist()))]
