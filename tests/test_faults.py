"""Faults during training and loading: divergence, a second writer, resume overrides, corrupted
weights, a full disk. Each leaves a valid run directory and says so in one line."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssa.cli import main
from ssa.training import checkpoint as ckpt
from ssa.training import trainer as T
from ssa.training.config import check_resume_config
from ssa.training.runlock import RunDirBusy, RunDirLock
from test_training import micro_config, snapshot


def one_line(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "Traceback" not in err and err.startswith(f"ssa {argv[0]}: error:"), err
    for n in needles:
        assert n in err, (n, err)
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-step micro run (checkpoints at steps 1 and 2), copied by the tests that damage it."""
    run = tmp_path_factory.mktemp("trained") / "run"
    T.train(micro_config("ssa", max_steps=2, save_every=1, eval_every=2), run, progress=False)
    return run


def copy_run(trained, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(trained, dst)
    (dst / ".lock").write_text("")  # the copy is nobody's
    return dst


# ---------------------------------------------------------------------------------------------
# Divergence
# ---------------------------------------------------------------------------------------------
def test_diverging_run_never_saves_nonfinite_weights(tmp_path):
    """lr=1e6 diverges within a few steps; every checkpoint left behind is finite and loads."""
    run = tmp_path / "run"
    with pytest.raises(T.TrainingDiverged) as info:
        T.train(micro_config("ssa", max_steps=8, save_every=1, lr=1e6, min_lr=0.0, warmup_steps=0), run,
                progress=False)
    steps = ckpt.list_step_dirs(run / "checkpoints")
    msg = str(info.value)
    if steps:
        assert f"{steps[-1].name} in {run / 'checkpoints'}, is intact" in msg
        assert (run / "checkpoints" / "latest").read_text().strip() == steps[-1].name
    else:
        assert "No checkpoint was saved yet" in msg
    for step_dir in steps:
        model, _ = ckpt.load_for_inference(step_dir)
        assert all(torch.isfinite(p).all() for p in model.parameters()), step_dir.name
    events = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "diverged"
    assert not (math.isfinite(events[-1]["loss"]) and math.isfinite(events[-1]["grad_norm"]))


class PoisonedTrainer(T.Trainer):
    """Turns every gradient NaN at the steps in `poison` (0-based index of the step being taken)."""

    poison: set = set()

    def forward_backward(self, micro):
        out = super().forward_backward(micro)
        if self.step in self.poison:
            for p in self.model.parameters():
                p.grad.fill_(float("nan"))
        return out


def _poisoned(tmp_path, poison, **train):
    from ssa.training import distributed as dist

    cfg = micro_config("full", **train)
    PoisonedTrainer.poison = set(poison)
    trainer = PoisonedTrainer(cfg, tmp_path / "run", info=dist.env_info(), device=torch.device("cpu"))
    trainer.build()
    trainer.prepare_run_dir()
    return trainer


def test_nonfinite_gradient_skips_the_step_when_configured(tmp_path):
    trainer = _poisoned(tmp_path, {1}, max_steps=3, on_nonfinite="skip")
    trainer.train_step()
    before = [p.detach().clone() for p in trainer.model.parameters()]
    adam_steps = [s["step"].item() for s in trainer.optimizer.state.values()]
    record = trainer.train_step()  # poisoned: the update is dropped, the run goes on
    assert record["skipped"] and math.isnan(record["grad_norm"]) and math.isfinite(record["loss"])
    assert all(torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))
    assert [s["step"].item() for s in trainer.optimizer.state.values()] == adam_steps
    assert all(p.grad is None for p in trainer.model.parameters())
    trainer.train_step()
    assert not all(torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))
    assert trainer.step == 3


def test_skip_gives_up_after_consecutive_nonfinite_steps(tmp_path):
    trainer = _poisoned(tmp_path, set(range(10)), max_steps=10, on_nonfinite="skip")
    for _ in range(T.MAX_CONSECUTIVE_SKIPS - 1):
        assert trainer.train_step()["skipped"]
    with pytest.raises(T.TrainingDiverged, match=f"{T.MAX_CONSECUTIVE_SKIPS} steps in a row"):
        trainer.train_step()


def test_stop_before_any_checkpoint_says_there_is_none(tmp_path):
    trainer = _poisoned(tmp_path, {0}, max_steps=3)  # on_nonfinite defaults to stop
    before = [p.detach().clone() for p in trainer.model.parameters()]
    with pytest.raises(T.TrainingDiverged, match="No checkpoint was saved yet") as info:
        trainer.train_step()
    assert "last checkpoint" not in str(info.value)
    assert all(torch.equal(a, p) for a, p in zip(before, trainer.model.parameters()))


def test_nonfinite_model_is_never_saved(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    model, tok = ckpt.load_for_inference(run)
    before = snapshot(run)
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("inf")
    with pytest.raises(ckpt.NonFiniteWeightsError, match="non-finite"):
        ckpt.save_checkpoint(run, 3, model, tok, {"step": 3})
    assert snapshot(run) == before


def test_eval_and_generate_refuse_nonfinite_weights(trained, tmp_path, capsys):
    """A checkpoint written elsewhere (no checksums) with a NaN weight: one line, rc 2."""
    model, tok = ckpt.load_for_inference(trained)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] = float("nan")
    out = tmp_path / "nan-ckpt"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    one_line(capsys, ["eval", str(out), "--limit", "1", "--no-progress"], "non-finite", "down_proj")
    one_line(capsys, ["generate", str(out), "--prompt", "hi", "--max-new-tokens", "2"], "non-finite")


# ---------------------------------------------------------------------------------------------
# One writer per run directory
# ---------------------------------------------------------------------------------------------
def test_second_writer_is_refused_with_the_holders_pid(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import fcntl, os, sys, time\n"
         f"fd = os.open({str(run / '.lock')!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, f'{os.getpid()} testhost\\n'.encode())\n"
         "print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirBusy, match=f"PID {holder.pid} on testhost"):
            T.train(micro_config("full", max_steps=1), run, progress=False)
        assert sorted(p.name for p in run.iterdir()) == [".lock"]  # the refused run wrote nothing
    finally:
        holder.kill()
        holder.wait()
    # The holder died: its PID is still in the file, and the lock is taken over with a note.
    with RunDirLock(run):
        assert (run / ".lock").read_text().split()[0] == str(os.getpid())


def test_stale_lock_is_taken_over_with_a_message(tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(f"{dead.pid} somehost\n")
    with RunDirLock(run):
        # The same process cannot take it twice either (flock is per open file).
        with pytest.raises(RunDirBusy, match=f"PID {os.getpid()}"):
            RunDirLock(run).acquire()
    assert f"PID {dead.pid}" in capsys.readouterr().err
    assert (run / ".lock").read_text() == ""  # released cleanly: no PID left behind


def test_out_that_cannot_be_created_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    one_line(capsys, ["train", "--preset", "tiny", "--out", str(blocker / "run")], "--out", "is a file")
    one_line(capsys, ["train", "--preset", "tiny", "--out", str(blocker)], "--out", "is a file")
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            one_line(capsys, ["train", "--preset", "tiny", "--out", str(ro / "run")], "--out", "writable")
        finally:
            ro.chmod(0o700)


# ---------------------------------------------------------------------------------------------
# Resume overrides
# ---------------------------------------------------------------------------------------------
def test_resume_refuses_model_and_data_changes(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path)
    before = snapshot(run)
    one_line(capsys, ["train", "--out", str(run), "--resume", "--no-progress",
                      "--set", "model.hidden_size=256", "data.seq_len=32", "train.max_steps=3"],
             "model.hidden_size", "data.seq_len", "max_steps")
    one_line(capsys, ["train", "--out", str(run), "--resume", "--set", "train.seed=3", "train.max_steps=3"],
             "train.seed")
    assert snapshot(run) == before  # train_config.json still says what was trained


def test_resume_config_rules():
    saved = micro_config("ssa")
    allowed = json.loads(json.dumps(saved))
    allowed["train"].update(max_steps=99, lr=1e-4, save_every=7, eval_every=5, micro_batch_size=1, on_nonfinite="skip")
    check_resume_config(saved, allowed)  # schedule changes are fine
    for section, key, value in [("model", "block_count", 4), ("model", "rms_norm_eps", 1e-5),
                                ("data", "source", "python-stdlib"), ("train", "weight_decay", 0.0),
                                ("train", "betas", [0.9, 0.99])]:
        changed = json.loads(json.dumps(saved))
        changed[section][key] = value
        with pytest.raises(ValueError, match=f"{section}.{key}"):
            check_resume_config(saved, changed)
    with pytest.raises(ValueError, match="method"):
        check_resume_config(saved, dict(saved, method="moba"))


# ---------------------------------------------------------------------------------------------
# Checksums
# ---------------------------------------------------------------------------------------------
def _flip(path: Path, at_fraction: float = 0.7, n: int = 64) -> None:
    data = bytearray(path.read_bytes())
    i = int(len(data) * at_fraction)
    data[i:i + n] = bytes(b ^ 0xFF for b in data[i:i + n])
    path.write_bytes(bytes(data))


def test_flipped_weight_bits_are_detected(trained, tmp_path, monkeypatch, capsys):
    run = copy_run(trained, tmp_path)
    step_dir = ckpt.resolve_checkpoint(run)
    recorded = json.loads((step_dir / ckpt.CHECKSUMS).read_text())["sha256"]
    assert set(recorded) == {"model.safetensors", "training_state.pt"}
    _flip(step_dir / "model.safetensors")
    with pytest.raises(ValueError, match="model.safetensors does not match its recorded checksum"):
        ckpt.load_for_inference(run)
    one_line(capsys, ["eval", str(run), "--limit", "1", "--no-progress"], "checksum", "SSA_SKIP_CHECKSUMS")
    one_line(capsys, ["generate", str(run), "--prompt", "hi"], "checksum")
    with pytest.raises(ValueError, match="checksum"):
        T.train(micro_config("ssa", max_steps=3, save_every=1, eval_every=2), run, resume=True, progress=False)
    # Skipping the check loads the (finite, if wrong) weights: for very large files.
    model, _ = ckpt.load_for_inference(run, verify=False)
    monkeypatch.setenv(ckpt.SKIP_CHECKSUMS_ENV, "1")
    model, _ = ckpt.load_for_inference(run)
    assert model.config.method == "ssa"


def test_flipped_state_bits_stop_a_resume(trained, tmp_path):
    run = copy_run(trained, tmp_path)
    step_dir = ckpt.resolve_checkpoint(run)
    _flip(step_dir / "training_state.pt", at_fraction=0.5, n=8)
    before = snapshot(run)
    with pytest.raises(ValueError, match="training_state.pt does not match its recorded checksum"):
        T.train(micro_config("ssa", max_steps=3, save_every=1, eval_every=2), run, resume=True, progress=False)
    assert snapshot(run) == before


# ---------------------------------------------------------------------------------------------
# A full disk
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("failure", [
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1234 vs 1180"),
    OSError(errno.ENOSPC, "No space left on device"),
])
def test_disk_full_during_save_is_one_line_and_keeps_the_checkpoint(trained, tmp_path, monkeypatch, capsys,
                                                                     failure):
    run = copy_run(trained, tmp_path)
    latest = (run / "checkpoints" / "latest").read_text()
    real_save = torch.save

    def full_disk(obj, f, *a, **k):
        if str(f).endswith(ckpt.STATE_FILE):
            raise failure
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    err = one_line(capsys, ["train", "--out", str(run), "--resume", "--no-progress", "--set", "train.max_steps=3"],
                   "disk full", str(run / "checkpoints"), "--resume")
    assert "Traceback" not in err
    assert (run / "checkpoints" / "latest").read_text() == latest
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp-")]
    monkeypatch.setattr(torch, "save", real_save)
    model, _ = ckpt.load_for_inference(run)  # still valid, checksums and all
    assert all(torch.isfinite(p).all() for p in model.parameters())
