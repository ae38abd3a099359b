"""`ssa --help` and argument errors answer without loading torch; `import ssa` still registers the Auto classes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
HEAVY = ("torch", "transformers", "numpy", "matplotlib", "tokenizers", "safetensors", "triton")


def run_python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("argv,rc,stream,text", [
    (["--help"], 0, "out", "train"),
    ([], 2, "out", "COMMAND"),
    (["bogus"], 2, "err", "invalid choice: 'bogus'"),
    (["train", "--help"], 0, "out", "--preset"),
    (["eval", "runs/x", "--no-such-flag"], 2, "err", "unrecognized arguments: --no-such-flag"),
    (["eval"], 2, "err", "required: checkpoint"),
])
def test_help_and_argument_errors_load_no_heavy_module(argv, rc, stream, text):
    # Exactly what `python -m ssa.cli ARGS` runs, plus a look at sys.modules afterwards.
    code = f"""
import json, runpy, sys
sys.argv = ["ssa"] + {argv!r}
try:
    runpy.run_module("ssa.cli", run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as exit:
    code = exit.code
print(json.dumps({{"rc": code, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}), file=sys.stderr)
"""
    proc = run_python(code)
    result = json.loads(proc.stderr.strip().splitlines()[-1])
    assert result == {"rc": rc, "heavy": []}, proc.stderr
    assert text in (proc.stdout if stream == "out" else proc.stderr)


def test_import_ssa_registers_the_auto_classes_once_transformers_loads():
    proc = run_python("""
import importlib.util, sys
import ssa
assert "torch" not in sys.modules and "transformers" not in sys.modules
assert importlib.util.find_spec("transformers") is not None   # an availability check imports nothing
assert "transformers" not in sys.modules
from transformers import AutoConfig, AutoModelForCausalLM
config = AutoConfig.for_model("ssa", hidden_size=16, num_hidden_layers=1, num_attention_heads=2, vocab_size=32)
model = AutoModelForCausalLM.from_config(config)
print(type(config).__name__, type(model).__name__, ssa.ops.__name__)
""")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["SSAConfig", "SSAForCausalLM", "ssa.ops"]
