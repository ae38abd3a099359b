"""The report of `ssa compare`: per-run result files -> markdown, PNG figures and raw JSON.

An invocation of `ssa compare --out DIR` writes
    DIR/compare.json            what ran: command, commit, device, settings, probe, wall time
    DIR/results/<run>.json      one small file per run: config, training summary and log, and the
                                evaluation documents of `ssa eval` (kind -> document)
and the report is built from those files only, so the results of several invocations (e.g. two
GPU calls) merge by reading all their folders (`ssa compare --merge DIR1 DIR2 --out REPORT`).
Every number of the report is read from a results file; `claims.json` keeps the verdict inputs.
"""

from __future__ import annotations

import json
from pathlib import Path

from . import claims as C
from .results import _clean, fmt, table

RESULTS_DIR = "results"
INVOCATION = "compare.json"


def run_name(method: str, seed: int) -> str:
    return f"{method}-s{seed}"


def read_json(path: Path, what: str) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path} does not exist") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} {path} is not valid JSON: {err}") from None


def write_json(path: Path, obj) -> None:
    from ssa.training.checkpoint import write_text_atomic

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(Path(path), json.dumps(_clean(obj), indent=1) + "\n")


def load_dirs(dirs: list) -> tuple[list[dict], list[dict]]:
    """(runs, invocations) of compare output folders; a run name in two folders is an error."""
    runs, invocations, seen = [], [], {}
    for d in dirs:
        d = Path(d)
        if not (d / RESULTS_DIR).is_dir():
            raise FileNotFoundError(f"--merge {d}: no {RESULTS_DIR}/ folder (not an `ssa compare` output)")
        if (d / INVOCATION).is_file():
            inv = read_json(d / INVOCATION, "invocation record")
            inv["folder"] = d.name
            invocations.append(inv)
        for p in sorted((d / RESULTS_DIR).glob("*.json")):
            rec = read_json(p, "run result")
            if rec["name"] in seen:
                raise ValueError(f"run {rec['name']} appears in both {seen[rec['name']]} and {d}: merge distinct runs")
            seen[rec["name"]] = d
            rec["source"] = f"{d.name}/{RESULTS_DIR}/{p.name}"
            runs.append(rec)
    if not runs:
        raise ValueError(f"no run results under {', '.join(str(d) for d in dirs)}")
    order = {"full": 0, "moba": 1, "nsa": 2, "ssa": 3}
    runs.sort(key=lambda r: (order.get(r["method"], 9), r["seed"]))
    return runs, invocations


def as_report_run(rec: dict) -> dict:
    """The run dict `ssa.evaluation.report` and `plots` expect."""
    return {"name": rec["name"], "dir": rec.get("source", rec["name"]), "method": rec["method"],
            "results": rec.get("eval", {}), "metrics": rec.get("metrics", []), "train_config": rec.get("config", {})}


def trained_budget(runs: list[dict]) -> int:
    counts = {(r.get("config") or {}).get("model", {}).get("block_count") for r in runs}
    counts.discard(None)
    if len(counts) != 1:
        raise ValueError(f"runs were trained with different block counts {sorted(counts)}: compare like with like")
    return counts.pop()


def swept_budgets(runs: list[dict]) -> list[int]:
    out = set()
    for r in runs:
        for x in (r.get("eval", {}).get("perplexity") or {}).get("results", []):
            if x["mode"] == "sparse":
                out.add(x["block_count"])
    return sorted(out)


def analyse(runs: list[dict]) -> dict:
    """Metrics per run, per-method means and spreads, noise bands and claim verdicts."""
    per_run = [{"name": r["name"], "method": r["method"], "seed": r["seed"],
                "metrics": C.run_metrics(r.get("eval", {}))} for r in runs]
    tab = C.method_table(per_run)
    bands = C.noise_bands(tab)
    n = trained_budget(runs)
    verdicts = C.evaluate_claims(tab, bands, n, swept_budgets(runs))
    return {"block_count": n, "runs": per_run, "methods": tab, "noise_bands": bands, "claims": verdicts,
            "paper_claims": C.paper_verdicts()}


# ----------------------------------------------------------------------------------------------
# Markdown
# ----------------------------------------------------------------------------------------------
def _setup_section(runs, invocations) -> list[str]:
    out = ["## Setup", ""]
    for inv in invocations:
        out.append(f"- `{inv['folder']}`: `{inv.get('command')}`; commit `{inv.get('commit')}`; device "
                   f"{inv.get('device')}; wall time {fmt(inv.get('wall_s'), 0)} s"
                   + (f" (time budget {inv['time_budget_s']} s)" if inv.get("time_budget_s") else "")
                   + f"; runs {', '.join(inv.get('runs', []))}.")
    out.append("")
    rows = []
    for r in runs:
        cfg, tr = r.get("config", {}), r.get("train", {})
        mdl, t, d = cfg.get("model", {}), cfg.get("train", {}), cfg.get("data", {})
        rows.append([r["name"], tr.get("n_parameters"), f"{mdl.get('hidden_size')}/{mdl.get('num_hidden_layers')}/"
                     f"{mdl.get('num_attention_heads')}/{mdl.get('num_key_value_heads')}",
                     d.get("seq_len"), f"{mdl.get('block_size')}x{mdl.get('block_count')}", tr.get("step"),
                     tr.get("tokens"), tr.get("tokens_per_s"), tr.get("wall_s"), (tr.get("last") or {}).get("ce_loss")])
    out += [table(["run", "params", "hidden/layers/heads/kv", "seq_len", "s x n", "steps", "train tokens",
                   "tok/s", "train wall s", "final train CE"], rows, markdown=True), ""]
    src = {str((r.get("config") or {}).get("data", {}).get("source")) for r in runs}
    tok = {str((r.get("config") or {}).get("data", {}).get("tokenizer")) for r in runs}
    out.append(f"Data: {', '.join(f'`{Path(s).name}`' for s in sorted(src))}; tokenizer "
               f"{', '.join(sorted(tok))}. Every number below is read from the `results/<run>.json` files "
               "named in the last section; `claims.json` holds the metrics, seed spreads and checks.")
    out.append("")
    return out


def _claims_section(analysis) -> list[str]:
    bands = analysis["noise_bands"]
    out = ["## The paper's claims", "",
           "Methods are compared by their mean over seeds. Noise band of a metric = the largest seed-to-seed "
           "spread (max - min) of that metric among methods run with two or more seeds. A comparison holds when "
           "its margin in the claim's favour exceeds the band, does not hold when it is below minus the band, "
           "and is inside the noise otherwise; a claim holds when all its comparisons hold and does not hold "
           "when any does not (R5's monotonicity: no step to a larger budget raises perplexity by more than the "
           "band). Perplexities are on the validation split." + ("" if bands else
           " **Only one seed per method: no noise band could be estimated, so these verdicts ignore noise.**"),
           ""]
    rows = []
    for name, c in analysis["claims"].items():
        ev = "; ".join(f"{x['text']} [{x['verdict']}"
                       + (f", margin {x['margin']:+.3g} vs band {x['band']:.3g}]" if x["margin"] is not None
                          and x["band"] is not None else "]") for x in c["checks"])
        rows.append([name, c["text"], f"**{c['verdict']}**", ev or "-"])
    out += [table(["claim", "what it says", "verdict", "comparisons (mean over seeds)"], rows, markdown=True), ""]
    paper = analysis["paper_claims"]
    out.append("The same rules applied to the paper's own perplexities (no noise band): "
               + ", ".join(f"{k} {v['verdict']}" for k, v in paper.items())
               + ". R3 read as the smallest |sparse - full| gap fails there against MoBA (|16.54 - 16.68| = 0.14 "
                 "< SSA's 0.68), so R3 is judged the same way here.")
    out.append("")
    return out


def _methods_section(analysis) -> list[str]:
    tab, bands, n = analysis["methods"], analysis["noise_bands"], analysis["block_count"]
    budgets = sorted({int(k.rsplit(".n", 1)[1]) for m in tab.values() for k in m["mean"]
                      if k.startswith("ppl.val.sparse.n")})
    keys = (["ppl.val.full"] + [f"ppl.val.sparse.n{b}" for b in budgets] + [f"relgap.val.n{n}", "ppl.test.full",
            f"ppl.test.sparse.n{n}", "attn.full.mass", "attn.sparse.mass", "attn.full.entropy", "attn.sparse.entropy"]
            + sorted({k for m in tab.values() for k in m["mean"] if k.startswith(("ext.", "copy."))})
            + sorted({k for m in tab.values() for k in m["mean"] if k.startswith("passkey.") and k.endswith("exact")}))
    keys = [k for k in keys if any(k in m["mean"] for m in tab.values())]
    if not keys:
        return []
    methods = list(tab)
    rows = []
    for k in keys:
        row = [k]
        for m in methods:
            v, s = tab[m]["mean"].get(k), tab[m]["spread"].get(k)
            row.append(None if v is None else (f"{fmt(v, 4)} ± {fmt(s / 2, 4)}" if s is not None else fmt(v, 4)))
        row.append(bands.get(k))
        rows.append(row)
    heads = ["metric"] + [f"{m} (seeds {','.join(str(s) for s in tab[m]['seeds'])})" for m in methods] + ["noise band"]
    return ["## Methods (mean over seeds ± half the seed spread)", "",
            "`relgap` = sparse / full - 1 at the trained budget; `ext.ROPE.MODE.xK` = perplexity at K times the "
            "training length (RoPE as trained: none; llama3 scaling); `passkey.MODE.L*.exact` = exact-match "
            "passkey retrieval at that many tokens.", "",
            table(heads, rows, markdown=True), ""]


def markdown(runs: list[dict], invocations: list[dict], analysis: dict, figures: list[str]) -> str:
    from .report import markdown as runs_markdown

    parts = ["# Comparison of attention methods", ""]
    parts += _setup_section(runs, invocations)
    parts += _claims_section(analysis)
    parts += _methods_section(analysis)
    per_run = runs_markdown([as_report_run(r) for r in runs], figures)
    # The per-run report starts with its own title: demote it under this report.
    per_run = per_run.replace("# SSA evaluation report", "## Per-run tables", 1)
    parts += [per_run.replace("\n## ", "\n### ").replace("### Per-run tables", "## Per-run tables", 1), ""]
    parts += ["## Files", ""] + [f"- `{r['name']}`: `{r['source']}`" for r in runs if r.get("source")] + [""]
    return "\n".join(parts)


def write_report(dirs: list, out: Path, plots: bool = True) -> dict:
    """Read compare folders, write OUT/report.md, OUT/claims.json and the PNGs; returns the analysis."""
    runs, invocations = load_dirs(dirs)
    analysis = analyse(runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    if plots:
        try:
            from .plots import write_all
        except ImportError as err:  # e.g. a GPU machine without matplotlib: `--merge` can plot later
            print(f"ssa compare: no figures ({err})")
        else:
            figures = [str(p) for p in write_all([as_report_run(r) for r in runs], out)]
    write_json(out / "claims.json", {"sources": [r["source"] for r in runs], "invocations": invocations, **analysis})
    (out / "report.md").write_text(markdown(runs, invocations, analysis, figures) + "\n", encoding="utf-8")
    return analysis
