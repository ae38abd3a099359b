"""`ssa compare` end to end at a tiny size on CPU, its merge, and its planning helpers."""

import json
import shutil

import pytest

from ssa.cli import main
from ssa.commands import compare as cmd
from ssa.evaluation.results import fmt

MICRO = {
    "model": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
              "block_size": 16, "block_count": 2, "nsa_window": 16},
    "train": {"micro_batch_size": 2, "max_steps": 3, "lr": 0.003, "min_lr": 0.0003, "warmup_steps": 1,
              "log_every": 1, "eval_batches": 1, "num_threads": 1},
    "data": {"source": "synthetic-recall", "tokenizer": "bytes", "seq_len": 64,
             "synthetic_train_bytes": 8000, "synthetic_val_bytes": 8000},
}


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    d = tmp_path_factory.mktemp("cmp")
    cfg = d / "micro.json"
    cfg.write_text(json.dumps(MICRO))
    out = d / "out"
    rc = main(["compare", "--config", str(cfg), "--methods", "full,ssa", "--seeds", "0,1", "--out", str(out),
               "--no-progress", "--no-plots", "--sections", "perplexity,attention,extrapolation", "--eval-rows", "2",
               "--attention-rows", "1", "--extrapolation-docs", "1", "--lengths", "1,2", "--block-counts", "1,2"])
    assert rc == 0
    return out


def _results(out):
    return {p.stem: json.loads(p.read_text()) for p in sorted((out / "results").glob("*.json"))}


def _ppl(rec, mode, n=None):
    return next(r["ppl"] for r in rec["eval"]["perplexity"]["results"]
                if r["mode"] == mode and (mode == "full" or r["block_count"] == n))


def test_runs_share_everything_but_method_and_seed(compared):
    res = _results(compared)
    assert sorted(res) == ["full-s0", "full-s1", "ssa-s0", "ssa-s1"]
    for name, rec in res.items():
        assert rec["train"]["step"] == 3 and rec["train"]["tokens"] == 3 * 2 * 64
        assert rec["seed"] == int(name[-1]) and rec["config"]["train"]["seed"] == rec["seed"]
        assert set(rec["eval"]) == {"perplexity", "attention", "extrapolation"}
        assert rec["eval_failed"] == {}
        # the same evaluation settings for every run
        assert rec["eval"]["perplexity"]["settings"]["block_counts"] == [1, 2]
    a, b = res["full-s0"]["config"], res["ssa-s1"]["config"]
    for key in ("model", "data"):
        assert a[key] == b[key]
    assert {k: v for k, v in a["train"].items() if k != "seed"} == {k: v for k, v in b["train"].items() if k != "seed"}
    # seeds differ in initialisation and data order: different losses; the same seed the same first loss
    assert res["full-s0"]["metrics"][0]["loss"] != res["full-s1"]["metrics"][0]["loss"]


def test_report_content_matches_the_run_files(compared):
    res = _results(compared)
    text = (compared / "report" / "report.md").read_text()
    for claim in ("R1", "R2", "R3", "R4", "R5", "R6", "R6b", "goal"):
        assert f"| {claim} |" in text
    # the methods table: mean ± half spread over the two seeds, recomputed from the run files
    for metric, get in (("ppl.val.full", lambda r: _ppl(r, "full")), ("ppl.val.sparse.n2", lambda r: _ppl(r, "sparse", 2)),
                        ("attn.sparse.mass", lambda r: r["eval"]["attention"]["modes"]["sparse"]["overall"]["sparsity"])):
        row = next(line for line in text.splitlines() if line.startswith(f"| {metric} |"))
        for method in ("full", "ssa"):
            vals = [get(res[f"{method}-s{s}"]) for s in (0, 1)]
            assert f"{fmt(sum(vals) / 2, 4)} ± {fmt((max(vals) - min(vals)) / 2, 4)}" in row
    claims = json.loads((compared / "report" / "claims.json").read_text())
    by_name = {r["name"]: r["metrics"] for r in claims["runs"]}
    for name, rec in res.items():
        assert by_name[name]["ppl.val.full"] == pytest.approx(_ppl(rec, "full"))
        assert by_name[name]["gap.val.n2"] == pytest.approx(_ppl(rec, "sparse", 2) - _ppl(rec, "full"))
    # the noise band of full-mode perplexity is the larger of the two methods' seed spreads
    spreads = [abs(_ppl(res[f"{m}-s0"], "full") - _ppl(res[f"{m}-s1"], "full")) for m in ("full", "ssa")]
    assert claims["noise_bands"]["ppl.val.full"] == pytest.approx(max(spreads))
    rec = json.loads((compared / "compare.json").read_text())
    assert rec["steps"] == 3 and rec["runs"] == sorted(res) and rec["wall_s"] > 0
    assert rec["command"].startswith("ssa compare --config")
    assert "| full-s0 |" in text and rec["device"] in text


def test_merge_of_two_invocations(compared, tmp_path):
    for part, seed in (("a", 0), ("b", 1)):
        (tmp_path / part / "results").mkdir(parents=True)
        for m in ("full", "ssa"):
            shutil.copy(compared / "results" / f"{m}-s{seed}.json", tmp_path / part / "results")
    rc = main(["compare", "--merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "rep"),
               "--no-plots"])
    assert rc == 0
    merged = json.loads((tmp_path / "rep" / "claims.json").read_text())
    whole = json.loads((compared / "report" / "claims.json").read_text())
    assert merged["claims"] == whole["claims"] and merged["noise_bands"] == whole["noise_bands"]
    assert "a/results/full-s0.json" in (tmp_path / "rep" / "report.md").read_text()
    with pytest.raises(ValueError, match="appears in both"):
        main_raise(["compare", "--merge", str(tmp_path / "a"), str(tmp_path / "a"), "--out", str(tmp_path / "x")])


def main_raise(argv):
    from ssa.cli import build_parser

    args = build_parser().parse_args(argv)
    return args._run(args)


def test_parse_seeds():
    assert cmd.parse_seeds(["0,1"], ["full", "ssa"]) == {"full": [0, 1], "ssa": [0, 1]}
    assert cmd.parse_seeds(["ssa=0,1", "full=2"], ["full", "ssa"]) == {"full": [2], "ssa": [0, 1]}
    for bad in (["0,x"], ["0,0"], ["moba=0"], ["0", "ssa=1"], ["-1"]):
        with pytest.raises(ValueError, match="--seeds"):
            cmd.parse_seeds(bad, ["full", "ssa"])


def test_size_steps_by_hand():
    # two groups in sequence: (slowest start-up 20 + 10) s, (0.5 + 0.25) s per step
    groups = [[{"overhead_s": 20, "step_s": 0.5}, {"overhead_s": 5, "step_s": 0.2}], [{"overhead_s": 10, "step_s": 0.25}]]
    # 600 - 50 elapsed - 100 reserve - 30 start-up = 420 s / 0.75 = 560 steps
    assert cmd.size_steps(600, 50, 100, groups) == 560
    assert cmd.size_steps(100, 50, 100, groups) == 0
    assert cmd.group_runs(["a", "b", "c"], 2) == [["a", "b"], ["c"]]


def test_bad_arguments_fail_before_anything_runs(tmp_path):
    out = tmp_path / "never"
    for argv, msg in ((["--methods", "full,xyz"], "--methods"), (["--seeds", "a"], "--seeds"),
                      (["--parallel", "0"], "--parallel"), (["--eval-reserve", "5"], "--eval-reserve"),
                      (["--time-budget", "-1"], "--time-budget"), (["--sections", "test"], "--test-data")):
        try:
            rc = main(["compare", "--preset", "tiny", "--out", str(out)] + argv)
        except SystemExit as err:  # argparse rejects malformed lists itself
            rc = err.code
        assert rc == 2, (argv, msg)
        assert not out.exists()
