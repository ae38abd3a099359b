"""Turn a Hugging Face Llama-architecture checkpoint into an SSA model.

The SSA layer is a Llama layer plus a head-wise sigmoid gate before `o_proj`, so every Llama weight
maps one to one. The gates must start as the identity: `g_proj` starts at zero, so every gate is
sigmoid(0) = 0.5 exactly, and `o_proj` is doubled. Scaling by 0.5 and by 2 only changes the binary
exponent, so (2 W)(0.5 a) equals W a exactly, term by term, and in full attention mode the
converted model computes the original function. (NSA adds compression and window branches, which
have no Llama counterpart, so an NSA conversion changes the outputs; it is a warm start.)

The checkpoint is read straight from its safetensors files (no Llama class is instantiated), which
keeps the source dtype and works the same under transformers 4.x and 5.x.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

from ..filemode import apply_umask
from ..textfiles import read_json_object
from .config import METHODS, SSAConfig

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "generation_config.json")
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)
_LAYER_KEY = re.compile(
    r"model\.layers\.(\d+)\.(self_attn\.[qkvo]_proj|mlp\.(?:gate|up|down)_proj|input_layernorm|post_attention_layernorm)\.(weight|bias)$"
)


def resolve_checkpoint_dir(path, flag: str = "--from-llama") -> Path:
    """A checkpoint directory, or a file inside one (config.json, *.safetensors)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{flag} {p} does not exist (give a local checkpoint directory)")
    if p.is_file():
        p = p.parent
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"{flag} {p} has no config.json: not a Hugging Face checkpoint directory")
    return p


def read_config_json(src: Path) -> dict:
    return read_json_object(src / "config.json", "checkpoint config")


def read_llama_config(src: Path) -> dict:
    cfg = read_config_json(src)
    archs = cfg.get("architectures") or []
    if cfg.get("model_type") != "llama" or (archs and not set(archs) & set(SUPPORTED_ARCHITECTURES)):
        raise ValueError(
            f"incompatible architecture: model_type={cfg.get('model_type')!r}, architectures={archs}; "
            f"--from-llama supports model_type 'llama' ({', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    for flag in ("attention_bias", "mlp_bias"):
        if cfg.get(flag):
            raise ValueError(f"incompatible architecture: {flag}=true; SSA layers have no biases")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"incompatible architecture: hidden_act={act!r}; SSA uses SwiGLU with silu")
    return cfg


def rope_settings(cfg: dict) -> tuple[float, dict | None]:
    """(theta, llama3 scaling or None) from transformers 5 `rope_parameters` or 4.x `rope_theta`/`rope_scaling`."""
    params = cfg.get("rope_parameters") or {}
    scaling = params if params.get("rope_type", "default") != "default" else cfg.get("rope_scaling")
    theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    if scaling is None:
        return float(theta), None
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return float(theta), None
    if kind != "llama3":
        raise ValueError(f"incompatible architecture: RoPE scaling {kind!r}; supported: none or 'llama3'")
    keep = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
    return float(theta), {"rope_type": "llama3", **{k: scaling[k] for k in keep if k in scaling}}


def llama_settings(cfg: dict, max_positions_default: int = 8192) -> dict:
    """SSAConfig fields of the Llama part of a Hugging Face config (shapes, RoPE, norm, tying, token ids)."""
    theta, scaling = rope_settings(cfg)
    heads = cfg["num_attention_heads"]
    return dict(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"], num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=heads, num_key_value_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        max_position_embeddings=cfg.get("max_position_embeddings", max_positions_default), rope_theta=theta,
        rope_llama3_scaling=scaling, rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        bos_token_id=_first(cfg.get("bos_token_id")), eos_token_id=cfg.get("eos_token_id"),
        pad_token_id=cfg.get("pad_token_id"),
    )


def ssa_config_from_llama(cfg: dict, method: str, **overrides) -> SSAConfig:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return SSAConfig(method=method, **llama_settings(cfg), **overrides)


def _first(x):
    return x[0] if isinstance(x, list) else x


def load_state_dict(src: Path, flag: str = "--from-llama") -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors checkpoint directory (one file or an index of shards)."""
    from safetensors.torch import load_file

    single, index = src / "model.safetensors", src / "model.safetensors.index.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        files = [src / name for name in sorted(set(weight_map.values()))]
    else:
        raise FileNotFoundError(
            f"{flag} {src} has no model.safetensors or model.safetensors.index.json "
            "(re-save the model with save_pretrained(safe_serialization=True))"
        )
    state = {}
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"weight shard {f} named in the index is missing")
        state.update(load_file(str(f)))
    return state


def map_llama_weights(state: dict, config: SSAConfig) -> dict[str, torch.Tensor]:
    """Llama parameter names -> SSA parameter names, with the identity-gate initialisation."""
    out = {}
    unknown = []
    for name, w in state.items():
        if name.endswith("rotary_emb.inv_freq"):  # old checkpoints saved the RoPE buffer; recomputed here
            continue
        m = _LAYER_KEY.match(name)
        if m and m.group(3) == "bias":
            raise ValueError(f"incompatible architecture: {name} is a bias; SSA layers have no biases")
        if m:
            out[name] = w * 2 if m.group(2) == "self_attn.o_proj" else w
        elif name in ("model.embed_tokens.weight", "model.norm.weight"):
            out[name] = w
        elif name == "lm_head.weight":
            if not config.tie_word_embeddings:
                out[name] = w
        else:
            unknown.append(name)
    if unknown:
        raise ValueError(f"incompatible architecture: unexpected weights {unknown[:3]}{' ...' if len(unknown) > 3 else ''}")
    # A padded vocabulary (config.pad_vocab_multiple) gets zero rows; the model never outputs them.
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        if name in out and out[name].shape[0] < config.padded_vocab_size:
            w = out[name]
            out[name] = torch.cat([w, w.new_zeros(config.padded_vocab_size - w.shape[0], w.shape[1])])
    dtype = out["model.embed_tokens.weight"].dtype
    for i in range(config.num_hidden_layers):
        gates = (3 if config.method == "nsa" else 1) * config.num_attention_heads
        out[f"model.layers.{i}.self_attn.g_proj.weight"] = torch.zeros(gates, config.hidden_size, dtype=dtype)
    return out


def check_out_dir(out_dir, overwrite: bool) -> Path:
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ValueError(f"--out {out_dir} exists and is not empty (pass --overwrite to replace its files)")
    return out_dir


def save_converted(config: SSAConfig, weights: dict, src: Path, out_dir: Path) -> list[str]:
    """Load `weights` into an SSA model of `config` (strict) and write it with the source's tokenizer files.

    Everything is written to a temporary sibling directory first and moved into `out_dir` at the
    end, so a failed conversion leaves `out_dir` as it was. Returns the tokenizer files copied.
    """
    import os
    import tempfile

    from .modeling import SSAForCausalLM

    with torch.device("meta"):  # no random init of weights that are about to be replaced
        model = SSAForCausalLM(config)
    expected = model.state_dict()
    missing, extra = set(expected) - set(weights), set(weights) - set(expected)
    if missing or extra:
        raise ValueError(
            f"incompatible architecture: missing weights {sorted(missing)[:3]}, unexpected {sorted(extra)[:3]}"
        )
    for name, w in weights.items():
        if tuple(w.shape) != tuple(expected[name].shape):
            raise ValueError(f"weight {name} has shape {tuple(w.shape)}, the config needs {tuple(expected[name].shape)}")
    model.load_state_dict(weights, strict=True, assign=True)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        copied = []
        for name in TOKENIZER_FILES:
            if (src / name).is_file():  # the source's generation defaults (eos ids, sampling) win
                shutil.copyfile(src / name, tmp / name)
                copied.append(name)
        out_dir.mkdir(exist_ok=True)
        for f in sorted(tmp.iterdir()):
            apply_umask(f)  # safetensors and mkdtemp write 0600/0700: teammates could not load the model
            os.replace(f, out_dir / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return copied


def convert_llama(src, out_dir, method: str = "ssa", overwrite: bool = False, **config_overrides):
    """Write an SSA checkpoint (safetensors + config + tokenizer files) converted from a Llama checkpoint."""
    src = resolve_checkpoint_dir(src)
    out_dir = check_out_dir(out_dir, overwrite)
    config = ssa_config_from_llama(read_llama_config(src), method, **config_overrides)
    weights = map_llama_weights(load_state_dict(src), config)
    copied = save_converted(config, weights, src, out_dir)
    return out_dir, config, copied
