"""Load a checkpoint for evaluation, with the run metadata evaluation needs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ssa.training.checkpoint import load_model, load_tokenizer, resolve_checkpoint

DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class Loaded:
    model: object
    tokenizer: object
    step_dir: Path
    run_dir: Path | None
    train_config: dict = field(default_factory=dict)

    @property
    def config(self):
        return self.model.config

    @property
    def method(self) -> str:
        return self.model.config.method

    @property
    def train_len(self) -> int:
        """The training sequence length (data.seq_len), else the config's max positions."""
        data = self.train_config.get("data") or {}
        return int(data.get("seq_len") or self.model.config.max_position_embeddings)

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def modes(self) -> tuple[str, ...]:
        """Inference modes the method supports (NSA has no full stream)."""
        return ("sparse",) if self.method == "nsa" else ("full", "sparse")

    @property
    def eval_dir(self) -> Path:
        """Where results are written: RUN_DIR/eval, or STEP_DIR/eval outside a run."""
        return (self.run_dir or self.step_dir) / "eval"

    def describe(self) -> dict:
        c = self.model.config
        return {
            "checkpoint": str(self.step_dir), "run_dir": str(self.run_dir) if self.run_dir else None,
            "method": c.method, "train_len": self.train_len, "block_size": c.block_size,
            "block_count": c.block_count, "num_hidden_layers": c.num_hidden_layers,
            "num_attention_heads": c.num_attention_heads, "num_key_value_heads": c.num_key_value_heads,
            "vocab_size": c.vocab_size,
        }


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {device}: CUDA is not available on this machine; use --device cpu or auto")
        if dev.index is not None and dev.index >= count:
            raise ValueError(f"--device {device}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    elif dev.type != "cpu":
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {device!r}")
    return dev


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {('auto',) + DTYPES}, got {dtype!r}")
    return getattr(torch, dtype)


def _run_dir_of(step_dir: Path) -> Path | None:
    parent = step_dir.parent
    if parent.name == "checkpoints" and (parent.parent / "train_config.json").is_file():
        return parent.parent
    return None


def load(path, device: str | None = None, dtype: str | None = None, **config_overrides) -> Loaded:
    """Load the checkpoint at `path` (run dir, checkpoints dir or step dir) in eval mode.

    `config_overrides` are SSAConfig attributes changed at load time, e.g.
    `rope_llama3_scaling={...}` for length extrapolation.
    """
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    step_dir = resolve_checkpoint(path)
    model = load_model(step_dir, device=dev, dtype=dt, **config_overrides).eval()
    tokenizer = load_tokenizer(step_dir)
    run_dir = _run_dir_of(step_dir)
    train_config = {}
    if run_dir is not None:
        try:
            train_config = json.loads((run_dir / "train_config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{run_dir / 'train_config.json'} could not be read: {err}") from None
    return Loaded(model=model, tokenizer=tokenizer, step_dir=step_dir, run_dir=run_dir, train_config=train_config)


def with_config(loaded: Loaded, **config_overrides) -> Loaded:
    """The same checkpoint reloaded with changed config attributes (same device and dtype)."""
    p = next(loaded.model.parameters())
    model = load_model(loaded.step_dir, device=p.device, dtype=p.dtype, **config_overrides).eval()
    return Loaded(model=model, tokenizer=loaded.tokenizer, step_dir=loaded.step_dir,
                  run_dir=loaded.run_dir, train_config=loaded.train_config)


def llama3_scaling(factor: float, original_len: int) -> dict:
    """llama3-style RoPE scaling for running at `factor` x the training length."""
    return {"rope_type": "llama3", "factor": float(factor), "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": int(original_len)}
