"""Checkpoints, `latest` and evaluation results get the modes the user's umask allows.

The atomic writers go through tempfile, which creates 0600 files and 0700 directories; renamed into
place unchanged, a checkpoint would be unreadable to the rest of a team.
"""

from __future__ import annotations

import os
import stat

import pytest

from ssa.evaluation.results import write_result
from ssa.model import SSAConfig, SSAForCausalLM
from ssa.training import checkpoint as ckpt
from ssa.training.tokenizer import byte_tokenizer


@pytest.fixture
def umask():
    """Set a umask for one test and put the previous one back afterwards."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_checkpoint_and_results_follow_the_umask(tmp_path, umask, mask):
    umask(mask)
    model = SSAForCausalLM(SSAConfig(vocab_size=257, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32))
    step_dir = ckpt.save_checkpoint(tmp_path, 1, model, byte_tokenizer(), {"step": 1}, keep=2)
    assert mode(step_dir) == 0o777 & ~mask
    files = [p for p in step_dir.iterdir()] + [tmp_path / "checkpoints" / "latest"]
    assert {p.name for p in files} >= {"model.safetensors", "config.json", "training_state.pt", "latest"}
    for p in files:
        assert mode(p) == 0o666 & ~mask, p.name
    result = write_result(tmp_path / "eval" / "perplexity.json", "perplexity", {}, {}, {"x": 1.0})
    assert mode(result) == 0o666 & ~mask


def test_exports_and_llama_conversions_follow_the_umask(tmp_path, umask):
    from transformers import LlamaConfig, LlamaForCausalLM

    from ssa.cli import main

    mask = 0o027
    umask(mask)
    llama = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(llama)
    assert main(["convert", "--from-llama", str(llama), "--out", str(tmp_path / "ssa-llama")]) == 0
    step = tmp_path / "run" / "checkpoints" / "step_00000001"
    SSAForCausalLM(SSAConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=32)).save_pretrained(step)  # weights 0600, as safetensors writes them
    (step.parent / "latest").write_text("step_00000001\n")
    assert main(["convert", "--from-run", str(tmp_path / "run"), "--out", str(tmp_path / "export")]) == 0
    for out in (tmp_path / "ssa-llama", tmp_path / "export"):
        files = sorted(out.iterdir())
        assert "model.safetensors" in {p.name for p in files}
        for p in files:
            assert mode(p) == 0o666 & ~mask, p
