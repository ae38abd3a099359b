"""`ssa demo`: the topic task's rows hold what its docstring says, the command validates its input,
its reading follows the numbers, and the demo's outcome (SSA keeps its answers under sparse
inference, FullAttn loses some) holds from a fixed seed on a small budget."""

import json

import pytest
import torch

from ssa.cli import main
from ssa.commands.demo import reading
from ssa.training.topic_task import IGNORE, TopicRun, TopicTask, conflict_rows, topic_rows, train_and_score

TASKS = [TopicTask(), TopicTask(seq_len=96, block_size=6, symbols=11, topics=5, marker_types=1, repeats=3,
                                decoys=2, answer_blocks=3),
         TopicTask(seq_len=64, block_size=2, symbols=3, topics=2, marker_types=7, repeats=0, decoys=0,
                   answer_blocks=1)]


def _rows(task, n=64, seed=0):
    task.validate()
    return topic_rows(task, n, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("task", TASKS, ids=["default", "odd", "tiny-blocks"])
def test_rows_hold_pairs_copies_decoys_and_labels(task):
    x, labels = _rows(task)
    T, s = task.seq_len, task.block_size
    assert x.shape == labels.shape == (64, T) and x.dtype == torch.long
    assert int(x.min()) >= 0 and int(x.max()) < task.vocab_size
    z = labels[:, -1]
    assert bool((z < task.topics).all())
    # Scored positions: exactly the logits from answer_from on (labels shifted by one), all z.
    scored = labels != IGNORE
    assert scored.sum(1).tolist() == [T - task.answer_from - 1] * 64
    assert bool((labels[:, task.answer_from + 1:] == z[:, None]).all())
    is_marker = x >= task.symbols
    for row in range(64):
        for b in range(T // s):
            block = x[row, b * s:(b + 1) * s]
            where = torch.nonzero(block >= task.symbols).flatten().tolist()
            assert len(where) == 1 and where[0] >= 1, "one marker per block, never first"
            assert int(block[where[0] - 1]) == z[row], "the token before the marker is the topic"
    assert int(is_marker.sum()) == 64 * (T // s)
    # Spread copies: before the decoy blocks z appears at least once per block plus `repeats` times.
    first = x[:, : task.spread_len]
    assert bool(((first == z[:, None]).sum(1) >= task.spread_len // s + task.repeats).all())
    if task.decoys:
        # Each decoy block holds one symbol d != z at least `decoys` times.
        tail = x[:, task.spread_len:].reshape(64, -1, s)
        counts = torch.stack([(tail == v).sum(-1) for v in range(task.topics)], -1)  # [rows, blocks, topics]
        d = counts.sum(1).scatter(1, z[:, None], -1).argmax(-1)
        assert bool((d != z).all())
        assert bool((counts.gather(2, d[:, None, None].expand(-1, counts.shape[1], 1)) >= task.decoys).all())


def test_conflict_rows_turn_the_count_and_keep_the_pairs():
    task = TopicTask()
    x, labels = _rows(task, n=500, seed=2)
    c, d = conflict_rows(task, x, labels)
    z = labels[:, -1]
    assert bool((d != z).all()) and bool((d < task.topics).all())
    counts = torch.stack([(c == v).sum(-1) for v in range(task.topics)], -1)
    assert bool((counts.argmax(-1) == d).all()), "counting over the row now finds d"
    assert torch.equal(c >= task.symbols, x >= task.symbols), "markers unchanged"
    marker_at = torch.nonzero(c >= task.symbols)
    assert bool((c[marker_at[:, 0], marker_at[:, 1] - 1] == z[marker_at[:, 0]]).all()), "pairs unchanged"
    assert torch.equal(c[:, task.spread_len:], x[:, task.spread_len:]), "decoy blocks unchanged"
    changed = (c != x)
    assert bool((c[changed] == d[:, None].expand_as(c)[changed]).all()), "only d is written"


def test_rows_are_seeded():
    a, b, c = _rows(TopicTask(), seed=3), _rows(TopicTask(), seed=3), _rows(TopicTask(), seed=4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and not torch.equal(a[0], c[0])


def test_counting_needs_the_whole_row_and_pairs_need_one_block():
    """The docstring's claim about the default task: counting topic symbols over the row finds z in
    most rows, counting over a sparse window (the last block and one earlier block) mostly does
    not, and the token before any marker is z."""
    task = TopicTask()
    x, labels = _rows(task, n=2000, seed=7)
    z = labels[:, -1]
    s = task.block_size

    def majority(tokens):
        counts = torch.stack([(tokens == v).sum(-1) for v in range(task.topics)], -1)
        return counts.argmax(-1)

    assert float((majority(x) == z).float().mean()) > 0.75
    g = torch.Generator().manual_seed(0)
    earlier = torch.randint(0, task.seq_len // s - 1, (2000,), generator=g)
    window = torch.cat([x[:, -s:], torch.stack([x[i, e * s:(e + 1) * s] for i, e in enumerate(earlier.tolist())])], 1)
    assert float((majority(window) == z).float().mean()) < 0.3
    marker_at = torch.nonzero(window >= task.symbols)
    assert bool((window[marker_at[:, 0], marker_at[:, 1] - 1] == z[marker_at[:, 0]]).all())


@pytest.mark.parametrize("field,value", [("seq_len", 100), ("block_size", 1), ("topics", 1), ("topics", 9),
                                         ("answer_blocks", 15), ("decoys", 7), ("repeats", -1),
                                         ("repeats", 1000), ("marker_types", 0)])
def test_task_rejects_bad_shapes_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        TopicTask(**{field: value}).validate()


@pytest.mark.parametrize("argv,needle", [
    (["--methods", "full,nsa"], "--methods"), (["--methods", "full,full"], "--methods"),
    (["--block-count", "0"], "--block-count"), (["--block-count", "17"], "--block-count"),
    (["--eval-block-counts", "2,x"], "--eval-block-counts"), (["--eval-block-counts", "99"], "--eval-block-counts"),
    (["--steps", "0"], "--steps"), (["--seed", "-1"], "--seed"), (["--jobs", "0"], "--jobs"), (["--eval-rows", "0"], "--eval-rows")])
def test_demo_rejects_bad_arguments_by_name(argv, needle, capsys):
    assert main(["demo", *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err


def _result(method, full, sparse):
    return {"method": method, "scores": {"full": {"accuracy": full, "ce": 0.0}, "n=2": {"accuracy": sparse, "ce": 0.0}}}


def test_reading_follows_the_numbers():
    keeps = reading([_result("full", 1.0, 0.88), _result("ssa", 1.0, 0.998)], 2)
    assert "SSA keeps its answers (99.8%" in keeps and "FullAttn loses some" in keeps
    assert "12.0% of them wrong (SSA 0.2%) and keeps 88.0%" in keeps
    same = reading([_result("full", 1.0, 0.97), _result("ssa", 1.0, 0.985)], 2)
    assert "no clear difference" in same
    reversed_ = reading([_result("full", 1.0, 0.999), _result("ssa", 1.0, 0.8)], 2)
    assert "no clear difference" in reversed_
    assert "not learned" in reading([_result("full", 0.5, 0.4), _result("ssa", 1.0, 1.0)], 2)
    assert "needs both" in reading([_result("full", 1.0, 0.8)], 2)


def test_demo_command_prints_the_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "demo.json"
    assert main(["demo", "--steps", "2", "--eval-rows", "8", "--jobs", "1", "--eval-block-counts", "3",
                 "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    assert any(line.startswith("FullAttn") for line in lines) and any(line.startswith("SSA") for line in lines)
    assert "sparse n=2" in printed and "sparse n=3" in printed  # the trained budget is always scored
    assert lines[-1].startswith("reading: ")
    doc = json.loads(out.read_text())
    assert [r["method"] for r in doc["results"]] == ["full", "ssa"]
    for r in doc["results"]:
        assert set(r["scores"]) == {"full", "n=2", "n=3"}
        assert all(0.0 <= s["accuracy"] <= 1.0 and s["ce"] > 0 for s in r["scores"].values())
    assert doc["task"]["seq_len"] == 128 and doc["runs"][0]["steps"] == 2


def test_demo_outcome_from_a_fixed_seed():
    """The demo's claim on a third of its budget (200 steps, 256 held-out rows), seed 0: both models
    learn the task in full mode; with 2 of 16 blocks per query SSA keeps its answers while FullAttn
    gets a clear share wrong, and the printed reading says so. (On the 2-core CPU this seed gave
    FullAttn 100% full / 89.8% sparse and SSA 100% / 99.3%; about a minute of CPU.)"""
    task = TopicTask()
    results = [train_and_score(task, TopicRun(method=m, seed=0, steps=200, eval_rows=256, eval_block_counts=(2,)))
               for m in ("full", "ssa")]
    full, ssa = (r["scores"] for r in results)
    assert full["full"]["accuracy"] > 0.95 and ssa["full"]["accuracy"] > 0.95
    assert ssa["n=2"]["accuracy"] > 0.97
    assert full["n=2"]["accuracy"] < ssa["n=2"]["accuracy"] - 0.04
    assert full["n=2"]["ce"] > 3 * ssa["n=2"]["ce"]
    assert "SSA keeps its answers" in reading(results, 2)
    # Why: where the cues disagree, FullAttn follows the count and SSA mostly the pairs (70% at this
    # budget, all of them at the demo's 600 steps).
    cues = {r["method"]: r["cues"] for r in results}
    assert cues["full"]["count"] > 0.9 and cues["full"]["pairs"] < 0.1 and cues["ssa"]["pairs"] > 0.5


@pytest.mark.parametrize("method", ["full", "ssa", "moba"])
def test_every_block_selected_scores_like_full_attention(method):
    """Budgets from 1 to the row's 16 blocks are all scored; with all 16 blocks selected, sparse
    inference attends to exactly what full attention does, so the scores match (an untrained model:
    the property does not depend on training)."""
    r = train_and_score(TopicTask(), TopicRun(method=method, steps=1, eval_rows=16, eval_block_counts=(1, 7, 16)))
    s = r["scores"]
    assert set(s) == {"full", "n=1", "n=7", "n=16"}
    assert s["n=16"]["accuracy"] == s["full"]["accuracy"]
    assert s["n=16"]["ce"] == pytest.approx(s["full"]["ce"], rel=1e-5)
    assert s["n=1"]["ce"] != pytest.approx(s["full"]["ce"], rel=1e-5)  # a real budget changes the output
