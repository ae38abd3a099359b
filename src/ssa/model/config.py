"""SSAConfig: a Llama-style decoder with a dual-mode (full / block-sparse) gated attention layer."""

from __future__ import annotations

import math

from transformers import PretrainedConfig

METHODS = ("full", "moba", "nsa", "ssa")
METHOD_NAMES = {"full": "FullAttn", "moba": "MoBA", "nsa": "NSA", "ssa": "SSA"}  # as the paper writes them
ATTENTION_MODES = ("full", "sparse")
ALIGN_DIRECTIONS = ("both", "sparsity", "commitment", "none")
ALIGN_LOSSES = ("smooth_l1", "l2")
ALIGN_ON = ("gated", "pre_gate")
BACKENDS = ("auto", "torch", "triton")

# What each method runs at inference when the caller does not say (docs/design.md §1.4).
DEFAULT_INFERENCE_MODE = {"full": "full", "moba": "sparse", "nsa": "sparse", "ssa": "sparse"}


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _finite_number(name: str, value, *, low: float, low_open: bool = False, high: float | None = None) -> None:
    """A real number (not a bool, string or NaN) in [low, high], or (low, high] with `low_open`."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and (high is None or value <= high)
    if not ok:
        bounds = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high is not None else "")
        raise ValueError(f"{name} must be a finite number {bounds}, got {value!r}")


class SSAConfig(PretrainedConfig):
    model_type = "ssa"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    def __init__(
        self,
        method: str = "ssa",
        vocab_size: int = 50257,
        pad_vocab_multiple: int = 1,
        hidden_size: int = 1024,
        intermediate_size: int | None = None,
        num_hidden_layers: int = 24,
        num_attention_heads: int = 16,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        max_position_embeddings: int = 8192,
        rope_theta: float = 500000.0,
        rope_llama3_scaling: dict | None = None,
        rms_norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        tie_word_embeddings: bool = True,
        # sparse attention (docs/design.md §1.1)
        block_size: int = 16,
        block_count: int = 16,
        nsa_window: int = 128,
        # SSA objective (docs/design.md §1.3)
        alpha: float = 10.0,
        full_ratio: float = 0.5,
        align_direction: str = "both",
        align_loss: str = "smooth_l1",
        align_on: str = "gated",
        # inference
        attention_mode: str | None = None,
        backend: str = "auto",
        use_cache: bool = True,
        bos_token_id: int | None = None,
        eos_token_id: int | None = None,
        pad_token_id: int | None = None,
        **kwargs,
    ):
        _choice("method", method, METHODS)
        for name, value in [
            ("vocab_size", vocab_size), ("hidden_size", hidden_size), ("num_hidden_layers", num_hidden_layers),
            ("num_attention_heads", num_attention_heads), ("block_size", block_size),
            ("block_count", block_count), ("nsa_window", nsa_window),
            ("max_position_embeddings", max_position_embeddings), ("pad_vocab_multiple", pad_vocab_multiple),
        ]:
            _positive_int(name, value)
        num_key_value_heads = num_key_value_heads or num_attention_heads
        _positive_int("num_key_value_heads", num_key_value_heads)
        if num_attention_heads % num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({num_attention_heads}) must be a multiple of num_key_value_heads ({num_key_value_heads})"
            )
        if head_dim is not None:
            _positive_int("head_dim", head_dim)
        else:
            if hidden_size % num_attention_heads:
                raise ValueError(f"hidden_size ({hidden_size}) must be a multiple of num_attention_heads ({num_attention_heads}) unless head_dim is given")
            head_dim = hidden_size // num_attention_heads
        if intermediate_size is None:  # SwiGLU's usual 8/3 * hidden, rounded up to a multiple of 64
            intermediate_size = -(-(8 * hidden_size // 3) // 64) * 64
        _positive_int("intermediate_size", intermediate_size)
        _finite_number("full_ratio", full_ratio, low=0.0, high=1.0)
        _finite_number("alpha", alpha, low=0.0)
        _finite_number("rope_theta", rope_theta, low=0.0, low_open=True)
        _finite_number("rms_norm_eps", rms_norm_eps, low=0.0, low_open=True)
        _finite_number("initializer_range", initializer_range, low=0.0)
        _choice("align_direction", align_direction, ALIGN_DIRECTIONS)
        _choice("align_loss", align_loss, ALIGN_LOSSES)
        _choice("align_on", align_on, ALIGN_ON)
        _choice("backend", backend, BACKENDS)
        if attention_mode is not None:
            _choice("attention_mode", attention_mode, ATTENTION_MODES)
        if rope_llama3_scaling is not None:
            _check_rope_scaling(rope_llama3_scaling)

        self.method = method
        self.vocab_size = vocab_size
        # Embedding / head rows are padded up to a multiple of this (a matmul N that is a multiple
        # of 64 runs faster); the padded ids are never produced: logits and the loss drop them.
        self.pad_vocab_multiple = pad_vocab_multiple
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.head_dim = head_dim
        self.max_position_embeddings = max_position_embeddings
        self.rope_theta = float(rope_theta)
        # Not named `rope_scaling`: transformers reserves that name for its own RoPE machinery.
        self.rope_llama3_scaling = rope_llama3_scaling
        self.rms_norm_eps = rms_norm_eps
        self.initializer_range = initializer_range
        self.block_size = block_size
        self.block_count = block_count
        self.nsa_window = nsa_window
        self.alpha = float(alpha)
        self.full_ratio = float(full_ratio)
        self.align_direction = align_direction
        self.align_loss = align_loss
        self.align_on = align_on
        self.attention_mode = attention_mode
        self.backend = backend
        self.use_cache = use_cache
        super().__init__(
            tie_word_embeddings=tie_word_embeddings, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
            pad_token_id=pad_token_id, **kwargs,
        )

    @property
    def padded_vocab_size(self) -> int:
        """Rows of the embedding and the LM head: vocab_size rounded up to pad_vocab_multiple."""
        m = getattr(self, "pad_vocab_multiple", 1) or 1
        return -(-self.vocab_size // m) * m

    @property
    def inference_mode(self) -> str:
        """The attention mode used at inference when a call does not choose one."""
        return self.attention_mode or DEFAULT_INFERENCE_MODE[self.method]


def check_inference_settings(method: str, attention_mode=None, block_size=None, block_count=None,
                             budget_required: bool = False) -> None:
    """The inference choices a call or `from_pretrained(..., **overrides)` may change.

    None means "not given" (use the config's), except for the budget of a config itself
    (`budget_required=True`), which must be set.
    """
    if attention_mode is not None:
        _choice("attention_mode", attention_mode, ATTENTION_MODES)
    if method == "nsa" and attention_mode == "full":
        raise ValueError("method 'nsa' has no full-attention stream: attention_mode must be 'sparse' or None")
    for name, value in (("block_size", block_size), ("block_count", block_count)):
        if value is not None or budget_required:
            _positive_int(name, value)


def _check_rope_scaling(rope_scaling) -> None:
    if not isinstance(rope_scaling, dict):
        raise ValueError(f"rope_llama3_scaling must be a dict or None, got {type(rope_scaling).__name__}")
    kind = rope_scaling.get("rope_type", rope_scaling.get("type"))
    if kind != "llama3":
        raise ValueError(f"rope_llama3_scaling rope_type must be 'llama3', got {kind!r}")
    for key in ("factor", "original_max_position_embeddings"):
        if key not in rope_scaling:
            raise ValueError(f"rope_llama3_scaling needs the key {key!r} (llama3 scaling)")
