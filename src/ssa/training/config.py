"""Training configuration: presets, config files, dotted overrides and their validation.

A config (preset file, `--config FILE`, or the `train_config.json` of a run) is a JSON object
    {"model": {SSAConfig kwargs except method}, "train": {...}, "data": {...}}
plus, once resolved, "method" and "preset". Presets live in `configs/NAME.json`: inside an
installed wheel they are force-included as `ssa/configs`, in a source checkout they sit at the
repository root; the packaged copy wins when both exist.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..textfiles import read_json_object as _read_json
from .data import DataSpec
from .keys import spec_from_dict

METHODS = ("full", "moba", "nsa", "ssa")
SECTIONS = ("model", "train", "data")
ON_NONFINITE = ("stop", "skip")

# What `--resume` may change: the schedule and the bookkeeping. Everything else (method, model.*,
# data.*, train.seed, and the optimizer hyper-parameters, which the saved AdamW state carries)
# would silently train something other than what the checkpoint and train_config.json describe.
RESUME_MAY_CHANGE = frozenset({
    "preset", "data.cache_dir",
    *(f"train.{k}" for k in (
        "max_steps", "lr", "min_lr", "warmup_steps", "grad_clip", "micro_batch_size", "grad_accum",
        "log_every", "eval_every", "eval_batches", "save_every", "keep_checkpoints", "device", "dtype",
        "num_threads", "ddp_find_unused_parameters", "on_nonfinite",
        # how the same computation is laid out: a sharded checkpoint resumes under ddp or fsdp
        "parallel", "compile", "compile_backend", "activation_checkpointing", "peak_tflops",
    )),
})

# SSAConfig keyword arguments a config may set (method comes from --method / the "method" key).
MODEL_KEYS = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "max_position_embeddings", "rope_theta", "rope_llama3_scaling",
    "tie_word_embeddings", "block_size", "block_count", "alpha", "full_ratio", "align_direction",
    "align_loss", "align_on", "nsa_window", "attention_mode", "backend", "rms_norm_eps",
    "initializer_range",
)


@dataclass
class TrainSpec:
    """The `train` section, with defaults. Batch sizes are in rows of `data.seq_len` tokens."""

    micro_batch_size: int = 8
    grad_accum: int = 1
    max_steps: int = 1000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: list = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 10
    eval_every: int = 200
    eval_batches: int = 4
    save_every: int = 500
    keep_checkpoints: int = 2
    device: str = "auto"
    dtype: str = "auto"
    num_threads: int | None = None
    ddp_find_unused_parameters: bool = False
    # A step whose loss or gradient norm is NaN/inf: "stop" the run (the default; the last
    # checkpoint is intact) or "skip" the optimizer step and go on (stops after 5 in a row).
    on_nonfinite: str = "stop"
    parallel: str = "ddp"  # data parallelism under torchrun: ddp or fsdp (FSDP2, sharded state)
    compile: bool = False  # torch.compile each decoder block
    # torch.compile backend of train.compile: "inductor" (generated kernels, the fast one) or any
    # other registered backend, e.g. "aot_eager" (traces and runs autograd ahead, no code generation).
    compile_backend: str = "inductor"
    activation_checkpointing: bool = False  # recompute block activations in backward
    mode_draw: str = "micro_batch"  # SSA mode: one draw per micro_batch (official code) or per step
    peak_tflops: float | None = None  # MFU denominator per device (default: a table by GPU name)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainSpec":
        return spec_from_dict(cls, d, "train")

    def validate(self) -> None:
        def pos_int(name, minimum=1):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
                raise ValueError(f"train.{name} must be an integer >= {minimum}, got {v!r}")

        for name in ("micro_batch_size", "grad_accum", "max_steps", "log_every", "eval_every",
                     "save_every", "keep_checkpoints"):
            pos_int(name)
        for name in ("warmup_steps", "eval_batches", "seed"):
            pos_int(name, 0)
        for name in ("lr", "min_lr", "weight_decay", "grad_clip", "eps"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0:
                raise ValueError(f"train.{name} must be a number >= 0, got {v!r}")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr!r}")
        if self.min_lr > self.lr:
            raise ValueError(f"train.min_lr ({self.min_lr}) must be <= train.lr ({self.lr})")
        if (not isinstance(self.betas, (list, tuple)) or len(self.betas) != 2
                or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas)):
            raise ValueError(f"train.betas must be two numbers in [0, 1), got {self.betas!r}")
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ValueError(f"train.device must be one of auto, cpu, cuda, cuda:N; got {self.device!r}")
        if self.dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"train.dtype must be one of auto, float32, bfloat16; got {self.dtype!r}")
        if self.num_threads is not None:
            pos_int("num_threads")
        if self.on_nonfinite not in ON_NONFINITE:
            raise ValueError(f"train.on_nonfinite must be one of {', '.join(ON_NONFINITE)}; got {self.on_nonfinite!r}")
        for name, allowed in (("parallel", ("ddp", "fsdp")), ("mode_draw", ("micro_batch", "step"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"train.{name} must be one of {', '.join(allowed)}; got {getattr(self, name)!r}")
        for name in ("compile", "activation_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"train.{name} must be true or false, got {getattr(self, name)!r}")
        self._check_compile_backend()
        if self.peak_tflops is not None and (isinstance(self.peak_tflops, bool)
                                             or not isinstance(self.peak_tflops, (int, float)) or self.peak_tflops <= 0):
            raise ValueError(f"train.peak_tflops must be a number > 0 or null, got {self.peak_tflops!r}")

    def _check_compile_backend(self) -> None:
        # Only the type here (no torch import while reading a config); the trainer checks the name
        # against torch's registered backends before it builds anything (distributed.apply_compile).
        if not isinstance(self.compile_backend, str) or not self.compile_backend:
            raise ValueError(f"train.compile_backend must be the name of a torch.compile backend, "
                             f"got {self.compile_backend!r}")


def preset_dirs() -> list[Path]:
    """Where presets are looked up: the packaged ssa/configs, then the checkout's configs/."""
    import ssa

    pkg = Path(ssa.__file__).resolve().parent
    return [pkg / "configs", pkg.parents[1] / "configs"]


def available_presets() -> list[str]:
    names = set()
    for d in preset_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.json"))
    return sorted(names)


def load_preset(name: str) -> dict:
    for d in preset_dirs():
        p = d / f"{name}.json"
        if p.is_file():
            return _read_json(p, "preset")
    raise ValueError(f"unknown preset {name!r}; available: {', '.join(available_presets()) or '(none found)'}")


def load_config_file(path: str | Path) -> dict:
    return _read_json(Path(path), "config file")


def parse_override(item: str) -> tuple[list[str], object]:
    """`a.b=value` -> (["a", "b"], value); the value is JSON when it parses, a string otherwise."""
    if "=" not in item:
        raise ValueError(f"--set expects KEY=VALUE (e.g. train.max_steps=50), got {item!r}")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if len(parts) < 2 or parts[0] not in SECTIONS or not all(parts):
        raise ValueError(f"--set key {key!r} must start with one of {SECTIONS} (e.g. model.block_count=8)")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return parts, value


def apply_overrides(cfg: dict, items: list[str]) -> dict:
    cfg = copy.deepcopy(cfg)
    for item in items or []:
        parts, value = parse_override(item)
        node = cfg.setdefault(parts[0], {})
        for p in parts[1:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {item!r}: {p!r} is not a section")
        node[parts[-1]] = value
    return cfg


def resolve_config(base: dict, *, method: str | None, overrides: list[str] | None = None,
                   preset: str | None = None) -> dict:
    """Merge, apply overrides and validate; returns the full config with every default filled in."""
    # Keys starting with "_" are comments (presets document their provenance that way).
    cfg = {k: v for k, v in apply_overrides(base, overrides or []).items() if not k.startswith("_")}
    unknown = sorted(set(cfg) - set(SECTIONS) - {"method", "preset"})
    if unknown:
        raise ValueError(f"unknown config section(s) {unknown}; allowed: {list(SECTIONS) + ['method', 'preset']}")
    method = method or cfg.get("method") or "ssa"
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    model = dict(cfg.get("model") or {})
    if "method" in model:
        raise ValueError("model.method is not a config key: use --method or the top-level \"method\"")
    bad = sorted(set(model) - set(MODEL_KEYS) - _extra_model_keys())
    if bad:
        raise ValueError(f"unknown model key(s) {bad}; allowed: {sorted(set(MODEL_KEYS) | _extra_model_keys())}")
    train = TrainSpec.from_dict(dict(cfg.get("train") or {}))
    data = DataSpec.from_dict(dict(cfg.get("data") or {}))
    _check_model_section(method, model, data.seq_len)
    return {"preset": preset or cfg.get("preset"), "method": method, "model": model,
            "train": asdict(train), "data": asdict(data)}


def _check_model_section(method: str, model: dict, seq_len: int) -> None:
    """Build the model config now, so a bad model key fails before any data is read; its error
    names the key as `model.KEY`."""
    try:
        from ssa.model import SSAConfig
    except ImportError:  # the model package is optional for config validation
        return
    kwargs = dict(model)
    kwargs.setdefault("max_position_embeddings", seq_len)
    try:
        config = SSAConfig(method=method, **kwargs)
    except (ValueError, TypeError) as err:
        text = str(err)
        first = text.split(" ", 1)[0]
        raise ValueError(f"model.{text}" if first in MODEL_KEYS or first in model else f"model section: {text}") from None
    if seq_len > config.max_position_embeddings:
        raise ValueError(
            f"data.seq_len ({seq_len}) exceeds model.max_position_embeddings ({config.max_position_embeddings}): "
            f"raise model.max_position_embeddings or lower data.seq_len"
        )
    if config.block_size > seq_len:
        raise ValueError(f"model.block_size ({config.block_size}) must be <= data.seq_len ({seq_len})")


def _extra_model_keys() -> set[str]:
    """Any other attribute a default SSAConfig has (so new model options need no change here).
    No fallback on import errors: an empty set would reject valid keys with a misleading message."""
    from ssa.model import SSAConfig

    return {k for k in SSAConfig().to_dict() if not k.startswith("_")} - {"method"}


def _flatten(cfg: dict) -> dict:
    flat = {"method": cfg.get("method"), "preset": cfg.get("preset")}
    for section in SECTIONS:
        for key, value in (cfg.get(section) or {}).items():
            flat[f"{section}.{key}"] = value
    return flat


def check_resume_config(saved: dict, new: dict) -> None:
    """Refuse a resume whose config differs from the checkpoint's in a key outside RESUME_MAY_CHANGE."""
    old, cur = _flatten(saved), _flatten(new)
    missing = object()
    changed = []
    for key in sorted(set(old) | set(cur)):
        a, b = old.get(key, missing), cur.get(key, missing)
        # A train/data key the checkpoint predates was resolved to its default: not a change.
        if a is missing and not key.startswith("model."):
            continue
        if a != b and key not in RESUME_MAY_CHANGE:
            changed.append(key)
    if changed:
        raise ValueError(
            f"--resume cannot change {', '.join(changed)} (the checkpoint was trained with other values); "
            f"a resumed run may change only train.{{{', '.join(sorted(k[6:] for k in RESUME_MAY_CHANGE if k.startswith('train.')))}}}"
            f" and data.cache_dir; start a new run with another --out instead"
        )
