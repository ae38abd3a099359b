"""Tokenizers, document sources, the held-out split, packing and the resumable sampler."""

from __future__ import annotations

import gzip
import json
import re

import numpy as np
import pytest

from ssa.training import data as D
from ssa.training.synthetic import KEYS, RecallSpec, recall_documents, recall_probe
from ssa.training.tokenizer import (
    EOS_TOKEN, build_tokenizer, byte_tokenizer, bytes_of, encode_document, is_byte_level, shared_data_dir,
)

UNICODE = "Grüße, 世界! 🙂 naïve café\n\ttabs  and   spaces\r\n\x00 end"


# ---------------------------------------------------------------------------------------------
# tokenizers
# ---------------------------------------------------------------------------------------------
def test_bytes_tokenizer_round_trip_and_ids_are_bytes(tmp_path):
    tok = byte_tokenizer()
    ids = tok.encode(UNICODE)
    assert ids == list(UNICODE.encode("utf-8"))  # id == byte value, one token per byte
    assert len(ids) == len(UNICODE.encode()) == bytes_of(UNICODE)
    assert tok.decode(ids) == UNICODE
    assert len(tok) == 257 and tok.eos_token_id == 256 and tok.convert_ids_to_tokens(256) == EOS_TOKEN
    assert encode_document(tok, UNICODE).tolist() == ids  # the fast path agrees with the tokenizer

    from transformers import AutoTokenizer

    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert again.encode(UNICODE) == ids and again.decode(ids) == UNICODE
    assert is_byte_level(again)


@pytest.mark.skipif(shared_data_dir() is None, reason="shared data folder not present")
def test_gpt2_tokenizer_matches_known_ids():
    tok = build_tokenizer("gpt2")
    assert len(tok) == 50257 and tok.eos_token_id == 50256
    assert tok.encode("Hello world") == [15496, 995]  # the published GPT-2 ids
    assert tok.decode(tok.encode(UNICODE)) == UNICODE
    assert not is_byte_level(tok)


def test_train_bpe_round_trips_and_compresses():
    corpus = ["the quick brown fox jumps over the lazy dog. " * 20] * 5
    tok = build_tokenizer("train-bpe:300", corpus)
    assert 257 < len(tok) <= 300
    text = "the lazy dog jumps. " + UNICODE
    assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode("the quick brown fox")) < len("the quick brown fox")


@pytest.mark.parametrize("spec", ["", "bpe", "train-bpe:abc", "train-bpe:10", "/no/such/tokenizer"])
def test_bad_tokenizer_spec(spec):
    with pytest.raises(ValueError, match="tokenizer"):
        build_tokenizer(spec, corpus=["x"])


# ---------------------------------------------------------------------------------------------
# synthetic-recall
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("keys", ["words", "letters"])
def test_synthetic_recall_statements_are_queried_far_back(keys):
    spec = RecallSpec(keys=keys)
    assert spec.min_gap > 16 * 4  # beyond the tiny preset's 64-token sparse window
    docs = list(recall_documents(1, 60_000, spec))
    assert all(re.fullmatch(r"[A-Z]", k) for d in docs for k in re.findall(r"code for (\w+)", d)) == (keys == "letters")
    n_queries = 0
    event = re.compile(r"(?<!Again, )The code for (\w+) is (\d+)\. |Again, the code for (\w+) is (\d+)\.")
    for doc in docs:
        stated = {}  # key -> (byte offset after its statement, value); keys recur only after a query
        for m in event.finditer(doc):
            if m.group(1):
                assert m.group(1) not in stated
                stated[m.group(1)] = (len(doc[: m.end()].encode()), m.group(2))
                continue
            end, value = stated.pop(m.group(3))  # a query always follows its statement
            assert value == m.group(4), "a query must repeat its statement's value"
            distance = len(doc[: m.start()].encode()) - end
            assert spec.min_gap <= distance <= spec.max_gap + 80
            n_queries += 1
        assert not stated  # every fact is queried
    assert n_queries > 50


def test_synthetic_is_deterministic_and_seeds_differ():
    a = list(recall_documents(3, 10_000))
    assert a == list(recall_documents(3, 10_000))
    assert set(a).isdisjoint(recall_documents(4, 10_000))


def test_recall_probe():
    prompt, answer = recall_probe(0, 200)
    key = re.match(r"The code for (\w+) is (\d+)\.", prompt)
    assert key.group(2) == answer and key.group(1) in KEYS
    assert prompt.endswith(f"Again, the code for {key.group(1)} is ")
    assert len(prompt) - len(key.group(0)) > 200


def test_synthetic_train_and_val_never_overlap():
    spec = D.DataSpec(synthetic_train_bytes=50_000, synthetic_val_bytes=20_000)
    train = list(D.iter_documents(spec, "train", seed=0))
    val = list(D.iter_documents(spec, "val", seed=0))
    assert train and val and set(train).isdisjoint(val)
    assert sum(len(d) + 1 for d in val) >= 20_000


# ---------------------------------------------------------------------------------------------
# file sources and splits
# ---------------------------------------------------------------------------------------------
def _write_jsonl_gz(path, texts, field="text"):
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for t in texts:
            fh.write(json.dumps({field: t, "title": "x"}) + "\n")


def test_jsonl_gz_with_sibling_val(tmp_path):
    _write_jsonl_gz(tmp_path / "train.jsonl.gz", ["book one", "book two"])
    _write_jsonl_gz(tmp_path / "val.jsonl.gz", ["held out"])
    spec = D.DataSpec(source=str(tmp_path / "train.jsonl.gz"))
    assert list(D.iter_documents(spec, "train")) == ["book one", "book two"]
    assert list(D.iter_documents(spec, "val")) == ["held out"]


def test_hash_split_is_a_partition(tmp_path):
    docs = [f"document number {i} " * (i % 7 + 1) for i in range(400)]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"body": d}) for d in docs))
    spec = D.DataSpec(source=str(tmp_path), text_field="body", val_fraction=0.1)
    train, val = list(D.iter_documents(spec, "train")), list(D.iter_documents(spec, "val"))
    assert sorted(train + val) == sorted(docs) and set(train).isdisjoint(val)
    assert 10 < len(val) < 80


def test_single_txt_document_is_split_by_characters(tmp_path):
    text = "".join(f"line {i}\n" for i in range(1000))
    (tmp_path / "one.txt").write_text(text)
    spec = D.DataSpec(source=str(tmp_path / "one.txt"), val_fraction=0.1)
    (train,), (val,) = list(D.iter_documents(spec, "train")), list(D.iter_documents(spec, "val"))
    assert train + val == text and 0.05 < len(val) / len(text) < 0.15


def test_python_stdlib_source():
    files = D.python_stdlib_files()
    assert len(files) > 100 and all(f.suffix == ".py" for f in files)
    assert not any("site-packages" in f.parts for f in files)
    spec = D.DataSpec(source="python-stdlib", max_documents=5)
    assert len(list(D.iter_documents(spec, "train"))) == 5


def test_bad_sources_give_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such.jsonl"):
        list(D.iter_documents(D.DataSpec(source=str(tmp_path / "no_such.jsonl")), "train"))
    bad_gz = tmp_path / "bad.jsonl.gz"
    bad_gz.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="bad.jsonl.gz"):
        list(D.iter_documents(D.DataSpec(source=str(bad_gz)), "train"))
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "ok"}\n{broken\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        list(D.iter_documents(D.DataSpec(source=str(bad_json)), "train"))
    with pytest.raises(ValueError, match="'content'"):
        list(D.iter_documents(D.DataSpec(source=str(tmp_path / "bad.jsonl"), text_field="content"), "train"))
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ValueError, match="unsupported file type"):
        D.resolve_files(tmp_path / "x.csv")
    with pytest.raises(ValueError, match="data.seq_len"):
        D.DataSpec.from_dict({"seq_len": 1})
    with pytest.raises(ValueError, match="unknown data key"):
        D.DataSpec.from_dict({"sorce": "x"})
    with pytest.raises(ValueError, match="data.synthetic"):
        D.DataSpec.from_dict({"synthetic": {"min_gap": 500, "max_gap": 100}})
    with pytest.raises(ValueError, match="data.synthetic.keys"):
        D.DataSpec.from_dict({"synthetic": {"keys": "numbers"}})


# ---------------------------------------------------------------------------------------------
# tokens, packing, sampling
# ---------------------------------------------------------------------------------------------
def test_stream_puts_eos_after_every_document():
    tok = byte_tokenizer()
    docs = ["abc", "", "é!", "xyz" * 5]
    stream = D.tokenize_documents(docs, tok, tok.eos_token_id)
    expected = []
    for d in docs:
        expected += list(d.encode()) + [256]
    assert stream.tolist() == expected


def test_token_cache_is_reused(tmp_path, monkeypatch):
    (tmp_path / "a.txt").write_text("hello world " * 50)
    (tmp_path / "b.txt").write_text("other text " * 50)
    spec = D.DataSpec(source=str(tmp_path / "*.txt"), cache_dir=str(tmp_path / "cache"), val_fraction=0.3)
    tok = byte_tokenizer()
    first = np.asarray(D.load_tokens(spec, "train", tok))
    assert len(list((tmp_path / "cache").glob("train-*.npy"))) == 1

    def boom(*a, **k):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(D, "tokenize_documents", boom)
    assert np.array_equal(np.asarray(D.load_tokens(spec, "train", tok)), first)


def test_packing_fixed_rows_no_token_lost_or_duplicated():
    stream = np.arange(1000) % 251
    rows = D.PackedRows(stream, 64)
    assert len(rows) == 1000 // 64
    packed = rows.rows(range(len(rows)))
    assert packed.shape == (15, 64)
    assert np.array_equal(packed.reshape(-1), stream[: 15 * 64])  # in order, nothing lost or repeated


def test_sampler_epochs_are_seeded_permutations():
    s = D.RowSampler(50, seed=7)
    e0, e1 = s.indices(0, 50), s.indices(50, 50)
    assert sorted(e0) == sorted(e1) == list(range(50)) and e0 != e1
    assert D.RowSampler(50, seed=7).indices(0, 50) == e0
    assert D.RowSampler(50, seed=8).indices(0, 50) != e0
    assert s.indices(45, 10) == e0[45:] + e1[:5]  # batches straddle epochs without a gap


def test_loader_resumes_at_the_next_batch():
    rows = D.PackedRows(np.arange(64 * 40), 64)
    a = D.TrainLoader(rows, micro_batch=2, grad_accum=3, seed=1)
    steps = [a.next_step() for _ in range(20)]  # crosses several epochs
    b = D.TrainLoader(rows, micro_batch=2, grad_accum=3, seed=1)
    for _ in range(7):
        b.next_step()
    c = D.TrainLoader(rows, micro_batch=2, grad_accum=3, seed=1)
    c.load_state_dict(b.state_dict())
    for want in steps[7:]:
        got = c.next_step()
        assert all(np.array_equal(g, w) for g, w in zip(got, want))
    other = D.PackedRows(np.arange(64 * 41), 64)
    with pytest.raises(ValueError, match="rows"):
        D.TrainLoader(other, micro_batch=2, grad_accum=3, seed=1).load_state_dict(b.state_dict())


def test_ranks_take_disjoint_slices_of_each_global_batch():
    rows = D.PackedRows(np.arange(16 * 100), 16)
    world = 3
    loaders = [D.TrainLoader(rows, micro_batch=2, grad_accum=2, seed=0, rank=r, world_size=world) for r in range(world)]
    single = D.TrainLoader(rows, micro_batch=2 * 2 * world, grad_accum=1, seed=0)
    for _ in range(5):
        per_rank = [np.concatenate(l.next_step()) for l in loaders]
        firsts = [set(p[:, 0].tolist()) for p in per_rank]
        for i in range(world):
            for j in range(i + 1, world):
                assert firsts[i].isdisjoint(firsts[j])
        (whole,) = single.next_step()
        assert np.array_equal(np.concatenate(per_rank), whole)  # together: exactly the global batch
    with pytest.raises(ValueError, match="rank"):
        D.TrainLoader(rows, micro_batch=1, grad_accum=1, seed=0, rank=2, world_size=2)


def test_data_folder_from_env_then_home_default_then_clear_error(tmp_path, monkeypatch):
    from ssa.training.data import resolve_files

    home, data = tmp_path / "home", tmp_path / "mydata"
    (data / "gutenberg").mkdir(parents=True)
    (data / "gutenberg" / "a.txt").write_text("x")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SSA_DATA_DIR", str(data))
    assert shared_data_dir() == data
    assert resolve_files("shared:gutenberg/a.txt") == [data / "gutenberg" / "a.txt"]

    monkeypatch.delenv("SSA_DATA_DIR")
    assert shared_data_dir() is None  # the default ~/.cache/ssa/data does not exist yet
    for call in (lambda: build_tokenizer("gpt2"), lambda: resolve_files("shared:gutenberg/a.txt")):
        with pytest.raises(FileNotFoundError, match=r"SSA_DATA_DIR is not set and the default ~/.cache/ssa/data"):
            call()
    default = home / ".cache" / "ssa" / "data"
    default.mkdir(parents=True)
    assert shared_data_dir() == default

    monkeypatch.setenv("SSA_DATA_DIR", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=r"tokenizer 'gpt2' needs the data folder: SSA_DATA_DIR=.*missing "
                                                r"is not a directory .*'gpt2:PATH'"):
        build_tokenizer("gpt2")
