"""SSA: Sparse Sparse Attention -- trainable block-sparse attention aligned with full attention.

`import ssa` registers the "ssa" model type with transformers' Auto classes (through `ssa.model`),
so `AutoModelForCausalLM.from_pretrained(path)` loads SSA checkpoints without trust_remote_code.
"""

__version__ = "0.1.0"

from . import model  # noqa: E402,F401  (registration side effect)
