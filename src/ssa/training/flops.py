"""Model FLOPs per trained token and model-FLOPs utilisation (MFU).

Counted per token of a row of T tokens (matmul FLOPs only, 2 per multiply-add; a training step is
forward + backward = 3x forward, the usual convention):

  dense      6 * N, N = matmul parameters: every Linear of the layers plus the LM head
             (padded vocab x hidden, counted even when tied to the embedding; the lookup is free)
  attention  per layer, forward, a query attending to c keys costs 4 * HQ * D * c (QK^T and PV);
             training counts 3x that.
             full    causal: c averaged over the row = (T + 1) / 2
             sparse  the query's own block up to itself, plus up to block_count - 1 earlier whole
                     blocks: exactly what the kernel computes; selection adds 2 * HQ * D per visible
                     block (scores against block means), forward only (indices carry no gradient)
             ssa     training runs both streams, each with a gradient (the alignment trains the
                     one that does not feed the residual): full + sparse + selection
             moba    sparse + selection
             nsa     sparse + selection + compressed (all earlier whole blocks) + sliding window
MFU = tokens/s * FLOPs per token / (devices * peak bf16 FLOP/s of one device).
"""

from __future__ import annotations

# Dense bf16 tensor-core peak (no sparsity) per device, FLOP/s, matched against the device name.
PEAK_BF16 = (
    ("H200", 989e12), ("H100 SXM", 989e12), ("H100 NVL", 835e12), ("H100 PCIe", 756e12), ("H100", 989e12),
    ("GH200", 989e12), ("B200", 2250e12), ("A100", 312e12), ("L40S", 362e12), ("L4", 121e12),
    ("A10G", 70e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12),
)


def peak_flops(device_name: str | None, override_tflops: float | None = None) -> float | None:
    """Peak bf16 FLOP/s of one device: the override (in TFLOP/s) or the table; None if unknown."""
    if override_tflops is not None:
        if override_tflops <= 0:
            raise ValueError(f"peak TFLOP/s must be > 0, got {override_tflops}")
        return float(override_tflops) * 1e12
    if not device_name:
        return None
    for key, value in PEAK_BF16:
        if key.lower() in device_name.lower():
            return value
    return None


def matmul_params(config) -> int:
    """N of the 6N term: Linear weights of every layer plus the LM head (see module docstring)."""
    h, hq, hk, d = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim
    gates = 3 if config.method == "nsa" else 1
    attn = h * hq * d * 2 + h * hk * d * 2 + h * hq * gates  # q, o; k, v; gate
    mlp = 3 * h * config.intermediate_size
    vocab = getattr(config, "padded_vocab_size", config.vocab_size)  # the head's matmul runs over all rows
    return config.num_hidden_layers * (attn + mlp) + config.hidden_size * vocab


def _mean_sparse_keys(T: int, s: int, n: int) -> float:
    """Keys per query of block-sparse attention, averaged over the row's positions."""
    total = 0
    for t in range(T):
        total += t % s + 1 + s * (min(n, t // s + 1) - 1)
    return total / T


def _mean_visible_blocks(T: int, s: int, include_current: bool = True) -> float:
    return sum(t // s + (1 if include_current else 0) for t in range(T)) / T


def attention_keys_per_query(config, method: str, T: int) -> tuple[float, float]:
    """(mean keys attended with a gradient, mean blocks scored by the selection) per query."""
    s, n = config.block_size, config.block_count
    full = (T + 1) / 2
    sparse = _mean_sparse_keys(T, s, n)
    blocks = _mean_visible_blocks(T, s)
    if method == "full":
        return full, 0.0
    if method == "moba":
        return sparse, blocks
    if method == "ssa":
        return full + sparse, blocks
    if method == "nsa":
        window = sum(min(t + 1, config.nsa_window) for t in range(T)) / T
        compressed = _mean_visible_blocks(T, s, include_current=False)
        return sparse + window + compressed, blocks
    raise ValueError(f"method must be one of full, moba, nsa, ssa; got {method!r}")


def flops_per_token(config, seq_len: int, method: str | None = None) -> float:
    """Training FLOPs (forward + backward) per token at row length `seq_len`."""
    method = method or config.method
    hq, d, L = config.num_attention_heads, config.head_dim, config.num_hidden_layers
    keys, blocks = attention_keys_per_query(config, method, seq_len)
    attention = L * (3 * 4 * hq * d * keys + 2 * hq * d * blocks)
    return 6 * matmul_params(config) + attention


def mfu(tokens_per_s: float, flops_token: float, peak: float | None, devices: int = 1) -> float | None:
    """Model-FLOPs utilisation in [0, 1] (None when the peak is unknown)."""
    if not peak:
        return None
    return tokens_per_s * flops_token / (devices * peak)
