"""Small pieces shared by the kernels."""

from __future__ import annotations

import math
import os

import triton
import triton.language as tl

LOG2E = 1.4426950408889634

# Triton's CPU interpreter multiplies bfloat16 tiles wrongly (it reads them as raw 16-bit integers),
# so under the interpreter the tensor-core products take float32 copies. Products of two half
# precision numbers are exact in float32, so this changes nothing but the accumulation order.
INTERPRET = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"))


@triton.jit
def mma(a, b, acc, IEEE: tl.constexpr):
    """acc + a @ b with float32 accumulation; IEEE keeps float32 inputs out of TF32."""
    if INTERPRET:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    elif IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


def next_pow2(x: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(1, x))))


def interpreting() -> bool:
    return bool(INTERPRET)
