"""`ssa report`: markdown numbers come from the eval JSONs, plots are written."""

import json

import pytest
from test_eval_common import make_run

from ssa.cli import main


def _write(run, kind, payload, settings=None, meta=None):
    d = run / "eval"
    d.mkdir(exist_ok=True)
    doc = {"kind": kind, "meta": {"method": "ssa", "block_count": 2, "block_size": 8, **(meta or {})},
           "settings": settings or {}, **payload}
    (d / f"{kind}.json").write_text(json.dumps(doc))


def test_report_tables_and_figures(tmp_path, capsys):
    runs = []
    for i, method in enumerate(("ssa", "moba")):
        run = make_run(tmp_path / method, method)
        with open(run / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps({"step": 2, "tokens": 10, "val_ce": {"sparse": 3.0 + i, "full": 3.5}}) + "\n")
            fh.write("{torn line\n")
        _write(run, "perplexity", {"results": [
            {"mode": "full", "block_count": None, "receptive_field": None, "ppl": 10.0 + i, "bpb": 1.0},
            {"mode": "sparse", "block_count": 1, "receptive_field": 8, "ppl": 14.0 + i, "bpb": 1.4},
            {"mode": "sparse", "block_count": 2, "receptive_field": 16, "ppl": 12.5 + i, "bpb": 1.2}]},
            {"block_size": 8, "seq_len": 64})
        layer = {"sparsity": 0.7 - 0.1 * i, "restricted_sparsity": 0.6, "dropped_mass": 0.3, "entropy_bits": 3.0,
                 "kl": 0.4, "sink_block_mass": 0.2, "sink_token_mass": 0.1,
                 "selection_distance_hist": [0.5, 0.3, 0.2], "distance_mass": [0.6, 0.3, 0.1]}
        summ = {"overall": {"sparsity": 0.7 - 0.1 * i, "restricted_sparsity": 0.6, "dropped_mass": 0.3,
                            "entropy_bits": 3.0, "kl_final_layer": 0.4, "sink_block_mass": 0.2, "sink_token_mass": 0.1},
                "layers": [layer, layer], "distance_bin_edges": [0, 1, 2]}
        _write(run, "attention", {"modes": {"sparse": summ, "full": summ}}, {"block_count": 2, "block_size": 8})
        _write(run, "extrapolation", {"results": [
            {"rope": rope, "multiple": m, "length": 64 * m, "mode": mode, "ppl": 10.0 * m + i}
            for rope in ("none", "llama3") for m in (1, 2) for mode in ("full", "sparse")]}, {"train_len": 64})
        _write(run, "retrieval", {"results": [
            {"haystack": "filler", "length": L, "depth": d, "mode": "sparse", "exact_match": 0.0,
             "rank_accuracy": 0.5, "mean_rank": 2.0, "candidates": 10} for L in (100, 200) for d in (0.0, 1.0)]})
        _write(run, "commonsense", {"tasks": {"piqa": {"sparse": {"acc_norm": 0.6 + 0.1 * i, "acc": 0.5}},
                                              "arc_easy": {"sparse": {"acc_norm": 0.4, "acc": 0.4}}}},
               {"limit": 5, "num_fewshot": 0})
        runs.append(run)
    out = tmp_path / "rep"
    assert main(["report", *map(str, runs), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    # The summary row of the ssa run: sparse ppl at its own budget (n=2) / full, and the gap.
    assert "| run-ssa | ssa | 2x8 | 12.500 / 10.000 | 2.500 |" in md
    assert "| run-moba | moba | 2x8 | 13.500 / 11.000 | 2.500 |" in md
    assert "0.700 / 0.700" in md and "0.600 / 0.600" in md
    assert "| run-ssa | sparse | 5 | 0 | 0.600 | 0.400 | 0.500 |" in md  # commonsense avg (0.6 + 0.4) / 2
    assert "n=1 (RF 8)" in md and "val ce" in md
    for png in ("budget_curve", "ppl_vs_length", "attention_by_layer", "selection_distance", "retrieval_heatmap",
                "training_curves"):
        p = out / f"{png}.png"
        assert p.is_file() and p.read_bytes()[:4] == b"\x89PNG"
        assert f"({png}.png)" in md


def test_report_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "ssa eval" in capsys.readouterr().err
    bad = tmp_path / "bad"
    (bad / "eval").mkdir(parents=True)
    (bad / "eval" / "x.json").write_text("{nope")
    assert main(["report", str(bad)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
