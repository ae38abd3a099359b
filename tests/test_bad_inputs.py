"""Bad input through the ops, the model and every `ssa` command: one line that names the argument,
never a traceback. CLI cases run in-process through `ssa.cli.main` (argparse's own errors exit
through SystemExit with the message on the last line); two run as real subprocesses to show that
no traceback reaches the user."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ssa import ops
from ssa.cli import main
from ssa.model import SSAConfig, SSAForCausalLM
from ssa.training import trainer as T
from test_training import micro_config

TINY = ["--preset", "tiny", "--no-progress", "--set", "train.device=cpu"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A one-step micro run: a real checkpoint for eval / generate / convert / report."""
    out = tmp_path_factory.mktemp("bad-inputs") / "run"
    T.train(micro_config("ssa", max_steps=1, save_every=1, eval_every=1), out, progress=False)
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    (root / "a_file").write_text("x")
    (root / "empty_data").mkdir()
    (root / "empty_run").mkdir()
    return root


# (id, argv with {run} / {files} placeholders, words the one line must contain)
CLI_CASES = [
    # train: the model section is validated before any data is read
    ("train-head-dim-0", ["train", *TINY, "model.head_dim=0"], ["model.head_dim", ">= 1"]),
    ("train-alpha-word", ["train", *TINY, "model.alpha=ten"], ["model.alpha", "finite number"]),
    ("train-alpha-nan", ["train", *TINY, "model.alpha=NaN"], ["model.alpha", "finite number"]),
    ("train-rope-theta-0", ["train", *TINY, "model.rope_theta=0"], ["model.rope_theta", "> 0"]),
    ("train-rope-theta-neg", ["train", *TINY, "model.rope_theta=-5"], ["model.rope_theta", "> 0"]),
    ("train-seq-past-positions", ["train", *TINY, "data.seq_len=1024"], ["data.seq_len", "max_position_embeddings"]),
    ("train-block-past-seq", ["train", *TINY, "model.block_size=1024"], ["model.block_size", "data.seq_len"]),
    ("train-kv-heads", ["train", *TINY, "model.num_key_value_heads=3"], ["num_key_value_heads", "multiple"]),
    ("train-full-ratio", ["train", *TINY, "model.full_ratio=2"], ["model.full_ratio", "<= 1"]),
    ("train-block-count-0", ["train", *TINY, "model.block_count=0"], ["model.block_count", ">= 1"]),
    ("train-hidden-word", ["train", *TINY, "model.hidden_size=abc"], ["model.hidden_size"]),
    ("train-backend", ["train", *TINY, "model.backend=cuda"], ["model.backend", "triton"]),
    ("train-on-nonfinite", ["train", *TINY, "train.on_nonfinite=maybe"], ["train.on_nonfinite", "skip"]),
    ("train-lr-negative", ["train", *TINY, "train.lr=-1"], ["train.lr"]),
    ("train-dtype", ["train", *TINY, "train.dtype=float64"], ["train.dtype", "bfloat16"]),
    ("train-seq-len-1", ["train", *TINY, "data.seq_len=1"], ["data.seq_len", ">= 2"]),
    ("train-out-under-file", ["train", *TINY, "--out", "{files}/a_file/run"], ["--out", "is a file"]),
    ("train-out-is-file", ["train", *TINY, "--out", "{files}/a_file"], ["--out", "is a file"]),
    ("train-resume-no-out", ["train", "--resume"], ["--resume", "--out"]),
    ("train-resume-model-change", ["train", "--resume", "--out", "{run}", "--set", "model.hidden_size=256"],
     ["--resume", "model.hidden_size"]),
    # eval
    ("eval-seq-len-1", ["eval", "{run}", "--seq-len", "1"], ["--seq-len", ">= 2"]),
    ("eval-long-data-missing", ["eval", "{run}", "--extrapolation", "--long-data", "{files}/none.jsonl"],
     ["--long-data", "none.jsonl"]),
    ("eval-all-without-long-data", ["eval", "{run}", "--all", "--tasks-dir", "{files}/empty_data"], ["--all", "--long-data"]),
    ("eval-lengths-too-short", ["eval", "{run}", "--extrapolation", "--long-data", "val", "--lengths", "0.01,1"],
     ["--lengths", "[0.01]"]),
    ("eval-device-cuda", ["eval", "{run}", "--device", "cuda"], ["--device", "CUDA"]),
    ("eval-device-word", ["eval", "{run}", "--device", "tpu"], ["--device", "cpu"]),
    ("eval-dtype", ["eval", "{run}", "--dtype", "float64"], ["--dtype", "bfloat16"]),
    ("eval-data-missing", ["eval", "{run}", "--data", "{files}/none.txt"], ["--data", "none.txt"]),
    ("eval-block-counts-0", ["eval", "{run}", "--block-counts", "0"], ["--block-counts", ">= 1"]),
    ("eval-modes", ["eval", "{run}", "--modes", "dense"], ["--modes", "full"]),
    ("eval-task-unknown", ["eval", "{run}", "--commonsense", "trivia"], ["--commonsense", "hellaswag"]),
    ("eval-batch-size-0", ["eval", "{run}", "--batch-size", "0"], ["--batch-size", ">= 1"]),
    ("eval-tag", ["eval", "{run}", "--tag", "a/b"], ["--tag", "letters"]),
    ("eval-no-checkpoint", ["eval", "{files}/nowhere"], ["checkpoint", "does not exist"]),
    # generate
    ("generate-device-cuda", ["generate", "{run}", "--prompt", "hi", "--device", "cuda"], ["--device", "CUDA"]),
    ("generate-max-new-0", ["generate", "{run}", "--prompt", "hi", "--max-new-tokens", "0"], ["--max-new-tokens"]),
    ("generate-top-p", ["generate", "{run}", "--prompt", "hi", "--top-p", "2"], ["--top-p", "(0, 1]"]),
    ("generate-no-prompt", ["generate", "{run}"], ["--prompt"]),
    ("generate-prompt-file", ["generate", "{run}", "--prompt-file", "{files}/none.txt"], ["--prompt-file"]),
    ("generate-temperature", ["generate", "{run}", "--prompt", "hi", "--temperature", "-1"], ["--temperature"]),
    ("generate-mode", ["generate", "{run}", "--prompt", "hi", "--mode", "dense"], ["--mode", "sparse"]),
    # convert
    ("convert-run-missing", ["convert", "--from-run", "{files}/nowhere", "--out", "{files}/conv"], ["nowhere", "does not exist"]),
    ("convert-method", ["convert", "--from-llama", "{files}/nowhere", "--out", "{files}/conv", "--method", "dense"],
     ["--method", "ssa"]),
    ("convert-block-size-0", ["convert", "--from-run", "{run}", "--out", "{files}/conv", "--block-size", "0"],
     ["--block-size", ">= 1"]),
    ("convert-out-not-empty", ["convert", "--from-run", "{run}", "--out", "{run}"], ["--out", "--overwrite"]),
    # report
    ("report-missing", ["report", "{files}/nowhere", "--out", "{files}/rep"], ["nowhere", "does not exist"]),
    ("report-not-evaluated", ["report", "{files}/empty_run", "--out", "{files}/rep"], ["empty_run", "ssa eval"]),
    # bench, compare, data
    ("bench-no-gpu", ["bench", "attention"], ["bench", "CUDA"]),
    ("bench-dtype", ["bench", "attention", "--dtype", "float64"], ["--dtype", "bfloat16"]),
    ("compare-seeds", ["compare", "--seeds", "x", "--out", "{files}/cmp"], ["--seeds"]),
    ("compare-time-budget", ["compare", "--time-budget", "0", "--out", "{files}/cmp"], ["--time-budget", "> 0"]),
    ("data-max-documents", ["data", "prepare", "--input", "{files}/a_file", "--out", "{files}/shards",
                            "--max-documents", "0"], ["--max-documents", ">= 1"]),
    ("no-such-command", ["fly"], ["invalid choice", "train"]),
]


def _fill(argv, run, files):
    return [a.replace("{run}", str(run)).replace("{files}", str(files)) for a in argv]


@pytest.mark.parametrize("argv,needles", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input_is_one_clear_line(argv, needles, run, files, capsys, monkeypatch):
    if ("cuda" in argv or "CUDA" in needles) and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.setenv("SSA_DATA_DIR", str(files / "empty_data"))  # no shared data: --all must say so
    try:
        rc = main(_fill(argv, run, files))
    except SystemExit as exit_:  # argparse's own errors
        rc = exit_.code
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert rc == 2, (rc, err)
    assert "Traceback" not in err and "Traceback" not in captured.out
    line = err.splitlines()[-1]
    assert line.startswith("ssa") and "error:" in line, err
    for needle in needles:
        assert needle in line, (needle, line)


def test_eval_warns_past_the_trained_positions(run, files, capsys):
    """Scoring past max_position_embeddings or with a block larger than the row is allowed, with a note."""
    text = files / "text.txt"
    text.write_text("The code for apple is 1234. " * 40)
    assert main(["eval", str(run), "--data", str(text), "--seq-len", "80", "--block-size", "96",
                 "--block-counts", "1", "--limit", "1", "--no-progress", "--out-dir", str(files / "ev")]) == 0
    err = capsys.readouterr().err
    assert "--seq-len 80 exceeds the model's max_position_embeddings (64)" in err
    assert "--block-size 96 exceeds the row length 80" in err


# ---------------------------------------------------------------------------------------------
# Ops and model: a ValueError / TypeError with a one-line message naming the argument
# ---------------------------------------------------------------------------------------------
def _qkv(T_=32, hq=2, hk=1, d=16, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, T_, h, d, generator=g, dtype=dtype) for h in (hq, hk, hk)]


def _model():
    torch.manual_seed(0)
    cfg = SSAConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    num_key_value_heads=1, block_size=8, block_count=2, max_position_embeddings=64)
    return SSAForCausalLM(cfg).eval()


q, k, v = _qkv()
ids = torch.tensor([[1, 2, 3, 4]])

API_CASES = [
    ("select-block-size-0", lambda: ops.select_blocks(q, k, block_size=0), "block_size"),
    ("select-block-count-0", lambda: ops.select_blocks(q, k, block_count=0), "block_count"),
    ("select-3d-q", lambda: ops.select_blocks(q[0], k), "q must have shape"),
    ("select-backend", lambda: ops.select_blocks(q, k, backend="cuda"), "backend"),
    ("sparse-dtype-mix", lambda: ops.block_sparse_attention(q, k.half(), v, block_size=8, block_count=2), "dtype"),
    ("full-heads", lambda: ops.full_attention(q, torch.randn(1, 32, 3, 16), torch.randn(1, 32, 3, 16)), "heads"),
    ("align-direction", lambda: ops.alignment_loss(q, q, direction="sideways"), "direction"),
    ("model-1d-ids", lambda: _model()(ids[0]), "input_ids"),
    ("model-id-past-vocab", lambda: _model()(torch.tensor([[1, 50]])), "vocab_size=50"),
    ("model-negative-id", lambda: _model()(torch.tensor([[-1, 2]])), "input_ids"),
    ("model-float-ids", lambda: _model()(ids.float()), "input_ids"),
    ("model-mode", lambda: _model()(ids, attention_mode="dense"), "attention_mode"),
    ("model-block-count-0", lambda: _model()(ids, block_count=0), "block_count"),
    ("model-logits-to-keep", lambda: _model()(ids, logits_to_keep=-1), "logits_to_keep"),
    ("config-head-dim-0", lambda: SSAConfig(head_dim=0), "head_dim"),
    ("config-alpha-nan", lambda: SSAConfig(alpha=float("nan")), "alpha"),
    ("config-alpha-word", lambda: SSAConfig(alpha="ten"), "alpha"),
    ("config-rope-theta-0", lambda: SSAConfig(rope_theta=0), "rope_theta"),
    ("config-rms-eps-0", lambda: SSAConfig(rms_norm_eps=0), "rms_norm_eps"),
]


@pytest.mark.parametrize("call,needle", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_api_bad_input_is_one_clear_line(call, needle):
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    msg = str(info.value)
    assert "\n" not in msg and needle in msg, msg


# ---------------------------------------------------------------------------------------------
# Real processes: what a user sees
# ---------------------------------------------------------------------------------------------
def _ssa(argv, env_extra=None, **popen):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, env=env, timeout=300, **popen)


# Importing torch and transformers costs seconds of CPU per process: two processes in all.
TRITON_ON_CPU = """
import sys, torch
from ssa import ops
q = torch.randn(1, 32, 2, 16); k = torch.randn(1, 32, 1, 16)
try:
    ops.select_blocks(q, k, backend="triton")
except ValueError as e:
    print("TRITON-ERR", e)
except Exception as e:
    print("TRITON-UNCLEAR", type(e).__name__, e)
from ssa.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def second_process(run):
    """`ssa eval RUN --seq-len 1` in a process without TRITON_INTERPRET, after trying the triton backend."""
    return _ssa(["-c", TRITON_ON_CPU, "eval", str(run), "--seq-len", "1"])


def _one_ssa_line(res, needle):
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = [l for l in res.stderr.splitlines() if l.startswith("ssa ")]
    assert len(lines) == 1 and needle in lines[0], res.stderr


def test_subprocess_errors_have_no_traceback(tmp_path, second_process):
    _one_ssa_line(_ssa(["-m", "ssa.cli", "train", *TINY, "model.head_dim=0", "--out", str(tmp_path / "x")]),
                  "model.head_dim")
    _one_ssa_line(second_process, "--seq-len")


def test_triton_backend_on_cpu_tensors_is_one_clear_line(second_process):
    line = next((l for l in second_process.stdout.splitlines() if l.startswith("TRITON-")), "")
    assert line.startswith("TRITON-ERR") and "backend" in line, second_process.stdout
