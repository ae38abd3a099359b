"""The training loop behind `ssa train`.

`train(config, run_dir, resume=False)` trains the model described by a resolved config (see
`ssa.training.config.resolve_config`) and writes the run directory laid out in `checkpoint.py`.

Exact resume: a checkpoint holds the weights, the AdamW state, the step (the LR is a pure function
of it), the data position, and the torch / CUDA / numpy / python RNG states. The SSA mode draw
uses torch's global RNG, and validation runs inside `torch.random.fork_rng`, so restoring these
makes step N+1 of a resumed run identical to step N+1 of an uninterrupted one (bitwise on CPU fp32).
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
from .config import TrainSpec
from .data import DataSpec, PackedRows, TrainLoader, iter_documents, load_tokens, val_rows
from .optim import build_optimizer, lr_at
from .tokenizer import build_tokenizer, is_byte_level

# Modes each method can be validated under (DESIGN §1.4); nsa has no full stream.
VAL_MODES = {"full": ("full", "sparse"), "moba": ("full", "sparse"), "nsa": ("sparse",), "ssa": ("full", "sparse")}


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
def evaluate(model, rows: np.ndarray, *, method: str, micro_batch: int, device, amp_dtype) -> dict:
    """Mean validation CE (nats/token) under each mode the method supports."""
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
                    res = model(x, labels=x, attention_mode=mode)
                total += float(res.ce_loss) * len(x)
                n += len(x)
            out[mode] = total / n
    model.train(was_training)
    return out


# ----------------------------------------------------------------------------------------------
# The loop
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
    run_dir = Path(run_dir)
    info = dist.env_info()
    spec = TrainSpec(**cfg["train"])
    data_spec = DataSpec(**cfg["data"])
    device = dist.pick_device(spec.device, info)
    if device.type == "cpu":
        # Each process gets its share of the cores; torch's default would oversubscribe under DDP.
        torch.set_num_threads(spec.num_threads or max(1, (os.cpu_count() or 1) // max(1, info.world_size)))
    dist.init(info, device)
    try:
        return _train(cfg, spec, data_spec, run_dir, info, device, resume, progress, t_start)
    finally:
        dist.shutdown()


def _train(cfg, spec, data_spec, run_dir, info, device, resume, progress, t_start) -> dict:
    import torch

    # ---- everything that can fail on bad input happens before anything is written -------------
    resume_dir = state = None
    if resume:
        resume_dir = ckpt.resolve_checkpoint(run_dir)
        state = ckpt.load_training_state(resume_dir)
    else:
        _check_fresh_run_dir(run_dir)
    seed_everything(spec.seed)
    tokenizer = _prepare_tokenizer(cfg, run_dir, resume_dir)
    # Rank 0 tokenizes first and fills the token cache; the other ranks then read it.
    if not info.is_main:
        dist.barrier(info)
    try:
        train_rows = PackedRows(load_tokens(data_spec, "train", tokenizer, spec.seed), data_spec.seq_len)
        val_tokens = load_tokens(data_spec, "val", tokenizer, spec.seed)
    finally:
        if info.is_main:
            dist.barrier(info)
    val = val_rows(PackedRows(val_tokens, data_spec.seq_len), spec.eval_batches * spec.micro_batch_size)
    loader = TrainLoader(train_rows, micro_batch=spec.micro_batch_size, grad_accum=spec.grad_accum,
                         seed=spec.seed, rank=info.rank, world_size=info.world_size)
    model = ckpt.load_model(resume_dir) if resume else build_model(cfg, tokenizer)
    model.to(device)
    model.train()
    optimizer = build_optimizer(model, spec)
    start_step = 0
    if resume:
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as err:
            raise ValueError(f"checkpoint {resume_dir}: optimizer state does not match the model ({err})") from None
        loader.load_state_dict(state["data"])
        start_step = int(state["step"])
        if start_step >= spec.max_steps:
            raise ValueError(
                f"checkpoint {resume_dir} is at step {start_step} >= train.max_steps={spec.max_steps}: "
                f"raise it with --set train.max_steps=N to train further"
            )
    amp_dtype = _resolve_dtype(spec, device)
    byte_level = is_byte_level(tokenizer)
    full_cfg = dict(cfg)
    full_cfg["tokenizer"] = {"spec": data_spec.tokenizer, "byte_level": byte_level, "vocab": len(tokenizer),
                             "eos_token_id": tokenizer.eos_token_id}
    full_cfg["model_config"] = dist.unwrap(model).config.to_dict()
    full_cfg["n_parameters"] = count_parameters(model)
    full_cfg["world_size"] = info.world_size
    full_cfg["data_stats"] = {"train_tokens": int(len(train_rows.tokens)), "train_rows": len(train_rows),
                              "val_tokens": int(len(val_tokens)), "val_rows_used": int(len(val))}

    # ---- from here on the run directory is written (rank 0 only) --------------------------------
    metrics_path = run_dir / "metrics.jsonl"
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        ckpt.write_text_atomic(run_dir / "train_config.json", json.dumps(full_cfg, indent=2, default=str) + "\n")
        if resume:
            _append_jsonl(metrics_path, {"event": "resume", "step": start_step, "from": resume_dir.name})
        elif metrics_path.exists():
            # A fresh run in a directory whose earlier attempt died before its first checkpoint:
            # keep the old log beside the new one rather than mixing or deleting it.
            os.replace(metrics_path, run_dir / f"metrics.{time.strftime('%Y%m%d-%H%M%S')}.jsonl")
    dist.barrier(info)
    if resume:
        set_rng_state(state["rng"])  # last: model construction and loading must not disturb it

    train_model = dist.wrap_model(model, info, device, spec.ddp_find_unused_parameters)
    tokens_per_step = loader.global_batch * data_spec.seq_len
    bar = None
    if progress and info.is_main:
        from tqdm.auto import tqdm

        bar = tqdm(total=spec.max_steps, initial=start_step, desc=f"train {cfg['method']}", dynamic_ncols=True)
    last: dict = {}
    last_val: dict = {}
    window_t, window_steps = time.time(), 0
    ema = None
    step = start_step
    while step < spec.max_steps:
        lr = lr_at(step, lr=spec.lr, min_lr=spec.min_lr, warmup_steps=spec.warmup_steps, max_steps=spec.max_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        micro = loader.next_step()
        sums = np.zeros(3)
        modes: Counter = Counter()
        for i, batch in enumerate(micro):
            x = torch.from_numpy(batch).to(device)
            with dist.no_sync(train_model, skip=i < len(micro) - 1), _autocast(device, amp_dtype):
                out = train_model(x, labels=x)
                loss = out.loss / len(micro)
            loss.backward()
            sums += [float(out.loss.detach()), float(out.ce_loss.detach()), float(out.align_loss.detach())]
            modes[out.attention_mode] += 1
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip if spec.grad_clip > 0 else math.inf))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        window_steps += 1
        loss_v, ce_v, align_v = dist.mean_across_ranks(sums / len(micro), info, device)
        if not math.isfinite(loss_v):
            raise FloatingPointError(f"loss became {loss_v} at step {step}; last checkpoint is kept in {run_dir}")
        ema = loss_v if ema is None else 0.9 * ema + 0.1 * loss_v
        now = time.time()
        tok_s = window_steps * tokens_per_step / max(now - window_t, 1e-9)
        last = {"step": step, "tokens": step * tokens_per_step, "loss": loss_v, "ce_loss": ce_v,
                "align_loss": align_v, "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tok_s,
                "attention_modes": dict(modes), "epoch": loader.epoch, "elapsed_s": now - t_start}
        if info.is_main and (step % spec.log_every == 0 or step == spec.max_steps or step == start_step + 1):
            _append_jsonl(metrics_path, last)
            window_t, window_steps = now, 0
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{ema:.3f}", ce=f"{ce_v:.3f}", align=f"{align_v:.2e}", lr=f"{lr:.1e}",
                            tok_s=f"{tok_s:,.0f}", refresh=False)
        if step % spec.eval_every == 0 or step == spec.max_steps:
            if info.is_main:
                ce = evaluate(dist.unwrap(train_model), val, method=cfg["method"], micro_batch=spec.micro_batch_size,
                              device=device, amp_dtype=amp_dtype)
                if ce:
                    last_val = {"step": step, "tokens": step * tokens_per_step, "val_ce": ce}
                    if byte_level:
                        last_val["val_bpb"] = {m: v / math.log(2) for m, v in ce.items()}
                    _append_jsonl(metrics_path, last_val)
                    if bar is not None:
                        bar.write(f"step {step}: val ce " + ", ".join(f"{m} {v:.4f}" for m, v in ce.items()))
            dist.barrier(info)
        if step % spec.save_every == 0 or step == spec.max_steps:
            if info.is_main:
                training_state = {"step": step, "optimizer": optimizer.state_dict(), "rng": rng_state(),
                                  "data": loader.state_dict(), "config": cfg, "world_size": info.world_size}
                ckpt.save_checkpoint(run_dir, step, dist.unwrap(train_model), tokenizer, training_state,
                                     keep=spec.keep_checkpoints)
            dist.barrier(info)
    if bar is not None:
        bar.close()
    return {"run_dir": str(run_dir), "step": step, "last": last, "val": last_val,
            "wall_s": time.time() - t_start, "n_parameters": full_cfg["n_parameters"]}
