"""Test-session setup shared by every test module."""

import os

import torch

# Without a GPU, Triton kernels run in the interpreter. The variable must be set before the first
# `import triton` of the session (any test may trigger one through the op dispatch), so set it here.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
