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


def test_plan_steps_by_hand():
    # two groups in sequence: (slowest start-up 20 + 10) s, (0.5 + 0.25) s per step
    groups = [[{"overhead_s": 20, "step_s": 0.5}, {"overhead_s": 5, "step_s": 0.2}], [{"overhead_s": 10, "step_s": 0.25}]]
    # 600 - 50 elapsed - 100 reserve - 30 start-up = 420 s / 0.75 = 560 steps
    plan = cmd.plan_steps(600, 50, 100, groups)
    assert plan["steps"] == 560 and plan["startup_s"] == 30 and plan["step_s"] == 0.75
    assert plan["train_s_planned"] == pytest.approx(30 + 560 * 0.75)
    # a 30 s safety margin: 390 s / 0.75 = 520 steps
    assert cmd.plan_steps(600, 50, 100, groups, safety_s=30)["steps"] == 520
    assert cmd.plan_steps(100, 50, 100, groups)["steps"] == 0
    assert cmd.group_runs(["a", "b", "c"], 2) == [["a", "b"], ["c"]]


def test_plan_of_one_concurrent_group_uses_the_budget():
    # six runs sharing one GPU, steady step times measured together; the slowest sets the pace
    probes = [{"overhead_s": o, "step_s": t} for o, t in
              ((31, 0.61), (30, 0.60), (35, 0.72), (42, 0.95), (38, 0.80), (37, 0.79))]
    budget = 545
    safety = cmd.SAFETY_FRACTION * budget  # 27.25
    # 545 - 60 elapsed - 163.5 reserve - 27.25 safety - 42 start-up = 252.25 s / 0.95 s = 265.5 -> 265
    plan = cmd.plan_steps(budget, 60, 163.5, [probes], safety)
    assert plan["steps"] == 265
    # planned training ends inside the budget, and less than one step short of the time available
    assert 0 <= plan["train_s_available"] + 42 - plan["train_s_planned"] < 0.95


def test_probe_times_only_the_steps_after_the_warm_up():
    # a fake step whose first calls are slow (compilation), on a fake clock it advances
    now = [0.0]
    costs = iter([9.0, 4.0, 0.5, 0.3, 0.7, 0.5, 0.5])

    def step():
        now[0] += next(costs)
        return {}

    res = cmd.probe_steps(step, warmup=2, timed=5, clock=lambda: now[0])
    assert res["warmup_s"] == 13.0 and res["warmup_steps"] == 2
    assert res["steady_s"] == pytest.approx(2.5) and res["step_s"] == pytest.approx(0.5)
    assert res["step_s_max"] == pytest.approx(0.7) and res["extra_steps"] == 0


def test_concurrent_probes_time_together(tmp_path):
    # run b warms up slowly; run a must wait before timing and keep stepping until b is timed
    import threading
    import time

    log = {"a": [], "b": []}

    def stepper(name, warm_cost, cost):
        def step():
            time.sleep(warm_cost if len(log[name]) < 2 else cost)
            log[name].append(time.time())
            return {}
        return step

    results = {}

    def probe(name, warm_cost, cost):
        sync = cmd.GroupSync(tmp_path, name, 2, give_up=time.time() + 30)
        results[name] = cmd.probe_steps(stepper(name, warm_cost, cost), warmup=2, timed=3, sync=sync)

    threads = [threading.Thread(target=probe, args=("a", 0.001, 0.002)),
               threading.Thread(target=probe, args=("b", 0.15, 0.02))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    b_warm_end, b_timed_end = log["b"][1], log["b"][4]
    a_first_timed = log["a"][2]
    assert a_first_timed > b_warm_end  # a's timed steps start after b is warm
    # a kept b company: it was still stepping when b's last timed step ended. a stops at its first
    # check after b's mark, so its last step may end just before that (within one of its 2 ms steps,
    # far less than b's 20 ms step).
    assert results["a"]["extra_steps"] > 0 and log["a"][-1] >= b_timed_end - 0.01
    assert results["b"]["step_s"] == pytest.approx(0.02, abs=0.015)


def test_probe_job_warms_both_ssa_modes(tmp_path):
    from ssa.model.objective import scheduled_mode
    from ssa.training.config import resolve_config

    # seed 0's own draw is full at both warm-up steps: the probe must force the sparse mode itself
    assert [scheduled_mode(0.5, 0, s) for s in (0, 1)] == ["full", "full"]

    cfg = resolve_config(MICRO, method="ssa", overrides=[f"train.max_steps={cmd.PROBE_WARMUP + cmd.PROBE_TIMED}", "train.mode_draw=step",
                                                          "model.full_ratio=0.5"])
    res = cmd.job_probe({"kind": "probe", "name": "ssa-s0", "config": cfg, "run_dir": str(tmp_path / "p")})
    assert res["warmup_modes"] == ["full", "sparse"]
    assert res["warmup_steps"] == cmd.PROBE_WARMUP and res["timed_steps"] == cmd.PROBE_TIMED
    assert 0 < res["step_s"] <= res["step_s_max"] and res["overhead_s"] >= 0
    assert res["wall_s"] >= res["warmup_s"] + res["steady_s"]


def test_time_budget_records_the_probe_and_the_budget_used(tmp_path):
    cfg = tmp_path / "micro.json"
    cfg.write_text(json.dumps(MICRO))
    out = tmp_path / "out"
    rc = main(["compare", "--config", str(cfg), "--methods", "full", "--out", str(out), "--no-progress", "--no-plots",
               "--sections", "perplexity", "--eval-rows", "1", "--block-counts", "1", "--time-budget", "600",
               "--steps", "3"])
    assert rc == 0
    rec = json.loads((out / "compare.json").read_text())
    probe = rec["probe"]["full-s0"]
    assert probe["warmup_steps"] == cmd.PROBE_WARMUP and probe["timed_steps"] == cmd.PROBE_TIMED
    assert probe["step_s_max"] >= probe["step_s"] >= probe["steady_s"] / cmd.PROBE_TIMED / 2  # the median step
    plan = rec["plan"]
    assert plan["steps"] == int(plan["train_s_available"] // probe["step_s"]) >= 3 and rec["steps"] == 3
    assert plan["safety_s"] == pytest.approx(cmd.SAFETY_FRACTION * 600) and plan["startup_s"] == probe["overhead_s"]
    assert rec["budget_used"] == pytest.approx(rec["report_done_s"] / 600) and 0 < rec["budget_used"] < 1


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


@pytest.mark.parametrize("acc, want", [
    # SSA keeps 90 of 95 (95%), FullAttn 30 of 90 (33%): the effect, stated from the numbers.
    ({"full-s0": (0.90, 0.30), "ssa-s0": (0.95, 0.90)}, "SSA keeps its copying under sparse inference, FullAttn loses it"),
    ({"full-s0": (0.90, 0.85), "ssa-s0": (0.95, 0.90)}, "no clear effect"),
    ({"full-s0": (0.90, 0.88), "ssa-s0": (0.95, 0.40)}, "the expected effect does not show"),
    ({"full-s0": (0.90, 0.10), "ssa-s0": (0.20, 0.20)}, "SSA copied less than 50%"),
    # Seeds are averaged per method: 0.5 and 0.9 kept -> 0.7, against SSA's 0.95.
    ({"full-s0": (0.80, 0.40), "full-s1": (0.80, 0.72), "ssa-s0": (0.80, 0.76)}, "SSA keeps its copying"),
])
def test_copy_reading_is_computed_from_the_accuracies(acc, want):
    methods = {name: name.split("-")[0] for name in acc}
    text = cmd.reading(acc, {"block_count": 4, "block_size": 16}, methods)
    assert text.startswith("Reading (sparse budget 4 blocks of 16 tokens): ") and want in text
    for name, (full, sparse) in acc.items():
        assert f"{name} keeps {100 * sparse / full:.0f}% of its full-attention copy accuracy" in text
    assert cmd.reading({}, {"block_count": 4, "block_size": 16}) == "Reading: no copy accuracy measured."
