"""Shared helpers for the evaluation tests: a tiny untrained run directory built in a few ms."""

import json
from pathlib import Path

import pytest
import torch

TINY = dict(vocab_size=257, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            block_size=8, block_count=2, max_position_embeddings=64, nsa_window=16)


def make_run(root: Path, method: str = "ssa", seq_len: int = 64, seed: int = 0, **overrides) -> Path:
    """RUN_DIR with train_config.json, metrics.jsonl and one checkpoint, as `ssa train` writes them."""
    from ssa.model import SSAConfig, SSAForCausalLM
    from ssa.training.checkpoint import save_checkpoint
    from ssa.training.tokenizer import byte_tokenizer

    torch.manual_seed(seed)
    cfg = SSAConfig(method=method, eos_token_id=256, bos_token_id=256, pad_token_id=256, **{**TINY, **overrides})
    model = SSAForCausalLM(cfg).eval()
    run = Path(root) / f"run-{method}"
    run.mkdir(parents=True, exist_ok=True)
    text = "The quick brown fox jumps over the lazy dog. " * 40
    (run / "val.txt").write_text(text)
    (run / "train_config.json").write_text(json.dumps({
        "method": method, "preset": "test",
        "model": TINY, "train": {"seed": 0, "max_steps": 2},
        "data": {"source": str(run / "val.txt"), "val_source": str(run / "val.txt"), "tokenizer": "bytes",
                 "seq_len": seq_len},
    }))
    with open(run / "metrics.jsonl", "w") as fh:
        for step in (1, 2):
            fh.write(json.dumps({"step": step, "loss": 5.0 - step, "ce": 5.0 - step, "align": 0.1}) + "\n")
    save_checkpoint(run, 2, model, byte_tokenizer(), {"step": 2, "optimizer": {}, "rng": {}, "data": {}})
    return run


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {m: make_run(root, m) for m in ("full", "moba", "nsa", "ssa")}


def test_tiny_run_loads(tiny_runs):
    from ssa.evaluation.loading import load

    loaded = load(tiny_runs["ssa"])
    assert loaded.train_len == 64
    assert loaded.run_dir == tiny_runs["ssa"]
    assert loaded.eval_dir == tiny_runs["ssa"] / "eval"
    assert loaded.modes == ("full", "sparse")
    assert load(tiny_runs["nsa"]).modes == ("sparse",)


class FakeOutput:
    def __init__(self, logits):
        self.logits = logits


class FakeConfig:
    method = "full"
    block_size = 8
    block_count = 2
    inference_mode = "full"
    vocab_size = 257


class BigramModel(torch.nn.Module):
    """logits[t] = table[ids[t]]: log-likelihoods are computable by hand."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table, requires_grad=False)
        self.config = FakeConfig()
        self.calls = []

    def forward(self, input_ids, attention_mode=None, block_count=None, block_size=None, **kw):
        self.calls.append((attention_mode, block_count, tuple(input_ids.shape)))
        return FakeOutput(self.table[input_ids])


class CopyModel(torch.nn.Module):
    """An induction oracle: at the last `k` positions, predict the token that followed the longest
    earlier match of the current suffix (a perfect copier, for retrieval tests)."""

    def __init__(self, vocab: int = 257, k: int = 8):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
        self.config = FakeConfig()
        self.vocab, self.k = vocab, k

    def forward(self, input_ids, **kw):
        B, T = input_ids.shape
        logits = torch.zeros(B, T, self.vocab)
        for b in range(B):
            ids = input_ids[b].tolist()
            for t in range(max(0, T - self.k), T):
                best, nxt = 0, None
                for j in range(t):
                    n = 0
                    while n <= j and ids[j - n] == ids[t - n] and n < 64:
                        n += 1
                    if n > best:
                        best, nxt = n, ids[j + 1]
                if nxt is not None:
                    logits[b, t, nxt] = 20.0
        return FakeOutput(logits)
