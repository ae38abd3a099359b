"""SSA: Sparse Sparse Attention -- trainable block-sparse attention aligned with full attention.

`import ssa` is cheap: torch and transformers load only when something needs them, so `ssa --help`
and argument errors answer at once. Subpackages (`ssa.ops`, `ssa.model`, ...) load on first use.

`import ssa` still registers the "ssa" model type with transformers' Auto classes, so
`AutoModelForCausalLM.from_pretrained(path)` loads SSA checkpoints without trust_remote_code: the
registration (an import of `ssa.model`) runs as soon as transformers itself is imported, or at once
when it already is.
"""

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

_SUBPACKAGES = ("commands", "evaluation", "model", "ops", "training")


def __getattr__(name):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _register_auto_classes() -> None:
    if "ssa.model" not in sys.modules:  # ssa.model registers itself on import
        importlib.import_module("ssa.model")


class _RegisterAfterTransformers(importlib.abc.MetaPathFinder):
    """Runs `_register_auto_classes` right after the `transformers` package has been imported.

    It stays installed until then: a mere `importlib.util.find_spec("transformers")` (an
    availability check) gets a spec whose loader is never run, and the real import comes later.
    """

    def find_spec(self, fullname, path, target=None):
        if fullname != "transformers":
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            _register_auto_classes()

        spec.loader.exec_module = exec_module
        return spec


if "transformers" in sys.modules:
    _register_auto_classes()
elif not any(isinstance(f, _RegisterAfterTransformers) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterAfterTransformers())
