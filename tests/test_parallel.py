"""Data parallelism on CPU (gloo, 2 processes): FSDP2 loss parity with one process and DCP resume on
another world size; the SSA mode draw agrees across DDP ranks and follows (seed, step, micro-batch)."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from ssa.model.objective import scheduled_mode
from ssa.training import distributed as dist
from ssa.training import trainer as T
from ssa.training.config import resolve_config


def _config(method, **train):
    t = dict(micro_batch_size=2, grad_accum=2, max_steps=3, lr=3e-3, min_lr=3e-3, warmup_steps=1, log_every=1,
             eval_every=100, eval_batches=1, save_every=100, seed=0, device="cpu", num_threads=1)
    t.update(train)
    return resolve_config({
        "model": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                      block_size=8, block_count=2, full_ratio=0.5),
        "train": t,
        "data": dict(source="synthetic-recall", tokenizer="bytes", seq_len=32,
                     synthetic_train_bytes=20_000, synthetic_val_bytes=2_000),
    }, method=method)


def _losses(run_dir):
    lines = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {m["step"]: m["loss"] for m in lines if "loss" in m}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RecordingTrainer(T.Trainer):
    """Remembers the attention mode of every micro-batch this rank ran."""

    def forward(self, x, mode=None):
        out = super().forward(x, mode)
        self.seen.append([self.step, out.attention_mode])
        return out


def _worker(rank, world, port, cfg, run_dir, record):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if not record:
        T.train(cfg, run_dir, progress=False)
        return
    import torch

    torch.set_num_threads(1)
    info = dist.env_info()
    device = torch.device("cpu")
    dist.init(info, device)
    try:
        trainer = RecordingTrainer(cfg, run_dir, info=info, device=device, progress=False)
        trainer.seen = []
        trainer.build().fit()
        Path(run_dir, f"modes-{rank}.json").write_text(json.dumps(trainer.seen))
    finally:
        dist.shutdown()


def _spawn(cfg, run_dir, record=False):
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(2, _free_port(), cfg, str(run_dir), record), nprocs=2, join=True)


def test_fsdp_matches_one_process_and_resumes_on_one(tmp_path):
    """FSDP2 on 2 ranks x micro-batch 2 == 1 process x micro-batch 4 (same global batch, method ssa
    with one mode per step, so both see the same modes); its sharded checkpoint resumes in 1 process."""
    _spawn(_config("ssa", parallel="fsdp", mode_draw="step", max_steps=2, save_every=2), tmp_path / "fsdp")
    T.train(_config("ssa", micro_batch_size=4, mode_draw="step"), tmp_path / "one", progress=False)
    fsdp, one = _losses(tmp_path / "fsdp"), _losses(tmp_path / "one")
    assert sorted(fsdp) == [1, 2]
    for s in (1, 2):
        assert fsdp[s] == pytest.approx(one[s], rel=1e-4)
    step_dir = tmp_path / "fsdp" / "checkpoints" / "step_00000002"
    assert (step_dir / T.SHARDED_DIR / ".metadata").is_file() and (step_dir / "model.safetensors").is_file()
    assert json.loads((step_dir / "config.json").read_text())["architectures"] == ["SSAForCausalLM"]
    # Resume the 2-rank sharded checkpoint in one process: step 3 equals the uninterrupted run's.
    T.train(_config("ssa", micro_batch_size=4, mode_draw="step"), tmp_path / "fsdp", resume=True, progress=False)
    assert _losses(tmp_path / "fsdp")[3] == pytest.approx(one[3], rel=1e-4)


def test_ddp_ranks_draw_the_same_ssa_modes(tmp_path):
    cfg = _config("ssa", max_steps=4, grad_accum=3)
    _spawn(cfg, tmp_path / "ddp", record=True)
    seen = [json.loads((tmp_path / "ddp" / f"modes-{r}.json").read_text()) for r in (0, 1)]
    assert seen[0] == seen[1]
    # Independent expectation: the pure function of (seed, step, micro-batch).
    want = [[step, scheduled_mode(0.5, 0, step, i)] for step in range(4) for i in range(3)]
    assert seen[0] == want
    assert len({m for _, m in want}) == 2  # both modes occur: the draw is not one constant


def test_scheduled_mode_depends_on_step_micro_batch_and_seed():
    draws = {(seed, step, i): scheduled_mode(0.5, seed, step, i) for seed in (0, 1) for step in range(40) for i in range(2)}
    assert 0.3 < sum(m == "full" for m in draws.values()) / len(draws) < 0.7
    assert any(draws[0, s, 0] != draws[0, s + 1, 0] for s in range(39))  # changes with the step
    assert any(draws[0, s, 0] != draws[0, s, 1] for s in range(40))  # and with the micro-batch
    assert any(draws[0, s, 0] != draws[1, s, 0] for s in range(40))  # and with the seed
    assert scheduled_mode(0.0, 0, 3) == "sparse" and scheduled_mode(1.0, 0, 3) == "full"


def test_parallel_settings_are_validated():
    for key, value in (("parallel", "zero3"), ("mode_draw", "epoch"), ("compile", "yes"), ("peak_tflops", 0)):
        with pytest.raises(ValueError, match=f"train.{key}"):
            _config("ssa", **{key: value})


def test_activation_checkpointing_keeps_loss_and_gradients():
    import torch

    from ssa.model import SSAConfig, SSAForCausalLM

    def run(recompute):
        torch.manual_seed(0)
        model = SSAForCausalLM(SSAConfig(method="ssa", vocab_size=40, hidden_size=16, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1, block_size=4, block_count=2))
        if recompute:
            dist.apply_activation_checkpointing(model)
        calls = []
        model.model.layers[0].register_forward_pre_hook(lambda *_: calls.append(1))
        x = torch.randint(0, 40, (2, 16), generator=torch.Generator().manual_seed(1))
        out = model.train()(x, labels=x, attention_mode="sparse")
        out.loss.backward()
        assert len(calls) == (2 if recompute else 1)  # recomputed in backward
        return out.loss.detach(), {n: p.grad for n, p in model.named_parameters()}

    (l0, g0), (l1, g1) = run(False), run(True)
    torch.testing.assert_close(l1, l0)
    assert g0.keys() == g1.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], msg=name)
