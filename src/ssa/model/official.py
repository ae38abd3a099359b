"""Map the SSA paper's released checkpoints (SSA, FullAttn, MoBA, NSA) onto SSAConfig / SSAForCausalLM.

The released models use one Llama variant for all four methods (`model_type` "llama-nsa",
`LlamaNSAForCausalLM`). Its layers hold the same Llama weights as ours under the same names, plus a
`g_proj` of shape [3 * heads, hidden] whose output is read as [..., heads, 3]: per head the gates of
the compression, selection and sliding-window branches, in that order. Their attention gates the
full and the selected-block outputs with the selection gate and never uses the other two, except
NSA, which mixes all three branches. So:

- SSA, FullAttn, MoBA: our one gate per head is row `3 * h + 1` of their `g_proj`.
- NSA: our gates are laid out [3, heads] (branch-major), theirs [heads, 3]: a transpose of rows.

Their config.json does not record the method (all four share the same keys), so the caller names
it. Everything else is read from the config and the weights; anything that this mapping does not
know fails with a one-line error instead of being dropped. See docs/conversion.md.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .config import METHODS, SSAConfig
from .convert import (
    check_out_dir, llama_settings, load_state_dict, read_config_json, resolve_checkpoint_dir, save_converted,
)

FLAG = "--from-official"
MODEL_TYPE = "llama-nsa"
ARCHITECTURE = "LlamaNSAForCausalLM"
BRANCHES = ("compression", "selection", "window")  # the order of their per-head gates
SELECTION = BRANCHES.index("selection")

# Keys of their config class that this mapping reads (or checks) and turns into SSAConfig fields.
MAPPED_KEYS = {
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "initializer_range",
    "rope_theta", "rope_scaling", "rope_parameters", "tie_word_embeddings", "use_cache",
    "bos_token_id", "eos_token_id", "pad_token_id", "block_size", "block_counts", "window_size",
    "inference_mode",
    # checked below: any value other than the one we implement is refused
    "hidden_act", "attention_bias", "mlp_bias", "attention_dropout", "pretraining_tp",
}
# Bookkeeping keys that do not change the computation.
IGNORED_KEYS = {
    "model_type", "architectures", "auto_map", "torch_dtype", "dtype", "transformers_version", "_name_or_path",
    "_attn_implementation", "_attn_implementation_autoset", "attn_implementation", "name_or_path",
}


# What every transformers config may write (output flags, label maps, generation defaults of 4.x).
# None of it changes a forward pass; pruned heads would, and then the weight shapes disagree.
GENERIC_KEYS = {
    "return_dict", "output_hidden_states", "output_attentions", "torchscript", "use_bfloat16", "tf_legacy_loss",
    "pruned_heads", "chunk_size_feed_forward", "is_encoder_decoder", "is_decoder", "cross_attention_hidden_size",
    "add_cross_attention", "tie_encoder_decoder", "max_length", "min_length", "do_sample", "early_stopping",
    "num_beams", "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p", "typical_p",
    "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
    "bad_words_ids", "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens", "finetuning_task", "id2label", "label2id", "tokenizer_class", "prefix",
    "sep_token_id", "decoder_start_token_id", "task_specific_params", "problem_type",
}


def _generic_config_keys() -> set[str]:
    from transformers import PretrainedConfig

    return GENERIC_KEYS | set(PretrainedConfig().to_dict())


def check_official_config(cfg: dict, method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)} for {FLAG}, got {method!r}")
    archs = cfg.get("architectures") or [ARCHITECTURE]
    if cfg.get("model_type") != MODEL_TYPE or ARCHITECTURE not in archs:
        raise ValueError(
            f"not an official SSA checkpoint: model_type={cfg.get('model_type')!r}, architectures={archs}; "
            f"{FLAG} reads model_type {MODEL_TYPE!r} ({ARCHITECTURE}); use --from-llama for plain Llama checkpoints"
        )
    unknown = sorted(set(cfg) - MAPPED_KEYS - IGNORED_KEYS - _generic_config_keys())
    if unknown:
        raise ValueError(f"unknown config keys {unknown[:5]}: {FLAG} does not know what they change")
    required = {"hidden_act": "silu", "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
                "pretraining_tp": 1}
    for key, value in required.items():
        if key in cfg and cfg[key] != value:
            raise ValueError(f"config {key}={cfg[key]!r} cannot be mapped: SSA layers need {key}={value!r}")
    for key in ("block_size", "block_counts"):
        if key in cfg and (isinstance(cfg[key], bool) or not isinstance(cfg[key], int) or cfg[key] < 1):
            raise ValueError(f"config {key} must be an int >= 1, got {cfg[key]!r}")
    window = cfg.get("window_size", 0)
    if method == "nsa" and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"method 'nsa' needs config window_size >= 1 (its sliding-window branch), got {window!r}")


def ssa_config_from_official(cfg: dict, method: str, **overrides) -> SSAConfig:
    """SSAConfig of a released checkpoint. `overrides` (block_size, block_count) win over its config."""
    check_official_config(cfg, method)
    settings = dict(
        llama_settings(cfg, max_positions_default=2048),  # their config class's default
        method=method, initializer_range=cfg.get("initializer_range", 0.02),
        # their config class defaults: 64-token blocks, 16 of them
        block_size=cfg.get("block_size", 64), block_count=cfg.get("block_counts", 16),
        use_cache=bool(cfg.get("use_cache", True)),
    )
    if method == "nsa":
        settings["nsa_window"] = cfg["window_size"]
    if method == "ssa" and cfg.get("inference_mode") is not None:
        settings["attention_mode"] = cfg["inference_mode"]  # what their SSA model runs at inference
    settings.update(overrides)
    return SSAConfig(**settings)


def map_official_weights(state: dict, config: SSAConfig) -> dict[str, torch.Tensor]:
    """Their parameter names -> ours; g_proj rows regrouped (see the module docstring)."""
    H, hidden = config.num_attention_heads, config.hidden_size
    out = {}
    for name, w in state.items():
        if name.endswith("rotary_emb.inv_freq"):  # a buffer of RoPE frequencies, recomputed here
            continue
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # tied: their model replaces it by the embedding at load time
        if name.endswith(".self_attn.g_proj.weight"):
            if tuple(w.shape) != (3 * H, hidden):
                raise ValueError(f"weight {name} has shape {tuple(w.shape)}, the config needs {(3 * H, hidden)}")
            per_head = w.view(H, len(BRANCHES), hidden)
            w = per_head.transpose(0, 1).reshape(3 * H, hidden) if config.method == "nsa" else per_head[:, SELECTION]
        out[name] = w.contiguous()
    return out


def convert_official(src, out_dir, method: str, overwrite: bool = False, **config_overrides):
    """Write an SSA checkpoint converted from one of the paper's released checkpoints.

    Returns (out_dir, config, tokenizer files copied). Fails with ValueError / FileNotFoundError
    on anything it cannot map: another architecture, unknown config keys or weights, missing
    weights, shapes that disagree with the config.
    """
    src = resolve_checkpoint_dir(src, FLAG)
    out_dir = check_out_dir(out_dir, overwrite)
    config = ssa_config_from_official(read_config_json(src), method, **config_overrides)
    weights = map_official_weights(load_state_dict(src, FLAG), config)
    copied = save_converted(config, weights, src, Path(out_dir))
    return out_dir, config, copied
