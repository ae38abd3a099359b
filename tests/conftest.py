"""Test-session setup shared by every test module."""

import os
from pathlib import Path

import torch

# Without a GPU, Triton kernels run in the interpreter. The variable must be set before the first
# `import triton` of the session (any test may trigger one through the op dispatch), so set it here.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Tests that need real data (GPT-2 tokenizer files, Gutenberg, evaluation tasks) find it through
# SSA_DATA_DIR. When it is not set, use a `shared/data` folder beside the checkout, where CI puts it;
# tests that need the data skip when neither exists.
_BESIDE_CHECKOUT = Path(__file__).resolve().parents[2] / "shared" / "data"
if not os.environ.get("SSA_DATA_DIR") and _BESIDE_CHECKOUT.is_dir():
    os.environ["SSA_DATA_DIR"] = str(_BESIDE_CHECKOUT)
