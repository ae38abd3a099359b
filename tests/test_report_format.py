"""Report tables and figures say what the numbers are: no '-0.000', honest axes, visible modes, chance level."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest

from ssa.evaluation import plots
from ssa.evaluation.report import markdown
from ssa.evaluation.results import fmt, table


@pytest.mark.parametrize("value,text", [
    (-0.0001, "0.000"), (-0.0, "0.000"), (0.0004, "0.000"), (-0.0006, "-0.001"), (-0.006, "-0.006"),
    (2.5, "2.500"), (-1234.4, "-1234"), (float("nan"), "nan"), (float("inf"), "inf"), (float("-inf"), "-inf"),
    (None, "-"), (7, "7"),
])
def test_cells(value, text):
    assert fmt(value) == text


def test_plain_and_markdown_tables_never_print_negative_zero():
    rows = [["a", -0.00002, -0.3], ["b", 0.0, -0.0]]
    for md in (False, True):
        out = table(["run", "gap", "x"], rows, markdown=md)
        assert "-0.000" not in out and "-0.300" in out


def perplexity_run(name: str, full: float, sparse: list[float], method: str = "ssa") -> dict:
    results = [{"mode": "full", "block_count": None, "receptive_field": None, "ppl": full, "bpb": 1.0}]
    results += [{"mode": "sparse", "block_count": n, "receptive_field": 16 * n, "ppl": p, "bpb": 1.0}
                for n, p in zip((1, 2, 4), sparse)]
    doc = {"kind": "perplexity", "meta": {"block_count": 2, "block_size": 16}, "results": results,
           "settings": {"block_size": 16, "seq_len": 64}}
    return {"name": name, "method": method, "results": {"perplexity": doc}, "metrics": [],
            "train_config": {"model": {"block_count": 2, "block_size": 16}}}


def test_summary_gap_of_a_tiny_negative_difference_is_zero():
    md = markdown([perplexity_run("r", full=1.6972, sparse=[1.7, 1.6970, 1.69])])
    assert "| r | ssa | 2x16 | 1.697 / 1.697 | 0.000 |" in md and "-0.000" not in md


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions would save, kept open for inspection."""
    kept = []
    monkeypatch.setattr(plots, "_save", lambda fig, path, tight=True: kept.append(fig) or path)
    yield kept
    for fig in kept:
        plt.close(fig)


def test_budget_curve_keeps_a_flat_sweep_flat_and_the_modes_apart(figures, tmp_path):
    # Values 0.0005 apart: drawn over the full height they would look like a strong budget effect.
    runs = [perplexity_run("a", 1.6972, [1.6975, 1.6972, 1.6970]), perplexity_run("b", 1.6971, [1.6973, 1.6971, 1.6971])]
    plots.budget_curve(runs, tmp_path / "b.png")
    ax = figures[0].axes[0]
    lo, hi = ax.get_ylim()
    assert hi - lo >= plots.MIN_RELATIVE_SPAN * 1.697 and lo < 1.6970 and hi > 1.6975
    assert ax.yaxis.get_major_formatter().get_offset() == ""  # no "+1.697" offset with tiny tick deltas
    styles = {line.get_label(): (line.get_marker(), line.get_linestyle(), line.get_markerfacecolor())
              for line in ax.get_lines()}
    assert styles["a sparse"][:2] == ("o", "-") and styles["a full"][:2] == ("s", "--")
    assert styles["a full"][2] == "none"  # hollow: a full curve on top of the sparse one leaves it visible
    assert any("spans" in t.get_text() for t in ax.texts)


def test_budget_curve_leaves_a_real_effect_alone(figures, tmp_path):
    plots.budget_curve([perplexity_run("a", 10.0, [14.0, 12.0, 10.5])], tmp_path / "b.png")
    lo, hi = figures[0].axes[0].get_ylim()
    assert lo <= 10.0 and hi >= 14.0 and hi - lo < 6 and not figures[0].axes[0].texts


def test_honest_ylim():
    assert plots.honest_ylim([10.0, 14.0]) is None
    lo, hi = plots.honest_ylim([100.0, 100.01])
    assert hi - lo >= 2.0 and lo < 100.0 and hi > 100.01
    assert plots.honest_ylim([0.0, 0.0]) is None


def test_retrieval_heatmap_marks_chance(figures, tmp_path):
    rows = [{"haystack": "filler", "length": L, "depth": d, "mode": m, "exact_match": 0.0, "rank_accuracy": 0.25,
             "mean_rank": 3.0, "candidates": 8} for L in (100, 200) for d in (0.0, 1.0) for m in ("sparse", "full")]
    plots.retrieval_heatmap([{"name": "r", "method": "ssa", "results": {"retrieval": {"results": rows}}}],
                            tmp_path / "h.png")
    fig = figures[0]
    assert "among 8 candidates (chance 0.12" in fig._suptitle.get_text()
    colorbar = fig.axes[-1]
    assert [line.get_ydata()[0] for line in colorbar.get_lines()] == [pytest.approx(1 / 8)]
    assert plots.retrieval_chance(rows, "exact_match")[0] == pytest.approx(1e-5)
