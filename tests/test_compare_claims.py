"""Claim verdicts of `ssa compare` on constructed metrics, against hand-worked expectations."""

import pytest

from ssa.evaluation import claims as C


def _runs(extra=None):
    """full and ssa with two seeds, moba and nsa with one; numbers chosen for easy hand checks."""
    runs = [
        {"method": "full", "seed": 0, "metrics": {"ppl.val.full": 10.0, "ppl.val.sparse.n16": 12.0, "absgap.val.n16": 2.0}},
        {"method": "full", "seed": 1, "metrics": {"ppl.val.full": 10.2, "ppl.val.sparse.n16": 12.4, "absgap.val.n16": 2.2}},
        {"method": "ssa", "seed": 0, "metrics": {"ppl.val.full": 10.3, "ppl.val.sparse.n16": 10.5, "absgap.val.n16": 0.2}},
        {"method": "ssa", "seed": 1, "metrics": {"ppl.val.full": 10.35, "ppl.val.sparse.n16": 10.45, "absgap.val.n16": 0.1}},
        {"method": "moba", "seed": 0, "metrics": {"ppl.val.full": 11.0, "ppl.val.sparse.n16": 10.9, "absgap.val.n16": 0.1}},
        {"method": "nsa", "seed": 0, "metrics": {"ppl.val.sparse.n16": 10.6}},
    ]
    for r in runs:
        r["metrics"].update((extra or {}).get((r["method"], r["seed"]), {}))
    return runs


def _claims(runs, budgets=(16,)):
    tab = C.method_table(runs)
    return tab, C.noise_bands(tab), C.evaluate_claims(tab, C.noise_bands(tab), 16, list(budgets))


def test_means_spreads_and_bands():
    tab, bands, _ = _claims(_runs())
    assert tab["full"]["mean"]["ppl.val.full"] == pytest.approx(10.1)
    assert tab["ssa"]["mean"]["ppl.val.sparse.n16"] == pytest.approx(10.475)
    assert tab["full"]["spread"]["ppl.val.sparse.n16"] == pytest.approx(0.4)
    assert "ppl.val.full" not in tab["moba"]["spread"]  # one seed: no spread
    # band = the largest spread among methods with two seeds: full's 0.2 vs ssa's 0.05
    assert bands["ppl.val.full"] == pytest.approx(0.2)
    assert bands["ppl.val.sparse.n16"] == pytest.approx(0.4)
    assert bands["absgap.val.n16"] == pytest.approx(0.2)


def test_r1_r2_r3_hand_worked():
    _, _, res = _claims(_runs())
    r1 = [c["verdict"] for c in res["R1"]["checks"]]
    # margins vs band 0.4: full 12.2-10.475=1.725 holds, moba 10.9-10.475=0.425 holds, nsa 0.125 inside
    assert r1 == [C.HOLDS, C.HOLDS, C.NOISE]
    assert res["R1"]["verdict"] == C.NOISE
    m = {c["text"].split(":")[1].split()[3]: c["margin"] for c in res["R1"]["checks"]}
    assert m["nsa"] == pytest.approx(0.125)
    # R2: 1.02*10.1 - 10.325 = -0.023 (inside band 0.2); moba 11.0 - 10.325 = 0.675 holds
    assert [c["verdict"] for c in res["R2"]["checks"]] == [C.NOISE, C.HOLDS]
    assert res["R2"]["checks"][0]["margin"] == pytest.approx(-0.023)
    assert res["R2"]["verdict"] == C.NOISE
    # R3 over full and moba (nsa has no full mode): 2.1-0.15 holds, 0.1-0.15 = -0.05 inside band 0.2
    assert [c["verdict"] for c in res["R3"]["checks"]] == [C.HOLDS, C.NOISE]
    assert len(res["R3"]["checks"]) == 2


def test_a_clear_loss_is_does_not_hold():
    runs = _runs({("moba", 0): {"ppl.val.sparse.n16": 9.0}})
    _, _, res = _claims(runs)
    assert res["R1"]["verdict"] == C.FAILS  # 9.0 - 10.475 = -1.475 < -0.4


def test_every_claim_row_and_missing_metrics():
    _, _, res = _claims(_runs())
    assert set(res) == {"R1", "R2", "R3", "R4", "R5", "R6", "R6b", "goal"}
    assert res["R4"]["verdict"] == C.MISSING  # no attention metrics at all
    assert res["R6"]["verdict"] == C.MISSING
    # goal: 0.01*10.325 - (10.475-10.325) = -0.04675, band of gap.val.n16 unknown -> plain sign
    assert res["goal"]["verdict"] == C.FAILS


def test_compare_and_combine_rules():
    assert C.compare(0.5, 0.4) == C.HOLDS
    assert C.compare(0.4, 0.4) == C.NOISE  # on the band edge: inside
    assert C.compare(-0.41, 0.4) == C.FAILS
    assert C.compare(0.01, None) == C.HOLDS  # no noise estimate: the sign decides
    assert C.compare(None, 0.1) == C.MISSING
    assert C.combine([C.HOLDS, C.MISSING]) == C.HOLDS
    assert C.combine([C.HOLDS, C.NOISE]) == C.NOISE
    assert C.combine([C.NOISE, C.FAILS]) == C.FAILS
    assert C.combine([C.MISSING]) == C.MISSING


def test_r5_monotone_and_moba():
    seq = {"ppl.val.sparse.n4": 12.0, "ppl.val.sparse.n8": 11.0, "ppl.val.sparse.n16": 10.5, "ppl.val.full": 10.3}
    runs = [{"method": "ssa", "seed": s, "metrics": dict(seq)} for s in (0, 1)]
    runs.append({"method": "moba", "seed": 0, "metrics": {"ppl.val.full": 11.0, "ppl.val.sparse.n16": 10.5}})
    _, _, res = _claims(runs, budgets=(4, 8, 16))
    assert [c["verdict"] for c in res["R5"]["checks"]] == [C.HOLDS, C.HOLDS, C.HOLDS]
    assert res["R5"]["verdict"] == C.HOLDS
    # a rise n8 -> n16 of 0.5 beyond the (zero) band breaks monotonicity
    runs[0]["metrics"]["ppl.val.sparse.n16"] = runs[1]["metrics"]["ppl.val.sparse.n16"] = 11.5
    _, _, res = _claims(runs, budgets=(4, 8, 16))
    assert res["R5"]["checks"][0]["verdict"] == C.FAILS
    assert res["R5"]["verdict"] == C.FAILS
    # the same rise inside a seed spread of 0.6 is not a violation
    runs[1]["metrics"]["ppl.val.sparse.n16"] = 10.9
    _, _, res = _claims(runs, budgets=(4, 8, 16))
    assert res["R5"]["checks"][0]["verdict"] == C.HOLDS


def test_r4_and_r6_directions():
    m = {"attn.full.mass": 0.8, "attn.sparse.mass": 0.9, "attn.full.entropy": 3.0, "attn.sparse.entropy": 2.5,
         "ext.none.full.x2": 20.0, "ext.none.sparse.x2": 21.0, "ext.none.full.x4": 30.0, "ext.none.sparse.x4": 31.0}
    worse = {k: (v - 0.1 if "mass" in k else v + 1.0) for k, v in m.items()}
    runs = [{"method": "ssa", "seed": 0, "metrics": m}, {"method": "full", "seed": 0, "metrics": worse},
            {"method": "nsa", "seed": 0, "metrics": {k: v for k, v in worse.items() if ".sparse." in k}}]
    _, _, res = _claims(runs)
    assert res["R4"]["verdict"] == C.HOLDS
    assert len(res["R4"]["checks"]) == 6  # full: 2 modes x 2 metrics; nsa: sparse only
    assert res["R6"]["verdict"] == C.HOLDS
    assert len(res["R6"]["checks"]) == 6
    runs[1]["metrics"]["attn.sparse.entropy"] = 2.0  # full more concentrated in sparse mode
    _, _, res = _claims(runs)
    assert res["R4"]["verdict"] == C.FAILS


def test_run_metrics_from_eval_documents():
    ev = {
        "perplexity": {"results": [{"mode": "full", "block_count": None, "ppl": 10.0},
                                   {"mode": "sparse", "block_count": 4, "ppl": 12.0},
                                   {"mode": "sparse", "block_count": 16, "ppl": 9.5}]},
        "attention": {"modes": {"sparse": {"overall": {"sparsity": 0.7, "entropy_bits": 4.0}}}},
        "extrapolation": {"results": [{"rope": "none", "mode": "full", "multiple": 2.0, "ppl": 15.0}]},
        "retrieval": {"results": [{"mode": "full", "length": 64, "exact_match": 1.0, "rank_accuracy": 0.5},
                                  {"mode": "full", "length": 64, "exact_match": 0.0, "rank_accuracy": 1.0}]},
    }
    m = C.run_metrics(ev)
    assert m["ppl.val.sparse.n4"] == 12.0 and m["gap.val.n4"] == pytest.approx(2.0)
    assert m["absgap.val.n16"] == pytest.approx(0.5) and m["gap.val.n16"] == pytest.approx(-0.5)
    assert m["relgap.val.n4"] == pytest.approx(0.2)
    assert m["attn.sparse.mass"] == 0.7 and "attn.full.mass" not in m
    assert m["ext.none.full.x2"] == 15.0
    assert m["passkey.full.L64.exact"] == pytest.approx(0.5)
    assert m["passkey.full.L64.rank1"] == pytest.approx(0.75)


def test_paper_numbers():
    res = C.paper_verdicts()
    # SSA 15.96 is the lowest sparse ppl; 15.28 <= 1.02*15.13 and < MoBA 16.68; |gap| 0.68 > MoBA's 0.14
    assert res["R1"]["verdict"] == C.HOLDS
    assert res["R2"]["verdict"] == C.HOLDS
    assert res["R3"]["verdict"] == C.FAILS
