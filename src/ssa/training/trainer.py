"""The training loop behind `ssa train`.

`train(config, run_dir, resume=False)` trains the model described by a resolved config (see
`ssa.training.config.resolve_config`) and writes the run directory laid out in `checkpoint.py`.
The work is done by `Trainer` (build, train_step, evaluate, save_checkpoint, fit), whose methods
are the places to change one piece: see its docstring for the seams.

Exact resume: a checkpoint holds the weights, the AdamW state, the step (the LR is a pure function
of it), the data position, and the torch / CUDA / numpy / python RNG states. The SSA mode is a
pure function of (seed, step, micro-batch) (`objective.scheduled_mode`), the same on every rank,
and validation runs inside `torch.random.fork_rng`, so restoring these makes step N+1 of a resumed
run identical to step N+1 of an uninterrupted one (bitwise on CPU fp32). Under `train.parallel=fsdp`
the model and optimizer state are also saved sharded (DCP), and resume on any number of ranks.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections import Counter
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from . import checkpoint as ckpt
from . import distributed as dist
from .config import TrainSpec, check_resume_config
from .data import (DataSpec, PackedRows, TrainLoader, iter_documents, load_tokens, loss_labels, row_positions,
                   val_rows)
from .flops import flops_per_token, mfu, peak_flops
from .optim import build_optimizer, lr_at
from .runlock import RunDirLock
from .tokenizer import build_tokenizer, is_byte_level

SHARDED_DIR = "sharded"  # DCP model + optimizer shards inside a step directory (train.parallel=fsdp)

# Modes each method can be validated under (docs/design.md §1.4); nsa has no full stream.
VAL_MODES = {"full": ("full", "sparse"), "moba": ("full", "sparse"), "nsa": ("sparse",), "ssa": ("full", "sparse")}
# train.on_nonfinite=skip gives up after this many skipped steps in a row: by then the run has
# diverged, and skipping more would only burn compute.
MAX_CONSECUTIVE_SKIPS = 5


class TrainingDiverged(FloatingPointError):
    """A non-finite loss or gradient norm stopped the run (the optimizer did not step)."""


# ----------------------------------------------------------------------------------------------
# RNG state
# ----------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state() -> dict:
    import torch

    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------
# Setup
# ----------------------------------------------------------------------------------------------
def _resolve_dtype(spec: TrainSpec, device):
    import torch

    name = spec.dtype
    if name == "auto":
        name = "bfloat16" if device.type == "cuda" else "float32"
    return getattr(torch, name)


def _autocast(device, dtype):
    import torch

    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def build_model(cfg: dict, tokenizer):
    """A fresh SSAForCausalLM from the config's model section, sized to the tokenizer."""
    from ssa.model import SSAConfig, SSAForCausalLM

    model_kwargs = dict(cfg["model"])
    n_vocab = len(tokenizer)
    vocab = model_kwargs.setdefault("vocab_size", n_vocab)
    if vocab < n_vocab:
        raise ValueError(f"model.vocab_size ({vocab}) is smaller than the tokenizer's {n_vocab} tokens")
    model_kwargs.setdefault("max_position_embeddings", cfg["data"]["seq_len"])
    eos = tokenizer.eos_token_id
    config = SSAConfig(method=cfg["method"], bos_token_id=eos, eos_token_id=eos, pad_token_id=eos, **model_kwargs)
    return SSAForCausalLM(config)


def _prepare_tokenizer(cfg: dict, run_dir: Path, resume_dir: Path | None):
    """The checkpoint's tokenizer on resume (a trained BPE must not be retrained), else a new one."""
    if resume_dir is not None:
        return ckpt.load_tokenizer(resume_dir)
    data = DataSpec(**cfg["data"])
    corpus = iter_documents(data, "train", cfg["train"]["seed"]) if data.tokenizer.startswith("train-bpe:") else None
    return build_tokenizer(data.tokenizer, corpus)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------
def _packing(x, documents_eos: int | None) -> dict:
    """Model keyword arguments of a batch: positions restarting per document under `pack: documents`."""
    return {} if documents_eos is None else {"position_ids": row_positions(x, documents_eos)}


def evaluate(model, rows: np.ndarray, *, method: str, micro_batch: int, device, amp_dtype,
             documents_eos: int | None = None, labels_of=None) -> dict:
    """Mean validation CE (nats/token) under each mode the method supports (with `documents_eos`,
    rows are packed documents separated by that token: `data.pack: documents`; with `labels_of`,
    over the positions the training loss counts, `data.loss_labels`)."""
    import torch

    if len(rows) == 0:
        return {}
    was_training = model.training
    model.eval()
    out: dict[str, float] = {}
    # fork_rng: validation must not move the RNG stream that training (mode draws) consumes.
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        for mode in VAL_MODES[method]:
            total, n = 0.0, 0
            for i in range(0, len(rows), micro_batch):
                x = torch.from_numpy(rows[i:i + micro_batch]).to(device)
                with _autocast(device, amp_dtype):
                    res = model(x, labels=x if labels_of is None else labels_of(x), attention_mode=mode,
                                **_packing(x, documents_eos))
                total += float(res.ce_loss) * len(x)
                n += len(x)
            out[mode] = total / n
    model.train(was_training)
    return out


# ----------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------
def _check_fresh_run_dir(run_dir: Path) -> None:
    if (run_dir / "checkpoints").is_dir() and ckpt.list_step_dirs(run_dir / "checkpoints"):
        raise ValueError(
            f"{run_dir} already holds checkpoints: pass --resume to continue it, or choose another --out"
        )


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


def train(cfg: dict, run_dir, *, resume: bool = False, progress: bool = True) -> dict:
    """Train according to `cfg`; returns a summary (final step, losses, wall time, run dir)."""
    import torch

    t_start = time.time()
    info = dist.env_info()
    spec = TrainSpec(**cfg["train"])
    device = dist.pick_device(spec.device, info)
    if device.type == "cpu":
        # Each process gets its share of the cores; torch's default would oversubscribe under DDP.
        torch.set_num_threads(spec.num_threads or max(1, (os.cpu_count() or 1) // max(1, info.world_size)))
    dist.init(info, device)
    # One writer per run directory: rank 0 holds the lock from before the first check to the end.
    lock = RunDirLock(run_dir) if info.is_main else nullcontext()
    try:
        with lock:
            trainer = Trainer(cfg, run_dir, info=info, device=device, resume=resume, progress=progress,
                              t_start=t_start)
            trainer.build()
            return trainer.fit()
    finally:
        dist.shutdown()


class Trainer:
    """One training run, in small steps: `build()` then `fit()`.

    build()        everything that can fail on bad input (tokenizer, data, model, optimizer, resume
                   state); nothing is written before it returns.
    fit()          writes the run directory, then loops `train_step()`, `maybe_evaluate()`,
                   `maybe_save()`.
    Seams for variants (a subclass overrides one method):
      build_data()    where the token rows and the resumable loader come from
      build_model()   a fresh model, or the checkpoint's on resume
      wrap_model()    compile / activation checkpointing, then DDP or FSDP2 (`train.parallel`);
                      `self.model` stays the bare module (FSDP2 shards it in place)
      forward()       where the loss is computed for one micro-batch
      log()           where metric records go (RUN_DIR/metrics.jsonl)
    All checkpointed state passes through `state_dict()` / `load_state_dict()`.
    """

    def __init__(self, cfg: dict, run_dir, *, info, device, resume: bool = False, progress: bool = True,
                 t_start: float | None = None):
        self.cfg = cfg
        self.spec = TrainSpec(**cfg["train"])
        self.data_spec = DataSpec(**cfg["data"])
        self.run_dir = Path(run_dir)
        self.info = info
        self.device = device
        self.resume = resume
        self.progress = progress
        self.t_start = time.time() if t_start is None else t_start
        self.step = 0
        self.start_step = 0
        self.skipped_in_a_row = 0
        self.resume_dir: Path | None = None
        self.metrics_path = self.run_dir / "metrics.jsonl"

    # ---- build: validate and construct; writes nothing -------------------------------------------
    def build(self) -> "Trainer":
        saved = None
        if self.resume:
            self.resume_dir = ckpt.resolve_checkpoint(self.run_dir)
            saved = ckpt.load_training_state(self.resume_dir)
            if "config" in saved:
                check_resume_config(saved["config"], self.cfg)
        else:
            _check_fresh_run_dir(self.run_dir)
        seed_everything(self.spec.seed)
        self.tokenizer = _prepare_tokenizer(self.cfg, self.run_dir, self.resume_dir)
        self.build_data()
        self.model = self.build_model()
        self.model.to(self.device)
        self.model.train()
        self.amp_dtype = _resolve_dtype(self.spec, self.device)
        self.flops_per_token = flops_per_token(self.model.config, self.data_spec.seq_len, self.cfg["method"])
        # Before the optimizer: FSDP2 replaces the parameters by sharded ones.
        self.train_model = self.wrap_model(self.model)
        self.optimizer = build_optimizer(self.model, self.spec)
        if saved is not None:
            self.load_state_dict(saved)  # restores the RNG last: model construction must not disturb it
        return self

    def build_data(self) -> None:
        """Token rows for training and validation, and the resumable loader over the train rows."""
        info, data, spec = self.info, self.data_spec, self.spec
        # Rank 0 tokenizes first and fills the token cache; the other ranks then read it.
        if not info.is_main:
            dist.barrier(info)
        try:
            self.train_rows = PackedRows(load_tokens(data, "train", self.tokenizer, spec.seed), data.seq_len)
            self.val_tokens = load_tokens(data, "val", self.tokenizer, spec.seed)
        finally:
            if info.is_main:
                dist.barrier(info)
        self.labels_of = loss_labels(data, self.tokenizer)  # None: every token counts
        self.val_rows = val_rows(PackedRows(self.val_tokens, data.seq_len), spec.eval_batches * spec.micro_batch_size)
        self.loader = TrainLoader(self.train_rows, micro_batch=spec.micro_batch_size, grad_accum=spec.grad_accum,
                                  seed=spec.seed, rank=info.rank, world_size=info.world_size)

    def build_model(self):
        return ckpt.load_model(self.resume_dir) if self.resume else build_model(self.cfg, self.tokenizer)

    def wrap_model(self, model):
        """The module the training step calls: activation checkpointing and compile of the blocks
        (in place), then DDP or FSDP2 when distributed (`train.parallel`)."""
        if self.spec.activation_checkpointing:
            dist.apply_activation_checkpointing(model)
        if self.spec.compile:
            dist.apply_compile(model, self.spec.compile_backend)
        return dist.wrap_model(model, self.info, self.device, self.spec.ddp_find_unused_parameters,
                               parallel=self.spec.parallel, param_dtype=self.amp_dtype)

    @property
    def sharded(self) -> bool:
        """Model and optimizer state are sharded over ranks (FSDP2): checkpoints go through DCP."""
        return self.spec.parallel == "fsdp" and self.info.enabled

    # ---- checkpointed state: gathered here and nowhere else ----------------------------------------
    def state_dict(self) -> dict:
        # Sharded runs keep the optimizer in the DCP folder of the step (written by save_checkpoint).
        optimizer = {"sharded": SHARDED_DIR} if self.sharded else self.optimizer.state_dict()
        return {"step": self.step, "optimizer": optimizer, "rng": rng_state(),
                "data": self.loader.state_dict(), "config": self.cfg, "world_size": self.info.world_size}

    def load_state_dict(self, state: dict) -> None:
        saved = state["optimizer"]
        try:
            if isinstance(saved, dict) and "sharded" in saved:
                dist.load_sharded(self.model, self.optimizer, self.resume_dir / saved["sharded"])
            elif self.sharded:
                raise ValueError("it was saved unsharded (ddp or one process): resume it with train.parallel=ddp")
            else:
                self.optimizer.load_state_dict(saved)
        except (ValueError, KeyError, RuntimeError) as err:
            raise ValueError(
                f"checkpoint {self.resume_dir}: optimizer state does not match the model ({err})"
            ) from None
        self.loader.load_state_dict(state["data"])
        self.step = self.start_step = int(state["step"])
        if self.start_step >= self.spec.max_steps:
            raise ValueError(
                f"checkpoint {self.resume_dir} is at step {self.start_step} >= train.max_steps="
                f"{self.spec.max_steps}: raise it with --set train.max_steps=N to train further"
            )
        set_rng_state(state["rng"])

    def save_checkpoint(self) -> None:
        staging = weights = None
        if self.sharded:  # every rank writes its shard into rank 0's staging dir, then rank 0 publishes
            staging = dist.broadcast_object(
                str(ckpt.staging_dir(self.run_dir, self.step)) if self.info.is_main else None, self.info)
            dist.save_sharded(self.model, self.optimizer, Path(staging) / SHARDED_DIR)
            weights = dist.full_model_state(self.model)  # safetensors for inference / HF loading
        if self.info.is_main:
            ckpt.save_checkpoint(self.run_dir, self.step, self.model, self.tokenizer, self.state_dict(),
                                 keep=self.spec.keep_checkpoints, staging=staging, model_state=weights)
        dist.barrier(self.info)

    # ---- the run directory and metrics -------------------------------------------------------------
    def run_record(self) -> dict:
        """train_config.json: the resolved config plus what the run derived from it."""
        full_cfg = dict(self.cfg)
        full_cfg["tokenizer"] = {"spec": self.data_spec.tokenizer, "byte_level": is_byte_level(self.tokenizer),
                                 "vocab": len(self.tokenizer), "eos_token_id": self.tokenizer.eos_token_id}
        full_cfg["model_config"] = self.model.config.to_dict()
        full_cfg["n_parameters"] = count_parameters(self.model)
        full_cfg["world_size"] = self.info.world_size
        full_cfg["data_stats"] = {"train_tokens": int(len(self.train_rows.tokens)), "train_rows": len(self.train_rows),
                                  "val_tokens": int(len(self.val_tokens)), "val_rows_used": int(len(self.val_rows))}
        return full_cfg

    def prepare_run_dir(self) -> None:
        """The first write of the run (rank 0 only)."""
        if self.info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            text = json.dumps(self.run_record(), indent=2, default=str) + "\n"
            ckpt.write_text_atomic(self.run_dir / "train_config.json", text)
            if self.resume:
                self.log({"event": "resume", "step": self.start_step, "from": self.resume_dir.name})
            elif self.metrics_path.exists():
                # A fresh run in a directory whose earlier attempt died before its first checkpoint:
                # keep the old log beside the new one rather than mixing or deleting it.
                os.replace(self.metrics_path, self.run_dir / f"metrics.{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
        dist.barrier(self.info)

    def log(self, record: dict) -> None:
        """Append one metrics record (rank 0 only)."""
        if self.info.is_main:
            _append_jsonl(self.metrics_path, record)

    # ---- one optimizer step ------------------------------------------------------------------------
    def forward(self, x, mode: str | None = None):
        """Model output for one micro-batch: `.loss` (what is minimised), `.ce_loss`, `.align_loss`,
        `.attention_mode`. `mode` is the SSA mode of this micro-batch (None: the method's own)."""
        with _autocast(self.device, self.amp_dtype):
            labels = x if self.labels_of is None else self.labels_of(x)
            return self.train_model(x, labels=labels, attention_mode=mode, **_packing(x, self.documents_eos))

    def mode_for(self, micro_batch: int) -> str | None:
        """SSA's attention mode for a micro-batch of the current step (`train.mode_draw`)."""
        from ssa.model.objective import scheduled_mode

        if self.cfg["method"] != "ssa":
            return None
        index = micro_batch if self.spec.mode_draw == "micro_batch" else 0
        return scheduled_mode(self.model.config.full_ratio, self.spec.seed, self.step, index)

    @property
    def documents_eos(self) -> int | None:
        """The EOS that separates documents under `data.pack: documents`, else None (stream packing)."""
        return self.tokenizer.eos_token_id if self.data_spec.pack == "documents" else None

    def forward_backward(self, micro: list):
        """Accumulate gradients over the micro-batches; mean (loss, ce, align) across ranks, as a
        float64 tensor on the device."""
        import torch

        # Summed on the device: a float() per micro-batch would stall the host on the GPU each time.
        sums = torch.zeros(3, dtype=torch.float64, device=self.device)
        modes: Counter = Counter()
        for i, batch in enumerate(micro):
            x = torch.from_numpy(batch).to(self.device)
            with dist.no_sync(self.train_model, skip=i < len(micro) - 1):
                out = self.forward(x, self.mode_for(i))
                loss = out.loss / len(micro)
            loss.backward()
            sums += torch.stack([out.loss.detach(), out.ce_loss.detach(), out.align_loss.detach()]).double()
            modes[out.attention_mode] += 1
        return dist.mean_across_ranks(sums / len(micro), self.info, self.device), modes

    def clip_gradients(self):
        """Clip to `train.grad_clip` (0 = no clipping); the total norm before clipping (a tensor)."""
        import torch

        limit = self.spec.grad_clip if self.spec.grad_clip > 0 else math.inf
        return dist.local_norm(torch.nn.utils.clip_grad_norm_(self.model.parameters(), limit))

    def train_step(self) -> dict:
        """One optimizer step over `grad_accum` micro-batches; the step's metrics record."""
        spec = self.spec
        lr = lr_at(self.step, lr=spec.lr, min_lr=spec.min_lr, warmup_steps=spec.warmup_steps,
                   max_steps=spec.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        means, modes = self.forward_backward(self.loader.next_step())
        grad_norm = self.clip_gradients()
        # The one point per step where the host waits for the GPU (the finiteness check needs it).
        import torch

        loss_v, ce_v, align_v, grad_norm = torch.cat([means, grad_norm.reshape(1).to(means)]).tolist()
        # Checked before the step: one NaN gradient would make every parameter NaN. The loss is
        # averaged over ranks and the norm is of the all-reduced gradients, so all ranks agree.
        finite = math.isfinite(loss_v) and math.isfinite(grad_norm)
        if finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        record = {"step": self.step, "tokens": self.step * self.tokens_per_step, "loss": loss_v, "ce_loss": ce_v,
                  "align_loss": align_v, "lr": lr, "grad_norm": grad_norm, "attention_modes": dict(modes),
                  "epoch": self.loader.epoch}
        if not finite:
            self.on_nonfinite(record)
        else:
            self.skipped_in_a_row = 0
        return record

    def on_nonfinite(self, record: dict) -> None:
        """A step with a NaN/inf loss or gradient norm: its update was not applied. Stop, or skip
        it (train.on_nonfinite) until MAX_CONSECUTIVE_SKIPS steps in a row were skipped."""
        self.skipped_in_a_row += 1
        what = f"loss {record['loss']:.4g}, gradient norm {record['grad_norm']:.4g} at step {self.step}"
        if self.spec.on_nonfinite == "skip" and self.skipped_in_a_row < MAX_CONSECUTIVE_SKIPS:
            record["skipped"] = True
            self.log({"event": "skipped_nonfinite_step", "step": self.step, "loss": record["loss"],
                      "grad_norm": record["grad_norm"]})
            return
        self.log({"event": "diverged", "step": self.step, "loss": record["loss"], "grad_norm": record["grad_norm"]})
        how = (f"{self.skipped_in_a_row} steps in a row were skipped" if self.spec.on_nonfinite == "skip"
               else "train.on_nonfinite=stop")
        raise TrainingDiverged(f"training diverged ({what}; {how}); the update was not applied. "
                               f"{self._checkpoint_note()}")

    def _checkpoint_note(self) -> str:
        """Where the run can be continued from, said truthfully."""
        steps = ckpt.list_step_dirs(self.run_dir / "checkpoints")
        if not steps:
            return (f"No checkpoint was saved yet (train.save_every={self.spec.save_every}); "
                    f"lower train.lr and start again")
        return (f"The last checkpoint, {steps[-1].name} in {self.run_dir / 'checkpoints'}, is intact: "
                f"lower train.lr and continue with --resume")

    @property
    def peak_flops(self) -> float | None:
        """Peak bf16 FLOP/s of one device (train.peak_tflops, else the table; None on CPU)."""
        import torch

        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None
        return peak_flops(name, self.spec.peak_tflops)

    @property
    def tokens_per_step(self) -> int:
        return self.loader.global_batch * self.data_spec.seq_len

    # ---- validation --------------------------------------------------------------------------------
    def evaluate(self) -> dict:
        """Validation CE per mode (rank 0; every rank under FSDP2, whose forward gathers weights from
        all of them); logged by rank 0, and returned ({} when there is no val data)."""
        record: dict = {}
        if self.info.is_main or self.sharded:
            ce = evaluate(self.model, self.val_rows, method=self.cfg["method"], micro_batch=self.spec.micro_batch_size,
                          device=self.device, amp_dtype=self.amp_dtype, documents_eos=self.documents_eos,
                          labels_of=self.labels_of)
            if ce:
                record = {"step": self.step, "tokens": self.step * self.tokens_per_step, "val_ce": ce}
                if is_byte_level(self.tokenizer):
                    record["val_bpb"] = {m: v / math.log(2) for m, v in ce.items()}
                self.log(record)  # rank 0 only
        dist.barrier(self.info)
        return record

    # ---- the loop ----------------------------------------------------------------------------------
    def _due(self, every: int) -> bool:
        return self.step % every == 0 or self.step == self.spec.max_steps

    def fit(self) -> dict:
        spec = self.spec
        self.prepare_run_dir()
        bar = self._progress_bar()
        last: dict = {}
        last_val: dict = {}
        window_t, window_steps = time.time(), 0
        ema = None
        while self.step < spec.max_steps:
            last = self.train_step()
            window_steps += 1
            now = time.time()
            last["tokens_per_s"] = window_steps * self.tokens_per_step / max(now - window_t, 1e-9)
            last["mfu"] = mfu(last["tokens_per_s"], self.flops_per_token, self.peak_flops, self.info.world_size)
            last["elapsed_s"] = now - self.t_start
            if self.step % spec.log_every == 0 or self.step == spec.max_steps or self.step == self.start_step + 1:
                self.log(last)
                window_t, window_steps = now, 0
            if not last.get("skipped"):
                ema = last["loss"] if ema is None else 0.9 * ema + 0.1 * last["loss"]
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss="-" if ema is None else f"{ema:.3f}", ce=f"{last['ce_loss']:.3f}", align=f"{last['align_loss']:.2e}",
                                lr=f"{last['lr']:.1e}", tok_s=f"{last['tokens_per_s']:,.0f}", refresh=False)
            if self._due(spec.eval_every):
                last_val = self.evaluate() or last_val
                if bar is not None and last_val.get("step") == self.step:
                    bar.write(f"step {self.step}: val ce " + ", ".join(f"{m} {v:.4f}" for m, v in last_val["val_ce"].items()))
            if self._due(spec.save_every):
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        return {"run_dir": str(self.run_dir), "step": self.step, "last": last, "val": last_val,
                "wall_s": time.time() - self.t_start, "n_parameters": count_parameters(self.model)}

    def _progress_bar(self):
        if not (self.progress and self.info.is_main):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.spec.max_steps, initial=self.start_step, desc=f"train {self.cfg['method']}",
                    dynamic_ncols=True)
