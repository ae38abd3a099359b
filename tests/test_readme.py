"""The README's Python snippets run as written, on CPU.

Only their sizes are shrunk (sequence length, width, depth, vocabulary) to keep CI fast; every
shrunk literal must be found, so a README edit that changes them fails here rather than going
untested. The Auto-class snippet loads `tiny-ssa-hf`, which the README's `ssa convert --from-run`
line writes; a small randomly initialised model and the byte tokenizer stand in for that export.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def snippet(marker: str) -> str:
    found = [s for s in python_snippets() if marker in s]
    assert len(found) == 1, f"one README python snippet should contain {marker!r}, found {len(found)}"
    return found[0]


def shrink(code: str, sizes: dict[str, str]) -> str:
    for old, new in sizes.items():
        assert old in code, f"README snippet no longer contains {old!r}: update this test's sizes"
        code = code.replace(old, new)
    return code


def run(code: str) -> dict:
    namespace: dict = {"__name__": "__readme__"}
    exec(compile(code, str(README), "exec"), namespace)
    return namespace


def test_every_snippet_is_covered():
    markers = ("from ssa.ops import", "from ssa.model import SSAConfig", "AutoModelForCausalLM.from_pretrained",
               "from ssa.generation import greedy_generate")
    assert all(any(m in s for m in markers) for s in python_snippets())


def test_ops_snippet():
    ns = run(shrink(snippet("from ssa.ops import"), {"(1, 4096,": "(1, 320,"}))
    q, idx, o, o_full = ns["q"], ns["idx"], ns["o"], ns["o_full"]
    assert idx.shape == (1, 320, 1, 16) and idx.dtype == torch.int32
    assert o.shape == o_full.shape == q.shape
    # Queries whose history fits in the 16-block budget see every key: sparse equals full there.
    torch.testing.assert_close(o[:, :256].float(), o_full[:, :256].float(), atol=2e-2, rtol=2e-2)
    assert not torch.allclose(o[:, 256:].float(), o_full[:, 256:].float(), atol=2e-2, rtol=2e-2)


def test_model_snippet():
    torch.manual_seed(0)
    ns = run(shrink(snippet("from ssa.model import SSAConfig"), {
        "vocab_size=50257": "vocab_size=300", "hidden_size=512": "hidden_size=64",
        "num_hidden_layers=8": "num_hidden_layers=2", "(1, 512)": "(1, 96)"}))
    out, ids = ns["out"], ns["input_ids"]
    assert out.logits.shape == (*ids.shape, ns["cfg"].vocab_size)
    assert torch.isfinite(out.logits).all()


def test_auto_class_snippet(tmp_path, monkeypatch, capsys):
    from ssa.model import SSAConfig, SSAForCausalLM
    from ssa.training.tokenizer import byte_tokenizer

    monkeypatch.chdir(tmp_path)
    SSAForCausalLM(SSAConfig(vocab_size=257, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             block_size=4, block_count=2)).save_pretrained("tiny-ssa-hf")
    byte_tokenizer().save_pretrained("tiny-ssa-hf")
    ns = run(snippet("AutoModelForCausalLM.from_pretrained"))
    assert ns["out"].shape == (1, ns["ids"].shape[1] + 40)
    assert capsys.readouterr().out.startswith("The code for")


def test_fast_generation_snippet(tmp_path, monkeypatch):
    # The GPU snippet continues the Auto-class snippet (same `model` and `ids`); on CPU it runs
    # without the device move, and its greedy tokens must equal transformers' greedy `generate`.
    from ssa.model import SSAConfig, SSAForCausalLM
    from ssa.training.tokenizer import byte_tokenizer

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    SSAForCausalLM(SSAConfig(vocab_size=257, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             block_size=4, block_count=2)).save_pretrained("tiny-ssa-hf")
    byte_tokenizer().save_pretrained("tiny-ssa-hf")
    ns = run(snippet("AutoModelForCausalLM.from_pretrained").replace("print(", "len("))
    code = shrink(snippet("from ssa.generation import greedy_generate"), {
        "model = model.cuda().bfloat16()": "model = model", "ids.cuda()": "ids", "max_new_tokens=256": "max_new_tokens=24"})
    exec(compile(code, str(README), "exec"), ns)
    model, ids, out = ns["model"], ns["ids"], ns["out"]
    want = model.generate(ids, max_new_tokens=24, do_sample=False, attention_mode="sparse", block_count=16)
    assert torch.equal(out, want)
