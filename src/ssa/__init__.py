"""SSA: Sparse Sparse Attention -- trainable block-sparse attention aligned with full attention."""

__version__ = "0.1.0"
