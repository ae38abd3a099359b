"""`ssa train` end to end through ssa.cli.main, presets, overrides and one-line user errors."""

from __future__ import annotations

import json

import pytest
import torch

from ssa.cli import main
from ssa.training.config import METHODS, available_presets, load_preset, resolve_config

MICRO = [
    "model.hidden_size=32", "model.num_hidden_layers=1", "model.num_attention_heads=2",
    "model.num_key_value_heads=1", "data.seq_len=64", "train.micro_batch_size=2",
    "data.synthetic_train_bytes=20000", "data.synthetic_val_bytes=2000", "train.eval_batches=1",
    "train.device=cpu",
]


def one_line_error(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("ssa train: error:"), err
    for n in needles:
        assert n in err, (n, err)
    return err


def test_cli_trains_resumes_and_writes_the_run_dir(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--method", "ssa", "--out", str(out), "--no-progress",
            "--set", *MICRO, "train.max_steps=3", "train.save_every=2", "train.log_every=1"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["step"] == 3 and summary["val_ce"].keys() == {"full", "sparse"}
    cfg = json.loads((out / "train_config.json").read_text())
    assert cfg["preset"] == "tiny" and cfg["method"] == "ssa" and cfg["train"]["max_steps"] == 3
    assert cfg["model"]["block_count"] == 4 and cfg["data"]["source"] == "synthetic-recall"
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[:3] == [1, 2, 3]
    latest = (out / "checkpoints" / "latest").read_text().strip()
    assert latest == "step_00000003"
    for f in ("config.json", "model.safetensors", "tokenizer.json", "training_state.pt"):
        assert (out / "checkpoints" / latest / f).is_file()

    from transformers import AutoTokenizer

    from ssa.model import SSAForCausalLM

    model = SSAForCausalLM.from_pretrained(out / "checkpoints" / latest)
    assert model.config.block_count == 4 and model.config.vocab_size == 257
    assert AutoTokenizer.from_pretrained(out / "checkpoints" / latest).eos_token_id == 256

    # Resume with a raised budget: config comes from the run dir.
    assert main(["train", "--out", str(out), "--resume", "--no-progress", "--set", "train.max_steps=4"]) == 0
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    # Nothing left to do is an error, not a silent no-op.
    one_line_error(capsys, ["train", "--out", str(out), "--resume", "--no-progress"], "max_steps")
    # A fresh run into a used directory is refused.
    one_line_error(capsys, ["train", "--preset", "tiny", "--out", str(out), "--set", *MICRO], "--resume")


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    out = str(tmp_path / "x")
    one_line_error(capsys, ["train", "--preset", "nope", "--out", out], "unknown preset 'nope'", "tiny")
    one_line_error(capsys, ["train", "--preset", "tiny", "--method", "dense", "--out", out], "method", "ssa")
    one_line_error(capsys, ["train", "--preset", "tiny", "--out", out, "--set", "train.max_stepz=3"],
                   "max_stepz", "max_steps")
    one_line_error(capsys, ["train", "--preset", "tiny", "--out", out, "--set", "model.blok=3"], "blok", "block_count")
    one_line_error(capsys, ["train", "--preset", "tiny", "--out", out, "--set", "optim.lr=3"], "optim.lr", "model")
    one_line_error(capsys, ["train", "--preset", "tiny", "--out", out, "--set", "train.lr"], "KEY=VALUE")
    one_line_error(capsys, ["train", "--preset", "tiny", "--out", out, "--set", "train.max_steps=0"],
                   "train.max_steps")
    one_line_error(capsys, ["train", "--preset", "tiny", "--out", out, "--set", *MICRO,
                            f"data.source={tmp_path}/missing.jsonl.gz"], "missing.jsonl.gz")
    bad = tmp_path / "corrupt.jsonl.gz"
    bad.write_bytes(b"\x1f\x8b garbage")
    one_line_error(capsys, ["train", "--preset", "tiny", "--out", out, "--set", *MICRO, f"data.source={bad}"],
                   "corrupt.jsonl.gz")
    one_line_error(capsys, ["train", "--config", str(tmp_path / "none.json"), "--out", out], "none.json")
    (tmp_path / "broken.json").write_text("{")
    one_line_error(capsys, ["train", "--config", str(tmp_path / "broken.json"), "--out", out], "not valid JSON")
    one_line_error(capsys, ["train", "--out", out, "--resume"], "train_config.json")
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_config_file_and_seed_flag(tmp_path, capsys):
    cfg = load_preset("tiny")
    cfg["_comment"] = "comments are allowed"
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    out = tmp_path / "run"
    assert main(["train", "--config", str(tmp_path / "c.json"), "--method", "full", "--seed", "5", "--out", str(out),
                 "--no-progress", "--set", *MICRO, "train.max_steps=1"]) == 0
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["train"]["seed"] == 5 and saved["method"] == "full" and saved["preset"] is None


def test_every_preset_resolves_for_every_method():
    from ssa.model import SSAConfig, SSAForCausalLM

    assert {"tiny", "study", "300m", "1b"} <= set(available_presets())
    for name in ("tiny", "study", "300m", "1b"):
        for method in METHODS:
            cfg = resolve_config(load_preset(name), method=method, preset=name)
            SSAConfig(method=method, vocab_size=50257, **cfg["model"])  # the model accepts every key
    big = resolve_config(load_preset("1b"), method="ssa")
    assert big["model"]["hidden_size"] == 2048 and big["data"]["seq_len"] == 8192
    assert big["model"]["block_size"] == 16 and big["model"]["block_count"] == 16
    # The paper's shapes: 16 layers and RMSNorm eps 1e-5 at both sizes; the parameter counts the
    # preset comments state (GPT-2 vocabulary) match the model they build.
    for name, params in (("300m", "289M"), ("1b", "1.05B")):
        preset = load_preset(name)
        cfg = resolve_config(preset, method="ssa")["model"]
        assert cfg["num_hidden_layers"] == 16 and cfg["rms_norm_eps"] == 1e-5
        with torch.device("meta"):
            model = SSAForCausalLM(SSAConfig(vocab_size=50257, **cfg))
        n = sum(p.numel() for p in model.parameters())
        assert f"{params} parameters with GPT-2's vocabulary" in preset["_comment"]
        assert f"{n / 1e9:.2f}B" == params if params.endswith("B") else f"{n / 1e6:.0f}M" == params
        assert "_choices" in preset  # what the project chose itself is written down


def test_presets_are_found_from_the_package_dir(tmp_path, monkeypatch):
    """An installed wheel carries presets as ssa/configs: that location is searched first."""
    import ssa
    from ssa.training import config as C

    fake_pkg = tmp_path / "site" / "ssa"
    (fake_pkg / "configs").mkdir(parents=True)
    (fake_pkg / "configs" / "only-in-wheel.json").write_text(json.dumps({"train": {"max_steps": 7}}))
    monkeypatch.setattr(ssa, "__file__", str(fake_pkg / "__init__.py"))
    assert C.preset_dirs()[0] == fake_pkg / "configs"
    assert C.load_preset("only-in-wheel") == {"train": {"max_steps": 7}}
    with pytest.raises(ValueError, match="only-in-wheel"):
        C.load_preset("tiny-typo")


def test_repeated_set_flags_accumulate():
    # `--set a=1 --set b=2` must keep both overrides: a second flag silently replacing the first
    # would train a different model than the command line says.
    from ssa.cli import build_parser

    args = build_parser().parse_args(["train", "--preset", "tiny", "--set", "train.max_steps=3", "--set", "train.lr=0.01"])
    assert args.overrides == ["train.max_steps=3", "train.lr=0.01"]
    args = build_parser().parse_args(["compare", "--set", "train.max_steps=3", "--set", "train.lr=0.01"])
    assert args.overrides == ["train.max_steps=3", "train.lr=0.01"]
