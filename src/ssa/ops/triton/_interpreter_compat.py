"""Keep Triton's CPU interpreter (TRITON_INTERPRET=1) working and usable for our kernels.

Applied only when the interpreter is in use; compiled GPU kernels are untouched.

1. The interpreter holds scalars as 1-element arrays and converts them with `int(array)`, which NumPy
   2.4 turned into a TypeError, so any loop whose bound depends on a program id fails
   (triton-lang/triton#9171). We wrap its tensor patching so `__index__` takes the element explicitly.
2. `tl.sort` runs under the interpreter as its bitonic network of tiny NumPy reductions, about a
   second per call; the selection kernel sorts twice per tile. We swap in `numpy.sort` along the
   same axis, which gives the identical result (a sort is a sort; the keys are unique integers).
   The native GPU run of the same tests exercises the real `tl.sort`.
"""

from __future__ import annotations

from ._common import interpreting


def _unwrap(x):
    return getattr(x, "value", x)


def apply() -> None:
    if not interpreting():
        return
    try:
        import numpy as np
        import triton.language as tl
        from triton.runtime import interpreter
    except ImportError:
        return
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_ssa_compat", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched._ssa_compat = True
    interpreter._patch_lang_tensor = patched

    def numpy_sort(x, dim=None, descending=False, **_):
        data = x.handle.data
        axis = -1 if _unwrap(dim) is None else int(_unwrap(dim))
        out = np.sort(data, axis=axis, kind="stable")
        if _unwrap(descending):
            out = np.flip(out, axis=axis)
        return tl.core.tensor(interpreter.TensorHandle(np.ascontiguousarray(out), x.handle.dtype), x.type)

    tl.sort = numpy_sort
