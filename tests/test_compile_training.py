"""`train.compile`: the trainer's compiled decoder blocks train and give the eager losses.

Runs on CPU with torch.compile's `aot_eager` backend (`train.compile_backend`): it traces forward
and backward through dynamo and AOTAutograd, the Triton ops included as custom-op nodes, without
needing a C++ toolchain.
"""

from __future__ import annotations

import pytest

from ssa.training import trainer as T
from ssa.training.config import resolve_config

from test_training import micro_config, read_metrics


def test_compiled_blocks_train_like_eager(tmp_path):
    from torch._dynamo.utils import counters

    train = dict(max_steps=2, grad_accum=1, eval_every=100, save_every=100, warmup_steps=1)
    eager = micro_config("ssa", **train)
    compiled = micro_config("ssa", compile=True, compile_backend="aot_eager", **train)
    T.train(eager, tmp_path / "eager", progress=False)
    counters.clear()
    T.train(compiled, tmp_path / "compiled", progress=False)
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo did capture the blocks
    (a, _), (b, _) = read_metrics(tmp_path / "eager"), read_metrics(tmp_path / "compiled")
    assert sorted(a) == sorted(b) == [1, 2]
    for step in a:
        # Same seed, data and modes: the compiled graph computes the same function (float32 CPU).
        assert b[step]["attention_modes"] == a[step]["attention_modes"]
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-4, abs=1e-5)
        assert b[step]["align_loss"] == pytest.approx(a[step]["align_loss"], rel=1e-3, abs=1e-7)
    # The loss moved: the optimizer stepped through the compiled blocks.
    assert b[2]["loss"] != b[1]["loss"]


def test_unknown_compile_backend_is_refused_before_anything_is_written(tmp_path):
    cfg = micro_config("full", compile=True, compile_backend="no-such-backend")
    with pytest.raises(ValueError, match="train.compile_backend must be one of .*inductor"):
        T.train(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_compile_backend_must_be_a_name():
    base = micro_config("full")
    base["train"]["compile_backend"] = 3
    with pytest.raises(ValueError, match="train.compile_backend"):
        resolve_config({k: base[k] for k in ("model", "train", "data")}, method="full")


@pytest.mark.parametrize("method", ["full", "ssa", "moba", "nsa"])
def test_inductor_with_packed_documents_is_accepted_for_every_method(method):
    base = micro_config(method, compile=True, compile_backend="inductor")
    cfg = {k: base[k] for k in ("model", "train", "data")}
    cfg["data"] = {**cfg["data"], "pack": "documents"}
    resolved = resolve_config(cfg, method=method)
    assert resolved["train"]["compile"] is True and resolved["data"]["pack"] == "documents"
