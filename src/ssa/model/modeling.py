"""A Llama-style causal LM whose attention layer has a full stream and a block-sparse stream.

Read top to bottom: the per-call attention plan, the gated attention layer, the MLP and decoder
block, then the model. Every method (full, moba, nsa, ssa) shares everything but attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .. import ops
from ..ops import decode as decode_ops
from .cache import CacheStep, SSACache
from .config import SSAConfig, check_inference_settings
from .loss import IGNORE_INDEX, linear_cross_entropy
from .objective import alignment_loss, draw_mode, gated_alignment
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
    # Packed documents: int32 boundaries over the flattened [B * T] tokens (ssa.ops convention), or None.
    cu_seqlens: torch.Tensor | None = None
    max_seqlen: int | None = None  # a bound on the documents' lengths: the row length


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

    def forward(self, x, cos, sin, plan: AttentionPlan, cache: SSACache | None = None, step: CacheStep | None = None):
        B, T, _ = x.shape
        q = apply_rope(self.q_proj(x).view(B, T, self.num_heads, self.head_dim), cos, sin)
        k = apply_rope(self.k_proj(x).view(B, T, self.num_kv_heads, self.head_dim), cos, sin)
        v = self.v_proj(x).view(B, T, self.num_kv_heads, self.head_dim)
        gates = torch.sigmoid(self.g_proj(x)).view(B, T, self.num_gates, self.num_heads, 1)

        if cache is not None:
            return self.o_proj(self._attend_cached(q, k, v, gates, plan, cache, step).reshape(B, T, -1)), None, None
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
        return ops.select_blocks(q, k, plan.block_size, plan.block_count, self.scale, backend=self.config.backend,
                                 cu_seqlens=plan.cu_seqlens)

    def _attend(self, q, k, v, gates, plan):
        if plan.cu_seqlens is None:
            return self._attend_rows(q, k, v, gates, plan)
        # Packed documents: the rows become one sequence of documents (the boundaries include every
        # row start), which is the varlen layout of the ops.
        B, T = q.shape[:2]
        out, align, indices = self._attend_rows(*(x.reshape(1, B * T, *x.shape[2:]) for x in (q, k, v, gates)), plan)
        return out.view(B, T, *out.shape[2:]), align, indices

    def _attend_rows(self, q, k, v, gates, plan):
        cfg, backend, cu = self.config, self.config.backend, plan.cu_seqlens
        if cfg.method == "nsa":
            indices = self._select(q, k, plan)
            branches = (
                ops.compressed_attention(q, k, v, plan.block_size, self.scale, backend=backend, cu_seqlens=cu,
                                         max_seqlen=plan.max_seqlen),
                ops.block_sparse_attention(q, k, v, plan.block_size, plan.block_count, indices, self.scale,
                                           backend=backend, cu_seqlens=cu, check_indices=False),
                ops.sliding_window_attention(q, k, v, cfg.nsa_window, self.scale, backend=backend, cu_seqlens=cu),
            )
            return sum(gates[:, :, i] * o for i, o in enumerate(branches)), None, indices

        gate = gates[:, :, 0]
        raw, indices = {}, None
        if "full" in plan.streams:
            raw["full"] = ops.full_attention(q, k, v, self.scale, cu_seqlens=cu, max_seqlen=plan.max_seqlen)
        if "sparse" in plan.streams:
            indices = self._select(q, k, plan)
            raw["sparse"] = ops.block_sparse_attention(
                q, k, v, plan.block_size, plan.block_count, indices, self.scale, backend=backend, cu_seqlens=cu,
                check_indices=False,  # our own selection: valid by construction, no device sync per layer
            )
        if not plan.align:
            return gate * raw[plan.mode], None, indices
        if cfg.align_on == "gated":  # both gate products and the alignment in one op
            out, align = gated_alignment(raw["full"], raw["sparse"], gate, plan.mode, cfg.align_direction,
                                         cfg.align_loss, backend=backend)
            return out, align, indices
        align = alignment_loss(raw["full"], raw["sparse"], cfg.align_direction, cfg.align_loss, backend=backend)
        return gate * raw[plan.mode], align, indices

    def _attend_cached(self, q, k, v, gates, plan, cache: SSACache, step: CacheStep):
        """An empty cache runs the plan's mode over the new tokens; later passes (one token, or a
        chunk of a long prompt) attend over the cache, every new query up to its own position."""
        T = step.columns
        layer = cache.write(self.layer_idx, k, v, step)
        if step.prefill:
            if not step.padded:
                return self._attend_rows(q, k, v, gates, plan)[0]
            out = torch.zeros_like(q)  # padding columns: zeros, never attended to
            for b, c in enumerate(step.count):  # each row's real tokens, without its padding
                rows = (slice(b, b + 1), slice(T - c, None))
                out[rows] = self._attend_rows(q[rows], k[rows], v[rows], gates[rows], plan)[0]
            return out
        # Reads are bounded by the cache's capacity under a length mask, not by the current
        # length: the shapes stay fixed from step to step, which CUDA-graph replay needs and
        # which spares SDPA backends that plan per shape (cuDNN) a new plan for every token.
        return self._decode(q, gates, layer, step.end_t, plan)

    def _decode(self, q, gates, layer, lengths, plan):
        """New queries [B, T, HQ, D] over the cached layer; reads only what its mode needs."""
        cfg, s = self.config, plan.block_size
        if cfg.method == "nsa":
            branches = (
                decode_ops.compressed_decode(q, layer.kbar, layer.vbar, lengths, s, self.scale),
                decode_ops.sparse_decode(
                    q, layer.k, layer.v, layer.kbar, lengths, s, plan.block_count, self.scale, backend=cfg.backend,
                ),
                decode_ops.window_decode(q, layer.k, layer.v, lengths, cfg.nsa_window, self.scale),
            )
            return sum(gates[:, :, i] * o for i, o in enumerate(branches))
        if plan.mode == "full":
            o = decode_ops.full_decode(q, layer.k, layer.v, lengths, self.scale)
        else:
            o = decode_ops.sparse_decode(
                q, layer.k, layer.v, layer.kbar, lengths, s, plan.block_count, self.scale, backend=cfg.backend,
            )
        return gates[:, :, 0] * o


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

    def forward(self, x, cos, sin, plan: AttentionPlan, cache=None, step=None):
        attn, align, stats = self.self_attn(self.input_layernorm(x), cos, sin, plan, cache, step)
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
        self.embed_tokens = nn.Embedding(config.padded_vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = nn.RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_llama3_scaling)
        self.gradient_checkpointing = False  # set by the trainer (train.activation_checkpointing)
        self.post_init()

    def forward(self, input_ids, plan: AttentionPlan, position_ids=None, cache: SSACache | None = None, attention_mask=None):
        B, T = input_ids.shape
        step = None
        if cache is not None:  # positions continue each row's cached tokens (left padding skipped)
            if cache.static and cache.seen_tokens and T == 1 and attention_mask is None:
                step = cache.begin_decode()  # device-only bookkeeping: capturable in a CUDA graph
            else:
                step = cache.begin(attention_mask, B, T, input_ids.device)
            position_ids = step.positions
        elif position_ids is None and plan.cu_seqlens is not None:  # positions restart at every document
            position_ids = document_positions(plan.cu_seqlens, B, T)
        elif position_ids is None:
            position_ids = torch.arange(T, device=input_ids.device)[None].expand(B, T)
        cos, sin = self.rotary(position_ids)
        x = self.embed_tokens(input_ids)
        aligns, stats = [], []
        recompute = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        for layer in self.layers:
            if recompute:  # activation checkpointing: keep only each block's input for backward
                x, align, layer_stats = checkpoint(layer, x, cos, sin, plan, cache, step, use_reentrant=False)
            else:
                x, align, layer_stats = layer(x, cos, sin, plan, cache, step)
            if align is not None:
                aligns.append(align)
            if layer_stats is not None:
                stats.append(layer_stats)
        if cache is not None:
            cache.commit(step)
        return self.norm(x), aligns, stats


class SSAForCausalLM(SSAPreTrainedModel, GenerationMixin):
    def __init__(self, config: SSAConfig):
        # from_pretrained(path, block_count=0) sets config attributes without SSAConfig's checks.
        check_inference_settings(
            config.method, config.attention_mode, config.block_size, config.block_count, budget_required=True
        )
        super().__init__(config)
        self.model = SSAModel(config)
        # Tied embeddings reuse embed_tokens directly instead of relying on weight-tying hooks.
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.padded_vocab_size, bias=False)
        # torch.compile backend for the loss's per-chunk math (set by training's apply_compile).
        self.loss_compile_backend: str | None = None
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def get_output_embeddings(self):
        return self.lm_head

    def plan(self, attention_mode=None, block_count=None, block_size=None, output_attention_stats=False) -> AttentionPlan:
        """Decide what every layer computes in this call (docs/design.md §1.3, §1.4)."""
        cfg = self.config
        check_inference_settings(cfg.method, attention_mode, block_size, block_count)
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
        position_ids=None, output_attention_stats=False, attention_mask=None, past_key_values=None,
        use_cache=None, logits_to_keep: int = 0, cu_seqlens=None, cache=None, **kwargs,
    ):
        """Logits (and losses with `labels`) of one pass.

        KV cache: pass `use_cache=True` to get the cache (an SSACache) back, and pass it in again
        with the new ids only (any number of them: one generated token, or the next chunk of a long
        prompt or of a conversation). It may be given as `cache` or, as older transformers name it,
        `past_key_values`; the output holds it under the installed version's name (`CACHE_FIELD`).
        `model.new_cache(max_length)` makes a preallocated (static) one. `use_cache=None` builds no
        cache unless one is given, so training and evaluation passes never keep K/V copies.
        `attention_mask` may only mark left padding of the prompt. `logits_to_keep=N` computes
        logits of the last N columns.
        With `labels` the loss is computed in chunks, so the float32 logits of the whole batch never
        exist; a training-mode call with labels therefore returns `logits=None` (as Liger's fused
        loss does), while an eval-mode call returns the logits as well.

        Packed documents: `position_ids` that restart at 0 inside a row (the convention of
        transformers' flattening collator) or `cu_seqlens` (int32 boundaries over the flattened
        B * T tokens, every row start among them) make every document its own sequence in both
        attention streams; positions restart per document, and the label of a document's first
        token is ignored (nothing in its document predicts it).
        """
        # Every check runs before the cache is touched: a call that raises leaves it as it was.
        if cache is not None and past_key_values is not None and cache is not past_key_values:
            raise ValueError("pass the KV cache as either `cache` or `past_key_values`, not both")
        past_key_values = cache if cache is not None else past_key_values
        _check_input_ids(input_ids, self.config.vocab_size)
        _check_outputs_request(input_ids, labels, logits_to_keep)
        plan = self.plan(attention_mode, block_count, block_size, output_attention_stats)
        if (cu_seqlens is not None or position_ids is not None) and past_key_values is None and not use_cache:
            plan.cu_seqlens = packed_documents(input_ids.shape, position_ids, cu_seqlens)
        if plan.cu_seqlens is not None:
            # Compiled blocks: the document count varies per batch, so its dimension is symbolic
            # (one graph for all batches), and the row length bounds every document (no host read).
            torch._dynamo.maybe_mark_dynamic(plan.cu_seqlens, 0)
            plan.max_seqlen = input_ids.shape[1]
        if plan.cu_seqlens is not None and plan.want_stats:
            raise ValueError("output_attention_stats does not support packed documents (cu_seqlens or restarting position_ids)")
        if cu_seqlens is not None and (past_key_values is not None or use_cache):
            raise ValueError("cu_seqlens (packed documents) cannot be combined with a KV cache")
        cache = self._cache_for_call(plan, past_key_values, use_cache, attention_mask, position_ids)
        hidden, aligns, stats = self.model(input_ids, plan, position_ids=position_ids, cache=cache, attention_mask=attention_mask)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        vocab = self.config.vocab_size

        align_loss = torch.stack(aligns).mean() if aligns else hidden.new_zeros((), dtype=torch.float32)
        loss = ce_loss = logits = None
        if labels is not None and plan.cu_seqlens is not None:
            labels = labels.flatten().index_fill(0, plan.cu_seqlens[:-1].long(), IGNORE_INDEX).view_as(labels)
        if labels is not None:
            # The loss never materialises the logits of the whole batch (model/loss.py). Position t
            # predicts labels[t + 1]; the last has none.
            targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)
            ce_loss = linear_cross_entropy(hidden.flatten(0, 1), weight, targets.flatten(), vocab,
                                           compile_backend=self.loss_compile_backend)
            loss = ce_loss + self.config.alpha * align_loss if aligns else ce_loss
        if labels is None or not self.training:
            # Training skips the logits to save memory; evaluation callers (metrics, lm-eval
            # style scoring) expect them next to the loss, as every transformers model returns them.
            logits = F.linear(hidden, weight)[..., :vocab]  # padded vocabulary rows are never output
        return SSACausalLMOutput(
            loss=loss, logits=logits, ce_loss=ce_loss, align_loss=align_loss,
            attention_mode=plan.mode, attention_stats=stats or None,
            **{CACHE_FIELD: cache if (use_cache or past_key_values is not None) else None},
        )

    # ------------------------------------------------------------------ KV cache and generate

    def new_cache(self, max_length: int | None = None, block_size: int | None = None) -> SSACache:
        """An empty KV cache for this model: growing, or preallocated for `max_length` tokens per row
        (static: what CUDA-graph decoding in `ssa.generation` needs). `block_size` must match the
        calls that use it (default: the config's)."""
        return SSACache(self.config.num_hidden_layers, block_size or self.config.block_size,
                        value_means=self.config.method == "nsa", max_length=max_length)

    def _cache_for_call(self, plan, past_key_values, use_cache, attention_mask, position_ids):
        """The cache this call reads and extends, or None for a plain (training-style) pass."""
        # A left-padded batch runs through a throw-away cache: it stores each row without its padding.
        # Right padding needs nothing: in a causal model real tokens never see the pads after them.
        padded = attention_mask is not None and not _right_padded_or_full(attention_mask)
        if past_key_values is None and not use_cache and not padded:
            return None
        if plan.align or plan.want_stats:
            raise ValueError(
                "use_cache, past_key_values and padded attention_mask work at inference only "
                "(model.eval() or torch.no_grad(), output_attention_stats=False)"
            )
        if position_ids is not None:
            raise ValueError("position_ids cannot be combined with a KV cache or padding: positions follow each row's cached tokens")
        if past_key_values is None:
            return SSACache(self.config.num_hidden_layers, plan.block_size, value_means=self.config.method == "nsa")
        if not isinstance(past_key_values, SSACache):
            raise TypeError(f"the cache (past_key_values) must be an SSACache returned by this model, got {type(past_key_values).__name__}")
        if past_key_values.block_size != plan.block_size:
            raise ValueError(
                f"block_size {plan.block_size} differs from the cache's block_size {past_key_values.block_size}; "
                "the cached block means were built for the latter"
            )
        return past_key_values

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # generate must not create a transformers DynamicCache: the forward builds its own SSACache.
        return False

    @staticmethod
    def _reorder_cache(past_key_values, beam_idx):
        return past_key_values.reorder_cache(beam_idx)

    def prepare_inputs_for_generation(
        self, input_ids, past_key_values=None, attention_mask=None, use_cache=None, attention_mode=None,
        block_count=None, block_size=None, logits_to_keep=None, inputs_embeds=None, token_type_ids=None,
        cache=None, **kwargs,
    ):
        """Feed generate's ids that the cache has not seen; positions come from the cache.

        The per-call `attention_mode` / `block_count` / `block_size` given to `generate` reach every
        forward. generate's own `position_ids` are dropped: the model derives the same positions
        from the attention mask and the cache.
        """
        if inputs_embeds is not None:
            raise ValueError("inputs_embeds is not supported by SSAForCausalLM.generate; pass input_ids")
        # transformers 4.x fast tokenizers return all-zero token_type_ids by default; they carry no
        # information for a decoder-only model, anything else would be silently lost.
        if token_type_ids is not None and bool(token_type_ids.any()):
            raise ValueError("token_type_ids must be all zeros (SSA models have no segment embeddings)")
        past_key_values = cache if cache is not None else past_key_values
        if past_key_values is not None:
            input_ids = input_ids[:, past_key_values.get_seq_length():]
        if logits_to_keep is None:  # generate reads the last column's logits only
            logits_to_keep = 1
        return {
            "input_ids": input_ids, CACHE_FIELD: past_key_values, "attention_mask": attention_mask,
            "use_cache": use_cache, "attention_mode": attention_mode, "block_count": block_count,
            "block_size": block_size, "logits_to_keep": logits_to_keep,
        }


def _check_outputs_request(input_ids, labels, logits_to_keep) -> None:
    if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0:
        raise ValueError(f"logits_to_keep must be an int >= 0 (0 keeps all), got {logits_to_keep!r}")
    if labels is None:
        return
    if logits_to_keep:
        raise ValueError("logits_to_keep must be 0 when labels are given (the loss needs every position)")
    if tuple(labels.shape) != tuple(input_ids.shape):
        raise ValueError(f"labels must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(labels.shape)}")


def packed_documents(shape, position_ids, cu_seqlens):
    """Document boundaries over the flattened [B * T] tokens, or None for one document per row.

    From `cu_seqlens` (checked: every row start must be a boundary) or from `position_ids` that
    restart at 0 inside a row."""
    B, T = shape
    if cu_seqlens is not None:
        if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1 or cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise TypeError("cu_seqlens must be an int32 tensor [num_docs + 1] of boundaries over the B * T tokens")
        rows = torch.arange(0, B * T + 1, T, device=cu_seqlens.device)
        if not bool(torch.isin(rows, cu_seqlens).all()):
            raise ValueError(f"cu_seqlens must contain every row boundary (multiples of seq_len={T} up to {B * T})")
        return cu_seqlens.to(torch.int32)
    if position_ids.shape != (B, T):
        raise ValueError(f"position_ids must have shape [batch={B}, seq={T}], got {tuple(position_ids.shape)}")
    starts = position_ids == 0
    starts[:, 0] = True
    if bool(starts[:, 1:].any()):
        flat = starts.flatten().nonzero().flatten()
        return torch.cat([flat, flat.new_tensor([B * T])]).to(torch.int32)
    return None


def document_positions(cu_seqlens: torch.Tensor, B: int, T: int) -> torch.Tensor:
    """Position of every token inside its document, [B, T] (the boundaries are over B * T tokens)."""
    t = torch.arange(B * T, device=cu_seqlens.device)
    doc = torch.searchsorted(cu_seqlens.long(), t, right=True) - 1
    return (t - cu_seqlens.long()[doc]).view(B, T)


# transformers renamed the cache argument and output field from `past_key_values` to `cache` (5.24);
# using the installed version's name keeps its deprecation warning quiet on every call.
CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def _right_padded_or_full(attention_mask) -> bool:
    """Each row is ones followed by zeros (possibly none)."""
    mask = attention_mask.bool()
    ones = mask.sum(1, keepdim=True)
    return bool((mask == (torch.arange(mask.shape[1], device=mask.device)[None, :] < ones)).all())


def _check_input_ids(input_ids, vocab_size: int) -> None:
    """[batch, seq] integer ids inside the vocabulary: out-of-range ids would index past the
    embedding (an opaque IndexError on CPU, a device-side assert on CUDA)."""
    if not torch.is_tensor(input_ids) or input_ids.dim() != 2:
        shape = tuple(input_ids.shape) if torch.is_tensor(input_ids) else type(input_ids).__name__
        raise ValueError(f"input_ids must be a 2-D tensor [batch, seq] of token ids, got {shape}")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    if input_ids.numel() == 0 or torch.compiler.is_compiling():
        return
    # A CUDA-graph capture cannot read values back (ssa.generation feeds the graph its own argmax).
    if input_ids.is_cuda and torch.cuda.is_current_stream_capturing():
        return
    lo, hi = (int(v) for v in torch.aminmax(input_ids))
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"input_ids must lie in [0, vocab_size={vocab_size}), got ids from {lo} to {hi}")
