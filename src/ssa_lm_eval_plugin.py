"""Makes the plain `lm_eval --model ssa ...` command find the SSA model.

lm-eval 0.4.x looks `--model` up only in its own registry, which it fills by importing
`lm_eval.models`. The package installs `ssa_lm_eval_plugin.pth`, which imports this module at
interpreter start: it only adds an import hook (no torch, no lm_eval import), and when
`lm_eval.models` is later imported, it registers "ssa" as a lazy "module:Class" entry, so the
adapter (and torch) load only when the model is actually used.
"""

import importlib.abc
import sys

_TARGET = "lm_eval.models"
_ADAPTER = "ssa.evaluation.lm_eval_adapter:SSALM"


def _register(registry) -> None:
    try:
        registry.register("ssa", target=_ADAPTER)
    except (ValueError, TypeError, AttributeError):  # already registered (adapter imported first) or old lm-eval
        pass


class _RegisterAfterImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname != _TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                break
        else:
            return None
        run_module = spec.loader.exec_module

        def exec_module(module):
            run_module(module)
            from lm_eval.api.registry import model_registry

            _register(model_registry)

        spec.loader.exec_module = exec_module
        return spec


def install() -> None:
    if not any(isinstance(f, _RegisterAfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterImport())


install()
