"""A Llama-style causal LM whose attention layer has a full stream and a block-sparse stream.

Read top to bottom: the per-call attention plan, the gated attention layer, the MLP and decoder
block, then the model. Every method (full, moba, nsa, ssa) shares everything but attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .. import ops
from .config import ATTENTION_MODES, SSAConfig
from .objective import alignment_loss, draw_mode
from .rope import RotaryEmbedding, apply_rope


@dataclass
class AttentionPlan:
    """What every layer does in one forward pass (the mode draw is shared by all layers)."""

    mode: str  # the stream that feeds the residual: "full" or "sparse"
    streams: tuple[str, ...]  # the streams computed: ("full",), ("sparse",) or both
    block_size: int
    block_count: int
    align: bool  # add the per-layer alignment loss (SSA training)
    want_stats: bool = False


@dataclass
class SSACausalLMOutput(CausalLMOutputWithPast):
    ce_loss: torch.FloatTensor | None = None
    align_loss: torch.FloatTensor | None = None
    attention_mode: str | None = None
    attention_stats: list | None = None


class GatedAttention(nn.Module):
    """Attention with a head-wise sigmoid output gate; computes the streams the plan asks for."""

    def __init__(self, config: SSAConfig, layer_idx: int):
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads, self.head_dim = (
            config.num_attention_heads, config.num_key_value_heads, config.head_dim,
        )
        self.scale = self.head_dim ** -0.5
        hidden = config.hidden_size
        self.q_proj = nn.Linear(hidden, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, hidden, bias=False)
        # NSA mixes three branches (compressed, selected, window), each with its own gate.
        self.num_gates = 3 if config.method == "nsa" else 1
        self.g_proj = nn.Linear(hidden, self.num_heads * self.num_gates, bias=False)

    def forward(self, x, cos, sin, plan: AttentionPlan):
        B, T, _ = x.shape
        q = apply_rope(self.q_proj(x).view(B, T, self.num_heads, self.head_dim), cos, sin)
        k = apply_rope(self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim), cos, sin)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim)
        gates = torch.sigmoid(self.g_proj(x)).view(B, T, self.num_gates, self.num_heads, 1)

        out, align, indices = self._attend(q, k, v, gates, plan)
        stats = None
        if plan.want_stats:
            from ..ops.statistics import attention_statistics  # evaluation-only dependency

            if indices is None:
                indices = self._select(q, k, plan)
            with torch.no_grad():
                stats = attention_statistics(q, k, indices, plan.block_size, self.scale)
        return self.o_proj(out.reshape(B, T, -1)), align, stats

    def _select(self, q, k, plan):
        return ops.select_blocks(q, k, plan.block_size, plan.block_count, self.scale, backend=self.config.backend)

    def _attend(self, q, k, v, gates, plan):
        cfg, backend = self.config, self.config.backend
        if cfg.method == "nsa":
            indices = self._select(q, k, plan)
            branches = (
                ops.compressed_attention(q, k, v, plan.block_size, self.scale, backend=backend),
                ops.block_sparse_attention(q, k, v, plan.block_size, plan.block_count, indices, self.scale, backend=backend),
                ops.sliding_window_attention(q, k, v, cfg.nsa_window, self.scale, backend=backend),
            )
            return sum(gates[:, :, i] * o for i, o in enumerate(branches)), None, indices

        gate = gates[:, :, 0]
        raw, indices = {}, None
        if "full" in plan.streams:
            raw["full"] = ops.full_attention(q, k, v, self.scale)
        if "sparse" in plan.streams:
            indices = self._select(q, k, plan)
            raw["sparse"] = ops.block_sparse_attention(
                q, k, v, plan.block_size, plan.block_count, indices, self.scale, backend=backend
            )
        gated = {name: gate * o for name, o in raw.items()}
        align = None
        if plan.align:
            pair = gated if cfg.align_on == "gated" else raw
            align = alignment_loss(pair["full"], pair["sparse"], cfg.align_direction, cfg.align_loss)
        return gated[plan.mode], align, indices


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, config: SSAConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = GatedAttention(config, layer_idx)
        self.post_attention_layernorm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)

    def forward(self, x, cos, sin, plan: AttentionPlan):
        attn, align, stats = self.self_attn(self.input_layernorm(x), cos, sin, plan)
        x = x + attn
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, align, stats


class SSAPreTrainedModel(PreTrainedModel):
    config_class = SSAConfig
    base_model_prefix = "model"
    _no_split_modules = ["DecoderLayer"]
    _supports_sdpa = True

    def _init_weights(self, module):
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, nn.RMSNorm):
            nn.init.ones_(module.weight)


class SSAModel(SSAPreTrainedModel):
    def __init__(self, config: SSAConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_llama3_scaling)
        self.post_init()

    def forward(self, input_ids, plan: AttentionPlan, position_ids=None):
        B, T = input_ids.shape
        if position_ids is None:
            position_ids = torch.arange(T, device=input_ids.device)[None].expand(B, T)
        cos, sin = self.rotary(position_ids)
        x = self.embed_tokens(input_ids)
        aligns, stats = [], []
        for layer in self.layers:
            x, align, layer_stats = layer(x, cos, sin, plan)
            if align is not None:
                aligns.append(align)
            if layer_stats is not None:
                stats.append(layer_stats)
        return self.norm(x), aligns, stats


class SSAForCausalLM(SSAPreTrainedModel, GenerationMixin):
    def __init__(self, config: SSAConfig):
        super().__init__(config)
        self.model = SSAModel(config)
        # Tied embeddings reuse embed_tokens directly instead of relying on weight-tying hooks.
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    def plan(self, attention_mode=None, block_count=None, block_size=None, output_attention_stats=False) -> AttentionPlan:
        """Decide what every layer computes in this call (DESIGN §1.3, §1.4)."""
        cfg = self.config
        if attention_mode is not None and attention_mode not in ATTENTION_MODES:
            raise ValueError(f"attention_mode must be one of {ATTENTION_MODES} or None, got {attention_mode!r}")
        for name, value in (("block_count", block_count), ("block_size", block_size)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an int >= 1 or None, got {value!r}")
        if cfg.method == "nsa" and attention_mode == "full":
            raise ValueError("method 'nsa' has no full-attention stream: use attention_mode='sparse' or None")
        training = self.training and torch.is_grad_enabled()
        if training and cfg.method == "ssa":
            mode = attention_mode or draw_mode(cfg.full_ratio)
            align = cfg.align_direction != "none"
            streams = ("full", "sparse") if align else (mode,)
        else:
            if attention_mode is not None:
                mode = attention_mode
            elif training:  # baselines train with their own attention only
                mode = "full" if cfg.method == "full" else "sparse"
            else:
                mode = cfg.inference_mode
            streams, align = (mode,), False
        return AttentionPlan(
            mode=mode, streams=streams, align=align,
            block_size=block_size or cfg.block_size, block_count=block_count or cfg.block_count,
            want_stats=output_attention_stats,
        )

    def forward(
        self, input_ids, labels=None, attention_mode=None, block_count=None, block_size=None,
        position_ids=None, output_attention_stats=False, **kwargs,
    ):
        plan = self.plan(attention_mode, block_count, block_size, output_attention_stats)
        hidden, aligns, stats = self.model(input_ids, plan, position_ids=position_ids)
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(hidden, weight)

        align_loss = torch.stack(aligns).mean() if aligns else hidden.new_zeros((), dtype=torch.float32)
        loss = ce_loss = None
        if labels is not None:
            ce_loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100
            )
            loss = ce_loss + self.config.alpha * align_loss if aligns else ce_loss
        return SSACausalLMOutput(
            loss=loss, logits=logits, ce_loss=ce_loss, align_loss=align_loss,
            attention_mode=plan.mode, attention_stats=stats or None,
        )
