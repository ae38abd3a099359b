"""The embedded `synthetic-copy` corpus and the copy-accuracy measure."""

import random
from types import SimpleNamespace

import pytest
import torch

from ssa.evaluation.copy_task import copy_accuracy, copy_rows
from ssa.training.data import DataSpec, iter_documents, loss_labels
from ssa.training.synthetic import COPY_ALPHABET, CopySpec, copy_document, copy_documents, copy_span, repeat_mask
from ssa.training.tokenizer import build_tokenizer


@pytest.mark.parametrize("spec", [CopySpec(), CopySpec(segment_min=1, segment_max=3, min_gap=5, max_gap=5),
                                  CopySpec(segment_min=8, segment_max=9, min_gap=0, max_gap=0, alphabet=3)])
def test_copy_documents_repeat_their_segment_beyond_the_gap(spec):
    rng = random.Random(0)
    for _ in range(50):
        doc = copy_document(rng, spec)
        first_end = doc.index("]")
        seg = doc[1:first_end]
        assert spec.segment_min <= len(seg) <= spec.segment_max and set(seg) <= set(COPY_ALPHABET[:spec.alphabet])
        assert doc.endswith(f"[{seg}]")
        second = len(doc) - len(seg) - 2
        assert second - (first_end + 1) >= spec.min_gap  # filler of at least min_gap bytes between them
        filler = doc[first_end + 1:second]
        assert not set(filler) & set(COPY_ALPHABET[26:])  # no digits in the filler
        a, b = copy_span(doc)
        assert doc[a:b] == seg[1:]  # the repeat without its first symbol


def test_copy_source_in_the_data_pipeline():
    spec = DataSpec.from_dict({"source": "synthetic-copy", "synthetic": {"min_gap": 70},
                               "synthetic_train_bytes": 3000, "synthetic_val_bytes": 3000})
    assert spec.synthetic["min_gap"] == 70 and spec.synthetic["segment_max"] == CopySpec().segment_max
    train = list(iter_documents(spec, "train", 0))
    assert train == list(iter_documents(spec, "train", 0))
    assert set(train).isdisjoint(iter_documents(spec, "val", 0))
    assert sum(len(d) + 1 for d in train) >= 3000
    with pytest.raises(ValueError, match="data.synthetic"):
        DataSpec.from_dict({"source": "synthetic-copy", "synthetic": {"keys": "letters"}})
    with pytest.raises(ValueError, match="max_gap"):
        DataSpec.from_dict({"source": "synthetic-copy", "synthetic": {"min_gap": 9, "max_gap": 8}})
    for bad in (1, len(COPY_ALPHABET) + 1, 2.0, True):
        with pytest.raises(ValueError, match="data.synthetic.alphabet"):
            DataSpec.from_dict({"source": "synthetic-copy", "synthetic": {"alphabet": bad}})
    with pytest.raises(ValueError, match="data.synthetic.min_gap"):
        DataSpec.from_dict({"source": "synthetic-copy", "synthetic": {"min_gap": -1}})


def test_copy_rows_mask_exactly_the_repeats():
    tok = build_tokenizer("bytes")
    docs = list(copy_documents(1, 2000, CopySpec(min_gap=20, max_gap=30)))
    rows, mask = copy_rows(docs, tok, 64, 10)
    stream = "".join(d + "\0" for d in docs)  # EOS stands for one position, like the packed stream
    want = torch.zeros(len(stream), dtype=torch.bool)
    pos = 0
    for d in docs:
        a, b = copy_span(d)
        want[pos + a: pos + b] = True
        pos += len(d) + 1
    want = want[: rows.numel()].view(rows.shape)
    want[:, 0] = False
    assert torch.equal(mask, want)
    assert rows.shape == (10, 64)


class _Fixed(torch.nn.Module):
    """Predicts `answer[t + 1]` at position t (an oracle) or a constant token."""

    def __init__(self, rows, constant=None):
        super().__init__()
        self.rows, self.constant = rows, constant
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x, **kw):
        logits = torch.zeros(*x.shape, 300)
        if self.constant is not None:
            logits[..., self.constant] = 1.0
        else:
            for i in range(x.shape[0]):
                row = next(r for r in self.rows if torch.equal(r, x[i]))
                logits[i, torch.arange(x.shape[1] - 1), row[1:]] = 1.0
        return SimpleNamespace(logits=logits)


def test_copy_accuracy_against_oracle_and_constant():
    tok = build_tokenizer("bytes")
    docs = list(copy_documents(2, 3000, CopySpec(min_gap=20, max_gap=30)))
    rows, mask = copy_rows(docs, tok, 64, 6)
    assert copy_accuracy(_Fixed(rows), rows, mask, "full")["accuracy"] == 1.0
    sym = ord("A")
    hits = ((rows[:, 1:] == sym) & mask[:, 1:]).sum().item()
    res = copy_accuracy(_Fixed(rows, constant=sym), rows, mask, "sparse", 2, batch_size=4)
    assert res["positions"] == mask.sum().item()
    assert res["accuracy"] == pytest.approx(hits / mask.sum().item())


def test_copy_documents_distinct_symbols_and_whole_rows():
    spec = CopySpec(segment_min=20, segment_max=30, min_gap=40, max_gap=70, alphabet=len(COPY_ALPHABET),
                    distinct=True, row_len=160)
    rng = random.Random(3)
    leads = set()
    for _ in range(60):
        doc = copy_document(rng, spec)
        assert len(doc) == len(doc.encode()) == spec.row_len - 1  # one byte per symbol, EOS completes the row
        start, first_end = doc.index("["), doc.index("]")
        seg = doc[start + 1:first_end]
        assert len(set(seg)) == len(seg) and spec.segment_min <= len(seg) <= spec.segment_max
        second = doc.index(f"[{seg}]", first_end)
        assert spec.min_gap + 1 <= second - first_end - 1 <= spec.max_gap + 1  # a space and exactly `gap` filler bytes
        assert doc.count("[") == doc.count("]") == 2  # the filler around the pair holds no brackets
        a, b = copy_span(doc)
        assert doc[a:b] == seg[1:]
        leads.add(start)
    assert len(leads) > 10  # the pair starts anywhere in the row, not always in its first block
    # Packed with EOS, rows of row_len tokens each hold exactly one document.
    tok = build_tokenizer("bytes")
    docs = list(copy_documents(4, 20 * spec.row_len, spec))
    rows, mask = copy_rows(docs, tok, spec.row_len, 8)
    assert rows.shape == (8, spec.row_len) and (rows[:, -1] == tok.eos_token_id).all()
    assert [int(m.sum()) for m in mask] == [len(d.split("]")[0].split("[")[1]) - 1 for d in docs[:8]]


@pytest.mark.parametrize("bad, match", [
    ({"distinct": True, "alphabet": 10, "segment_max": 11}, "distinct"),
    ({"distinct": 1}, "distinct"),
    ({"row_len": -1}, "row_len"),
    ({"row_len": 100, "segment_max": 32, "min_gap": 8, "max_gap": 32}, "row_len"),  # 2 x 34 + 32 + 1 = 101 > 99
])
def test_copy_spec_rejects_bad_settings(bad, match):
    with pytest.raises(ValueError, match=f"data.synthetic.{match}"):
        CopySpec(**bad).validate()


def test_copy_row_len_must_match_seq_len():
    good = {"source": "synthetic-copy", "seq_len": 128, "synthetic": {"row_len": 128, "min_gap": 16, "max_gap": 32}}
    assert DataSpec.from_dict(good).synthetic["row_len"] == 128
    with pytest.raises(ValueError, match="row_len .* data.seq_len"):
        DataSpec.from_dict({**good, "seq_len": 256})


def _row_docs(spec, n, seed=0):
    rng = random.Random(seed)
    return [copy_document(rng, spec) for _ in range(n)]


@pytest.mark.parametrize("spec", [CopySpec(segment_min=1, segment_max=5, min_gap=0, max_gap=7, row_len=40),
                                  CopySpec(segment_min=3, segment_max=3, min_gap=0, max_gap=0, row_len=12),
                                  CopySpec(alphabet=65, distinct=True, row_len=300)])
def test_repeat_mask_marks_the_copy_span_of_each_row(spec):
    tok = build_tokenizer("bytes")
    docs = _row_docs(spec, 30)
    rows = torch.tensor([list(d.encode()) + [tok.eos_token_id] for d in docs])
    assert rows.shape == (30, spec.row_len)
    mask = repeat_mask(rows, ord("["), ord("]"))
    for d, m in zip(docs, mask):
        a, b = copy_span(d)
        assert m.nonzero().flatten().tolist() == list(range(a, b))


def test_copy_loss_setting_is_checked():
    base = {"source": "synthetic-copy", "seq_len": 64}
    spec = DataSpec.from_dict({**base, "synthetic": {"row_len": 64, "segment_min": 4, "segment_max": 8, "min_gap": 0, "max_gap": 4, "loss": "repeat"}})
    assert spec.synthetic["loss"] == "repeat"
    assert DataSpec.from_dict(base).synthetic["loss"] == "all"
    for bad in ("copy", "", None, 1):
        with pytest.raises(ValueError, match="data.synthetic.loss must be one of all, repeat"):
            DataSpec.from_dict({**base, "synthetic": {"row_len": 64, "segment_min": 4, "segment_max": 8, "max_gap": 4, "min_gap": 0, "loss": bad}})
    with pytest.raises(ValueError, match="loss=repeat needs data.synthetic.row_len"):
        DataSpec.from_dict({**base, "synthetic": {"loss": "repeat"}})
    with pytest.raises(ValueError, match="needs data.tokenizer=bytes"):
        DataSpec.from_dict({**base, "tokenizer": "gpt2",
                            "synthetic": {"row_len": 64, "segment_min": 4, "segment_max": 8, "min_gap": 0, "max_gap": 4, "loss": "repeat"}})


def test_repeat_loss_counts_only_the_repeat():
    """Training and validation CE under loss=repeat: the mean CE over the copy positions alone."""
    import torch.nn.functional as F

    from ssa.model import SSAConfig, SSAForCausalLM
    from ssa.training.trainer import evaluate

    tok = build_tokenizer("bytes")
    spec = DataSpec.from_dict({"source": "synthetic-copy", "seq_len": 48,
                               "synthetic": {"row_len": 48, "segment_min": 4, "segment_max": 8, "min_gap": 2,
                                             "max_gap": 10, "loss": "repeat"}})
    assert loss_labels(DataSpec.from_dict({"source": "synthetic-copy"}), tok) is None
    labels_of = loss_labels(spec, tok)
    docs = _row_docs(spec.recall_spec(), 6, seed=3)
    rows = torch.tensor([list(d.encode()) + [tok.eos_token_id] for d in docs])
    torch.manual_seed(0)
    model = SSAForCausalLM(SSAConfig(method="full", vocab_size=257, hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, max_position_embeddings=48, block_size=8, block_count=2))
    with torch.no_grad():
        logits = model.eval()(rows).logits
    want = []
    for r, d in enumerate(docs):
        a, b = copy_span(d)
        want.append(F.cross_entropy(logits[r, a - 1:b - 1], rows[r, a:b], reduction="mean"))
    got = evaluate(model, rows.numpy(), method="full", micro_batch=6, device=torch.device("cpu"),
                   amp_dtype=torch.float32, labels_of=labels_of)
    weights = torch.tensor([copy_span(d)[1] - copy_span(d)[0] for d in docs], dtype=torch.float32)
    assert got["full"] == pytest.approx(float((torch.stack(want) * weights).sum() / weights.sum()), rel=1e-5)
    full = evaluate(model, rows.numpy(), method="full", micro_batch=6, device=torch.device("cpu"),
                    amp_dtype=torch.float32)
    assert abs(full["full"] - got["full"]) > 1e-3  # the unmasked loss differs


def test_copy_results_are_read_back(tmp_path):
    """`ssa compare --sections copy` writes eval/copy.json; the run's results must include it."""
    from ssa.evaluation.results import read_results, write_result

    payload = {"modes": {"full": {"accuracy": 0.9, "positions": 10}, "sparse": {"accuracy": 0.4, "positions": 10}}}
    write_result(tmp_path / "eval" / "copy.json", "copy", {"method": "full"}, {"rows": 2}, payload)
    got = read_results(tmp_path)
    assert got["copy"]["modes"]["sparse"]["accuracy"] == 0.4


def test_trainer_step_loss_counts_only_the_repeat(tmp_path):
    """The trainer's training loss under loss=repeat is the CE over the copy spans of its batch."""
    import torch.nn.functional as F

    from ssa.training import distributed as dist
    from ssa.training.config import resolve_config
    from ssa.training.trainer import Trainer

    syn = {"row_len": 48, "segment_min": 4, "segment_max": 8, "min_gap": 2, "max_gap": 10, "loss": "repeat"}
    base = {"model": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "block_size": 8,
                      "block_count": 2},
            "train": {"micro_batch_size": 4, "max_steps": 2, "num_threads": 1, "device": "cpu"},
            "data": {"source": "synthetic-copy", "seq_len": 48, "synthetic": syn,
                     "synthetic_train_bytes": 2000, "synthetic_val_bytes": 500}}
    cfg = resolve_config(base, method="full")
    trainer = Trainer(cfg, tmp_path / "run", info=dist.env_info(), device=torch.device("cpu")).build()
    x = torch.from_numpy(trainer.loader.next_step()[0]).long()
    with torch.no_grad():
        got = float(trainer.forward(x).ce_loss)
        logits = trainer.model(x).logits
    losses = []
    for r in range(x.shape[0]):
        doc = bytes(x[r, :-1].tolist()).decode()  # the row's document; its last token is the EOS
        a, b = copy_span(doc)
        losses.append(F.cross_entropy(logits[r, a - 1:b - 1], x[r, a:b], reduction="none"))
    assert got == pytest.approx(float(torch.cat(losses).mean()), rel=1e-5)
