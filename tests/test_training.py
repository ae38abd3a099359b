"""Trainer: LR schedule, decay groups, loss falls, exact resume, atomic checkpoints, DDP on CPU."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import pytest
import torch

from ssa.training import checkpoint as ckpt
from ssa.training import trainer as T
from ssa.training.config import resolve_config
from ssa.training.optim import lr_at, param_groups


def micro_config(method="ssa", **train):
    """A model small enough for CPU tests; seq 64 with an 8x2 = 16-token sparse window."""
    t = dict(micro_batch_size=2, grad_accum=2, max_steps=6, lr=3e-3, min_lr=3e-4, warmup_steps=2,
             log_every=1, eval_every=3, eval_batches=1, save_every=3, seed=0, device="cpu", num_threads=1)
    t.update(train)
    base = {
        "model": dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                      block_size=8, block_count=2, nsa_window=16),
        "train": t,
        "data": dict(source="synthetic-recall", tokenizer="bytes", seq_len=64,
                     synthetic_train_bytes=40_000, synthetic_val_bytes=4_000),
    }
    return resolve_config(base, method=method)


def read_metrics(run_dir):
    lines = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return {m["step"]: m for m in lines if "loss" in m}, [m for m in lines if "val_ce" in m]


def snapshot(run_dir):
    """Every file under run_dir with its bytes: to prove a failed command changed nothing."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(Path(run_dir).rglob("*")) if p.is_file()}


class Interrupt(Exception):
    pass


# ---------------------------------------------------------------------------------------------
def test_lr_schedule_warmup_cosine_min():
    kw = dict(lr=1.0, min_lr=0.1, warmup_steps=4, max_steps=21)
    assert [lr_at(s, **kw) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    tail = [lr_at(s, **kw) for s in range(3, 21)]
    assert all(a >= b for a, b in zip(tail, tail[1:]))
    # The cosine runs from step 4 (lr) to the last step 20 (min_lr); halfway it is their mean.
    assert lr_at(4, **kw) == 1.0 and lr_at(12, **kw) == pytest.approx(0.55)
    assert lr_at(20, **kw) == pytest.approx(0.1) and lr_at(100, **kw) == pytest.approx(0.1)


def test_weight_decay_only_on_matrices():
    from transformers import AutoTokenizer  # noqa: F401  (model import needs transformers anyway)

    cfg = micro_config()
    model = T.build_model(cfg, T.build_tokenizer("bytes"))
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decay_names = {names[id(p)] for p in decay["params"]}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert any("q_proj" in n for n in decay_names) and any("mlp" in n for n in decay_names)
    assert all("norm" in n or "embed" in n for n in no_decay_names)
    assert any("embed" in n for n in no_decay_names) and any("norm" in n for n in no_decay_names)
    assert len(decay_names) + len(no_decay_names) == len(list(model.parameters()))


def test_loss_falls_on_synthetic_data(tmp_path):
    cfg = micro_config("ssa", max_steps=40, lr=1e-2, min_lr=1e-3, warmup_steps=4, eval_every=40, save_every=40)
    summary = T.train(cfg, tmp_path / "run", progress=False)
    train, val = read_metrics(tmp_path / "run")
    losses = [train[s]["ce_loss"] for s in sorted(train)]
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 1.5, (first, last)  # from ~ln(257)=5.5 down to byte-frequency level
    assert losses[0] == pytest.approx(math.log(257), abs=0.3)  # starts near uniform over the vocabulary
    modes = sum((train[s]["attention_modes"].get("full", 0) for s in train))
    assert 0 < modes < 80  # ssa draws both modes (2 micro-batches per step)
    assert set(val[-1]["val_ce"]) == {"full", "sparse"} and summary["step"] == 40


@pytest.mark.parametrize("method", ["ssa", "nsa"])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, monkeypatch, method):
    cfg = micro_config(method, max_steps=6, save_every=3, eval_every=2)
    T.train(cfg, tmp_path / "straight", progress=False)
    straight, straight_val = read_metrics(tmp_path / "straight")

    real_save = ckpt.save_checkpoint

    def save_then_die(run_dir, step, *a, **k):
        out = real_save(run_dir, step, *a, **k)
        if step == 3:
            raise Interrupt()
        return out

    monkeypatch.setattr(ckpt, "save_checkpoint", save_then_die)
    with pytest.raises(Interrupt):
        T.train(cfg, tmp_path / "split", progress=False)
    monkeypatch.setattr(ckpt, "save_checkpoint", real_save)
    T.train(cfg, tmp_path / "split", resume=True, progress=False)
    split, split_val = read_metrics(tmp_path / "split")

    assert sorted(split) == list(range(1, 7))
    for step in range(1, 7):
        for key in ("loss", "ce_loss", "align_loss", "grad_norm", "lr"):
            assert split[step][key] == pytest.approx(straight[step][key], rel=1e-6, abs=1e-9), (step, key)
        assert split[step]["attention_modes"] == straight[step]["attention_modes"]
    flat = lambda vals: [(v["step"], m, ce) for v in vals for m, ce in sorted(v["val_ce"].items())]  # noqa: E731
    assert [x[:2] for x in flat(split_val)] == [x[:2] for x in flat(straight_val)]
    assert [x[2] for x in flat(split_val)] == pytest.approx([x[2] for x in flat(straight_val)], rel=1e-6)
    # The final weights agree too.
    a, _ = ckpt.load_for_inference(tmp_path / "straight")
    b, _ = ckpt.load_for_inference(tmp_path / "split")
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.allclose(p, q, atol=1e-6), n


def test_checkpoint_layout_and_load_for_inference(tmp_path):
    cfg = micro_config("moba", max_steps=4, save_every=1, keep_checkpoints=2)
    T.train(cfg, tmp_path, progress=False)
    steps = [p.name for p in ckpt.list_step_dirs(tmp_path / "checkpoints")]
    assert steps == ["step_00000003", "step_00000004"]  # keep the last 2
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    step_dir = ckpt.resolve_checkpoint(tmp_path)
    assert step_dir == tmp_path / "checkpoints" / "step_00000004"
    for f in ("config.json", "model.safetensors", "tokenizer.json", "training_state.pt"):
        assert (step_dir / f).is_file(), f
    saved = json.loads((tmp_path / "train_config.json").read_text())
    assert saved["method"] == "moba" and saved["tokenizer"]["byte_level"] is True
    assert saved["model_config"]["block_count"] == 2

    from transformers import AutoTokenizer

    from ssa.model import SSAForCausalLM

    model = SSAForCausalLM.from_pretrained(step_dir)
    tok = AutoTokenizer.from_pretrained(step_dir)
    assert model.config.method == "moba" and tok.decode(tok.encode("héllo")) == "héllo"

    m2, tok2 = ckpt.load_for_inference(tmp_path, dtype="bfloat16")
    assert not m2.training and next(m2.parameters()).dtype == torch.bfloat16
    x = torch.tensor([tok2.encode("The code for apple is 1234.")])
    assert m2(x, attention_mode="sparse", block_count=4).logits.shape == (1, x.shape[1], 257)
    assert ckpt.resolve_checkpoint(tmp_path / "checkpoints" / "step_00000003").name == "step_00000003"
    with pytest.raises(ValueError, match="dtype"):
        ckpt.load_for_inference(tmp_path, dtype="float99")


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    cfg = micro_config("full", max_steps=6, save_every=3)
    real_torch_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint dies half-way (weights written, state not)
            raise OSError("disk full (simulated)")
        return real_torch_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="simulated"):
        T.train(cfg, tmp_path, progress=False)
    root = tmp_path / "checkpoints"
    assert (root / "latest").read_text().strip() == "step_00000003"
    assert [p.name for p in root.iterdir() if p.is_dir()] == ["step_00000003"]  # no half-written dir
    model, _ = ckpt.load_for_inference(tmp_path)
    assert model.config.method == "full"

    # A hard kill leaves a temporary directory behind: it is invisible and cleaned on the next save.
    junk = root / ".tmp-step_00000006-dead"
    junk.mkdir()
    (junk / "config.json").write_text("{")
    assert ckpt.resolve_checkpoint(tmp_path).name == "step_00000003"
    monkeypatch.setattr(torch, "save", real_torch_save)
    T.train(cfg, tmp_path, resume=True, progress=False)
    assert not junk.exists() and ckpt.resolve_checkpoint(tmp_path).name == "step_00000006"


def test_bad_checkpoints_give_clear_errors_and_change_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ckpt.resolve_checkpoint(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="latest"):
        ckpt.resolve_checkpoint(tmp_path)
    cfg = micro_config("full", max_steps=3, save_every=3)
    T.train(cfg, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="already holds checkpoints"):
        T.train(cfg, run, progress=False)
    step_dir = ckpt.resolve_checkpoint(run)

    cfg_more = micro_config("full", max_steps=6, save_every=3)
    (step_dir / "training_state.pt").write_bytes(b"garbage")
    before = snapshot(run)
    with pytest.raises(ValueError, match="training_state.pt does not match its recorded checksum"):
        T.train(cfg_more, run, resume=True, progress=False)
    assert snapshot(run) == before

    (step_dir / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(ValueError, match="corrupt|could not be loaded"):
        ckpt.load_for_inference(run)
    (step_dir / "model.safetensors").unlink()
    with pytest.raises(ValueError, match="model.safetensors is missing"):
        ckpt.resolve_checkpoint(run)
    (run / "checkpoints" / "latest").write_text("step_99999999\n")
    with pytest.raises(FileNotFoundError, match="step_99999999"):
        T.train(cfg_more, run, resume=True, progress=False)
    assert snapshot(run) != before  # (we damaged it ourselves) ...
    after = snapshot(run)
    with pytest.raises(FileNotFoundError):
        T.train(cfg_more, run, resume=True, progress=False)
    assert snapshot(run) == after  # ... but the failed resume wrote nothing


# ---------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, cfg, run_dir):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    T.train(cfg, run_dir, progress=False)


def test_ddp_two_cpu_processes_match_one_process(tmp_path):
    """2 ranks x micro-batch 2 == 1 process x micro-batch 4: same rows, same gradients, same loss.

    Method `full` draws no modes, so gradient accumulation (no_sync) can be compared too: rank r's
    micro-batches are rows [4r, 4r+4) of the global batch, the single process sees rows [0,4),[4,8).
    """
    import torch.multiprocessing as mp

    ddp_cfg = micro_config("full", max_steps=3, micro_batch_size=2, grad_accum=2, save_every=3, eval_every=3)
    mp.spawn(_ddp_worker, args=(2, _free_port(), ddp_cfg, str(tmp_path / "ddp")), nprocs=2, join=True)
    one_cfg = micro_config("full", max_steps=3, micro_batch_size=4, grad_accum=2, save_every=3, eval_every=3)
    T.train(one_cfg, tmp_path / "one", progress=False)
    ddp, _ = read_metrics(tmp_path / "ddp")
    one, _ = read_metrics(tmp_path / "one")
    assert sorted(ddp) == [1, 2, 3]
    for s in (1, 2, 3):
        assert ddp[s]["loss"] == pytest.approx(one[s]["loss"], rel=1e-4)
        assert ddp[s]["tokens"] == one[s]["tokens"]
    assert json.loads((tmp_path / "ddp" / "train_config.json").read_text())["world_size"] == 2


def test_fresh_start_keeps_an_earlier_log_aside(tmp_path):
    """A run that died before its first checkpoint can be restarted; its log is kept, not mixed."""
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
    T.train(micro_config("full", max_steps=2, save_every=2), tmp_path, progress=False)
    old = list(tmp_path.glob("metrics.*.jsonl"))
    assert len(old) == 1 and old[0].read_text() == '{"step": 1, "loss": 9.0}\n'
    train, _ = read_metrics(tmp_path)
    assert sorted(train) == [1, 2] and train[1]["loss"] != 9.0
