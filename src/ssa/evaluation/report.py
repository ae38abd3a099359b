"""Comparison report across runs: markdown tables from RUN_DIR/eval/*.json and metrics.jsonl.

`collect(run_dir)` gathers one run's evaluation results into a flat summary; `markdown(runs)`
renders the comparison. Plots live in `ssa.evaluation.plots`.
"""

from __future__ import annotations

import json
from pathlib import Path

from .results import fmt, read_results, table


def read_metrics(run_dir: Path) -> list[dict]:
    p = Path(run_dir) / "metrics.jsonl"
    rows = []
    if not p.is_file():
        return rows
    for line in p.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line of a running job
        if isinstance(rec, dict):
            rows.append(rec)
    return rows


def collect(run_dir) -> dict:
    """{'name', 'dir', 'method', 'results': {kind: doc}, 'metrics': [...], 'train_config': {...}}."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    results = read_results(run_dir)
    cfg = {}
    if (run_dir / "train_config.json").is_file():
        try:
            cfg = json.loads((run_dir / "train_config.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{run_dir / 'train_config.json'} is not valid JSON: {err}") from None
    if not results and not cfg:
        raise FileNotFoundError(f"{run_dir} has neither eval/*.json nor train_config.json: run `ssa eval {run_dir}` first")
    method = cfg.get("method") or next((d["meta"].get("method") for d in results.values()), None)
    return {"name": run_dir.name, "dir": str(run_dir), "method": method, "results": results,
            "metrics": read_metrics(run_dir), "train_config": cfg}


# ---------------------------------------------------------------------------------------------
# Per-run numbers
# ---------------------------------------------------------------------------------------------
def default_budget(run: dict) -> int | None:
    for doc in run["results"].values():
        bc = doc.get("meta", {}).get("block_count")
        if bc:
            return bc
    return (run["train_config"].get("model") or {}).get("block_count")


def perplexity_at(run: dict, mode: str, block_count=None, key: str = "ppl"):
    doc = run["results"].get("perplexity")
    if not doc:
        return None
    for r in doc["results"]:
        if r["mode"] == mode and (mode == "full" or r["block_count"] == block_count):
            return r.get(key)
    return None


def attention_overall(run: dict, mode: str, key: str):
    doc = run["results"].get("attention")
    if not doc or mode not in doc.get("modes", {}):
        return None
    return doc["modes"][mode]["overall"].get(key)


def extrapolation_at(run: dict, rope: str, mode: str, multiple=None, key: str = "ppl"):
    doc = run["results"].get("extrapolation")  # may be None (no such data set for this run)
    if not doc:
        return None
    rows = [r for r in doc["results"] if r["rope"] == rope and r["mode"] == mode]
    if not rows:
        return None
    if multiple is None:
        multiple = max(r["multiple"] for r in rows)
    for r in rows:
        if r["multiple"] == multiple:
            return r.get(key)
    return None


def retrieval_mean(run: dict, mode: str, key: str):
    doc = run["results"].get("retrieval")
    if not doc:
        return None
    vals = [r[key] for r in doc["results"] if r["mode"] == mode]
    return sum(vals) / len(vals) if vals else None


def commonsense_avg(run: dict, mode: str, key: str = "acc_norm"):
    doc = run["results"].get("commonsense")
    if not doc:
        return None
    vals = [by_mode[mode][key] for by_mode in doc["tasks"].values() if mode in by_mode]
    return sum(vals) / len(vals) if vals else None


def _sub(a, b):
    return None if a is None or b is None else a - b


def _pair(a, b) -> str:
    return f"{fmt(a)} / {fmt(b)}"


# ---------------------------------------------------------------------------------------------
# Markdown
# ---------------------------------------------------------------------------------------------
def markdown(runs: list[dict], figures: list[str] | None = None) -> str:
    parts = ["# SSA evaluation report", ""]
    parts.append("Runs: " + ", ".join(f"`{r['name']}` ({r['method']})" for r in runs) + ".")
    parts.append("Sparse numbers use each run's own block budget (block_count x block_size) unless a column says "
                 "otherwise; `a / b` cells are sparse / full inference. Definitions: docs/design.md §1.5; KL is "
                 "KL(sparse||full) = -ln(sparsity) per query (the reverse direction is infinite when mass is dropped).")
    parts.append("")
    parts.append("## Summary")
    parts.append("")
    ext_keys = extrapolation_keys(runs)
    ext_headers = []
    for key in ext_keys:
        doc = next(r["results"][key] for r in runs if key in r["results"])
        label = Path(str(doc["settings"].get("data", key))).name
        top = max(x["multiple"] for x in doc["results"])
        ext_headers += [f"{label} ppl at {top:g}x, RoPE as trained: sparse / full",
                        f"{label} ppl at {top:g}x, llama3 RoPE: sparse / full"]
    headers = (["run", "method", "budget", "ppl sparse / full", "gap", "bpb sparse / full", "sparsity sparse / full",
                "entropy bits sparse / full", "KL final"] + ext_headers
               + ["retrieval rank@1 sparse / full", "passkey exact sparse / full", "commonsense acc_norm sparse / full"])
    rows = []
    for r in runs:
        n = default_budget(r)
        s = (r["train_config"].get("model") or {}).get("block_size") or next(
            (d["meta"].get("block_size") for d in r["results"].values()), None)
        ps, pf = perplexity_at(r, "sparse", n), perplexity_at(r, "full")
        rows.append([
            r["name"], r["method"], f"{n}x{s}" if n and s else None, _pair(ps, pf), _sub(ps, pf),
            _pair(perplexity_at(r, "sparse", n, "bpb"), perplexity_at(r, "full", None, "bpb")),
            _pair(attention_overall(r, "sparse", "sparsity"), attention_overall(r, "full", "sparsity")),
            _pair(attention_overall(r, "sparse", "entropy_bits"), attention_overall(r, "full", "entropy_bits")),
            attention_overall(r, "sparse", "kl_final_layer") or attention_overall(r, "full", "kl_final_layer"),
        ] + [
            _pair(extrapolation_at(view, rope, "sparse"), extrapolation_at(view, rope, "full"))
            for view in ({**r, "results": {"extrapolation": r["results"].get(key)}} for key in ext_keys)
            for rope in ("none", "llama3")
        ] + [
            _pair(retrieval_mean(r, "sparse", "rank_accuracy"), retrieval_mean(r, "full", "rank_accuracy")),
            _pair(retrieval_mean(r, "sparse", "exact_match"), retrieval_mean(r, "full", "exact_match")),
            _pair(commonsense_avg(r, "sparse"), commonsense_avg(r, "full")),
        ])
    parts += [table(headers, rows, markdown=True), ""]
    parts += _training_section(runs)
    parts += _budget_section(runs)
    parts += _attention_section(runs)
    parts += _extrapolation_section(runs)
    parts += _retrieval_section(runs)
    parts += _commonsense_section(runs)
    if figures:
        parts += ["## Figures", ""] + [f"![{Path(f).stem}]({Path(f).name})" for f in figures] + [""]
    return "\n".join(parts)


def _get(rec: dict, *keys):
    for k in keys:
        if isinstance(rec.get(k), (int, float)):
            return rec[k]
    return None


def train_records(run: dict) -> list[dict]:
    """Training-step records of metrics.jsonl (those with a loss)."""
    return [m for m in run["metrics"] if "step" in m and _get(m, "ce_loss", "ce", "loss") is not None]


def val_records(run: dict) -> list[dict]:
    """Validation records: {"step", "val_ce": {mode: nats}} (a plain number is taken as one mode)."""
    out = []
    for m in run["metrics"]:
        v = m.get("val_ce")
        if isinstance(v, (int, float)):
            v = {"val": v}
        if isinstance(v, dict) and "step" in m:
            out.append({"step": m["step"], "val_ce": v})
    return out


def _training_section(runs):
    rows = []
    for r in runs:
        m = train_records(r)
        if not m:
            continue
        last = m[-1]
        val = val_records(r)
        vtext = ", ".join(f"{k} {fmt(v)}" for k, v in sorted(val[-1]["val_ce"].items())) if val else None
        rows.append([r["name"], last.get("step"), _get(last, "loss"), _get(last, "ce_loss", "ce"),
                     _get(last, "align_loss", "align"), vtext])
    if not rows:
        return []
    return ["## Training (last logged step)", "",
            table(["run", "step", "loss", "ce", "align", "val ce (nats/token) by mode"], rows, markdown=True), ""]


def _budget_section(runs):
    counts = sorted({x["block_count"] for r in runs if r["results"].get("perplexity")
                     for x in r["results"]["perplexity"]["results"] if x["mode"] == "sparse"})
    if not counts:
        return []
    rows = []
    for r in runs:
        doc = r["results"].get("perplexity")
        if not doc:
            continue
        s = doc["settings"]["block_size"]
        row = [r["name"], doc["settings"]["seq_len"], perplexity_at(r, "full")]
        row += [perplexity_at(r, "sparse", n) for n in counts]
        rows.append(row)
    bs = {r["results"]["perplexity"]["settings"]["block_size"] for r in runs if r["results"].get("perplexity")}
    rf = (lambda n: f"n={n} (RF {n * next(iter(bs))})") if len(bs) == 1 else (lambda n: f"n={n}")
    return ["## Budget sweep: perplexity vs sparse budget", "",
            table(["run", "seq_len", "full"] + [rf(n) for n in counts], rows, markdown=True), ""]


def _attention_section(runs):
    rows = []
    for r in runs:
        doc = r["results"].get("attention")
        if not doc:
            continue
        for mode, summ in doc["modes"].items():
            o = summ["overall"]
            rows.append([r["name"], mode, o["sparsity"], o.get("restricted_sparsity"), o["dropped_mass"],
                         o["entropy_bits"], o["kl_final_layer"], o["sink_block_mass"], o["sink_token_mass"],
                         " ".join(fmt(L["sparsity"], 2) for L in summ["layers"])])
    if not rows:
        return []
    return ["## Attention statistics", "",
            "`restricted` averages sparsity only over queries whose history exceeds the budget (where dropping is "
            "possible).", "",
            table(["run", "mode", "sparsity", "restricted", "dropped", "entropy (bits)", "KL final (nats)",
                   "sink block", "sink token", "sparsity by layer"], rows, markdown=True), ""]


def extrapolation_keys(runs) -> list[str]:
    """Result keys of extrapolation documents: the untagged one first, then tagged ones."""
    keys = {k for r in runs for k in r["results"] if k == "extrapolation" or k.startswith("extrapolation:")}
    return sorted(keys, key=lambda k: (k != "extrapolation", k))


def _extrapolation_section(runs):
    out = []
    for key in extrapolation_keys(runs):
        docs = [(r, r["results"][key]) for r in runs if key in r["results"]]
        mults = sorted({x["multiple"] for _, d in docs for x in d["results"]})
        rows = []
        for r, doc in docs:
            view = {**r, "results": {"extrapolation": doc}}
            for rope, mode in sorted({(x["rope"], x["mode"]) for x in doc["results"]}):
                rows.append([r["name"], rope, mode] + [extrapolation_at(view, rope, mode, m) for m in mults])
        data = Path(str(docs[0][1]["settings"].get("data"))).name  # the file, not where one machine keeps it
        out += [f"## Length extrapolation: perplexity by evaluation length (x training length), data: `{data}`", "",
                table(["run", "rope", "mode"] + [f"{m:g}x" for m in mults], rows, markdown=True), ""]
    return out


def _retrieval_section(runs):
    rows = []
    for r in runs:
        doc = r["results"].get("retrieval")
        if not doc:
            continue
        groups: dict = {}
        for x in doc["results"]:
            groups.setdefault((x["haystack"], x["mode"], x["length"]), []).append(x)
        for (h, mode, L), xs in sorted(groups.items()):
            rows.append([r["name"], h, mode, L, sum(x["rank_accuracy"] for x in xs) / len(xs),
                         sum(x["mean_rank"] for x in xs) / len(xs), sum(x["exact_match"] for x in xs) / len(xs),
                         xs[0]["candidates"]])
    if not rows:
        return []
    return ["## Passkey retrieval (mean over depths)", "",
            table(["run", "haystack", "mode", "length", "rank@1", "mean rank", "exact", "candidates"], rows,
                  markdown=True), ""]


def _commonsense_section(runs):
    tasks = []
    for r in runs:
        doc = r["results"].get("commonsense")
        for t in (doc or {}).get("tasks", {}):
            if t not in tasks:
                tasks.append(t)
    rows = []
    for r in runs:
        doc = r["results"].get("commonsense")
        if not doc:
            continue
        modes = sorted({m for by_mode in doc["tasks"].values() for m in by_mode})
        for mode in modes:
            vals = [doc["tasks"].get(t, {}).get(mode, {}).get("acc_norm") for t in tasks]
            rows.append([r["name"], mode, doc["settings"].get("limit"), doc["settings"].get("num_fewshot")] + vals
                        + [commonsense_avg(r, mode)])
    if not rows:
        return []
    return ["## Commonsense multiple choice (acc_norm, lm-evaluation-harness definition)", "",
            table(["run", "mode", "limit", "shots"] + tasks + ["avg"], rows, markdown=True), ""]
