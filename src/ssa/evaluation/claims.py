"""The paper's claims R1-R6 as checks on evaluated runs, with a noise band from the seed spread.

Every run is reduced to flat scalar metrics (`run_metrics`), runs of one method are averaged over
seeds (`method_table`), and each claim is a list of comparisons between method means. A
comparison has a *margin* in the claim's favour (e.g. other method's perplexity minus SSA's for
"SSA is lower") and the *noise band* of its metric:

    noise band(metric) = the largest seed-to-seed spread (max - min over seeds) of that metric
                         among the methods that were run with two or more seeds
                         (0 when no method has two seeds: the report then says so)

    comparison:  holds           margin >  band
                 does not hold   margin < -band
                 inside the noise   |margin| <= band
    claim:       does not hold   if any comparison does not hold
                 holds           if every comparison holds
                 inside the noise   otherwise
                 not measured    if no comparison could be made (a metric or method is missing)

R5's monotonicity is the one check of another shape: it fails when some step to a larger budget
raises perplexity by more than the band, and holds otherwise (flat steps are not violations);
the overall fall from the smallest budget to full attention is a separate ordinary comparison.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

HOLDS, FAILS, NOISE, MISSING = "holds", "does not hold", "inside the noise", "not measured"

CLAIMS = {
    "R1": "SSA has the best sparse-inference perplexity of the four methods",
    "R2": "SSA's full-inference perplexity stays within about 2% of FullAttn's and far below MoBA's",
    "R3": "SSA has the smallest sparse - full gap among the methods that run both modes",
    "R4": "SSA's attention is the most concentrated: the highest mass in the selected blocks, the lowest "
          "entropy, in both modes",
    "R5": "SSA's perplexity falls monotonically as the budget grows; MoBA's does not (its full mode is worse "
          "than its sparse mode)",
    "R6": "SSA extrapolates best to 2x and 4x the training length (RoPE as trained)",
    "R6b": "the same with llama3 RoPE scaling (not a claim of the paper; reported alongside)",
    "goal": "SSA's sparse perplexity at the trained budget is within 1% of its own full perplexity",
}

# The paper's numbers (1B model, 100B tokens, 8k context, receptive field 256; WikiText perplexity).
PAPER_PPL = {"full": {"sparse": 17.05, "full": 15.13}, "moba": {"sparse": 16.54, "full": 16.68},
             "nsa": {"sparse": 16.02}, "ssa": {"sparse": 15.96, "full": 15.28}}


# ----------------------------------------------------------------------------------------------
# Metrics of one run
# ----------------------------------------------------------------------------------------------
def _ppl_metrics(doc: dict, split: str) -> dict:
    out = {}
    for r in doc.get("results", []):
        if r["mode"] == "full":
            out[f"ppl.{split}.full"] = r["ppl"]
        else:
            out[f"ppl.{split}.sparse.n{r['block_count']}"] = r["ppl"]
    full = out.get(f"ppl.{split}.full")
    if full is not None:
        for k, v in list(out.items()):
            if ".sparse.n" in k and v is not None:
                n = k.rsplit(".n", 1)[1]
                out[f"gap.{split}.n{n}"] = v - full
                out[f"absgap.{split}.n{n}"] = abs(v - full)
                out[f"relgap.{split}.n{n}"] = v / full - 1.0
    return out


def run_metrics(results: dict) -> dict:
    """Flat scalar metrics of one run from its evaluation documents (keys as in `read_results`:
    "perplexity", "perplexity:test", "attention", "extrapolation", "retrieval", "copy")."""
    out: dict[str, float] = {}
    if results.get("perplexity"):
        out.update(_ppl_metrics(results["perplexity"], "val"))
    if results.get("perplexity:test"):
        out.update(_ppl_metrics(results["perplexity:test"], "test"))
    for mode, summ in (results.get("attention") or {}).get("modes", {}).items():
        out[f"attn.{mode}.mass"] = summ["overall"]["sparsity"]
        out[f"attn.{mode}.entropy"] = summ["overall"]["entropy_bits"]
    for r in (results.get("extrapolation") or {}).get("results", []):
        out[f"ext.{r['rope']}.{r['mode']}.x{r['multiple']:g}"] = r["ppl"]
    cells: dict = {}
    for r in (results.get("retrieval") or {}).get("results", []):
        cells.setdefault((r["mode"], r["length"]), []).append(r)
    for (mode, length), rs in cells.items():
        out[f"passkey.{mode}.L{length}.exact"] = sum(r["exact_match"] for r in rs) / len(rs)
        out[f"passkey.{mode}.L{length}.rank1"] = sum(r["rank_accuracy"] for r in rs) / len(rs)
    for mode, r in (results.get("copy") or {}).get("modes", {}).items():
        out[f"copy.{mode}.accuracy"] = r["accuracy"]
    return {k: float(v) for k, v in out.items() if isinstance(v, (int, float)) and math.isfinite(v)}


# ----------------------------------------------------------------------------------------------
# Seeds: means, spreads, noise bands
# ----------------------------------------------------------------------------------------------
def method_table(runs: list[dict]) -> dict:
    """{method: {"seeds": [...], "mean": {metric: v}, "spread": {metric: max-min}, "n": {metric: count}}}.

    `runs` items: {"method", "seed", "metrics"}. A metric's mean is over the seeds that have it."""
    out: dict = {}
    for r in runs:
        m = out.setdefault(r["method"], {"seeds": [], "values": {}})
        m["seeds"].append(r["seed"])
        for k, v in r["metrics"].items():
            m["values"].setdefault(k, []).append(v)
    for m in out.values():
        vals = m.pop("values")
        m["mean"] = {k: sum(v) / len(v) for k, v in vals.items()}
        m["spread"] = {k: max(v) - min(v) for k, v in vals.items() if len(v) >= 2}
        m["n"] = {k: len(v) for k, v in vals.items()}
    return out


def noise_bands(table: dict) -> dict:
    """{metric: largest seed spread over methods with >= 2 seeds of it} (absent: no estimate)."""
    bands: dict[str, float] = {}
    for m in table.values():
        for k, s in m["spread"].items():
            bands[k] = max(bands.get(k, 0.0), s)
    return bands


# ----------------------------------------------------------------------------------------------
# Comparisons and claims
# ----------------------------------------------------------------------------------------------
@dataclass
class Check:
    text: str
    metric: str
    margin: float | None  # in the claim's favour; None = not measured
    band: float | None  # None = no seed spread for this metric
    verdict: str


def compare(margin: float | None, band: float | None) -> str:
    if margin is None:
        return MISSING
    b = band or 0.0
    if margin > b:
        return HOLDS
    if margin < -b:
        return FAILS
    return NOISE


def combine(verdicts: list[str]) -> str:
    measured = [v for v in verdicts if v != MISSING]
    if not measured:
        return MISSING
    if FAILS in measured:
        return FAILS
    if all(v == HOLDS for v in measured):
        return HOLDS
    return NOISE


class _Ctx:
    def __init__(self, table: dict, bands: dict):
        self.table, self.bands = table, bands
        self.checks: list[Check] = []

    def get(self, method: str, metric: str):
        return (self.table.get(method) or {}).get("mean", {}).get(metric)

    def add(self, text: str, metric: str, margin, band=None, verdict: str | None = None) -> None:
        band = self.bands.get(metric) if band is None else band
        self.checks.append(Check(text, metric, margin, band, verdict or compare(margin, band)))

    def lower(self, metric: str, better: str, worse: str, factor: float = 1.0, what: str = "") -> None:
        """`better`'s metric is below `factor` x `worse`'s (margin = factor*worse - better)."""
        a, b = self.get(better, metric), self.get(worse, metric)
        margin = None if a is None or b is None else factor * b - a
        scale = f"{factor:g} x " if factor != 1 else ""
        self.add(f"{what or metric}: {better} {_f(a)} < {scale}{worse} {_f(b)}", metric, margin)

    def higher(self, metric: str, better: str, worse: str, what: str = "") -> None:
        a, b = self.get(better, metric), self.get(worse, metric)
        margin = None if a is None or b is None else a - b
        self.add(f"{what or metric}: {better} {_f(a)} > {worse} {_f(b)}", metric, margin)


def _f(x) -> str:
    return "-" if x is None else f"{x:.4g}"


def evaluate_claims(table: dict, bands: dict, block_count: int, budgets: list[int],
                    multiples=(2, 4)) -> dict:
    """{claim: {"text", "verdict", "checks": [Check as dict]}} for R1-R6, R6b and the 1% goal.

    `block_count` is the trained budget n (sparse numbers of R1-R4 use it); `budgets` the swept
    sparse budgets of R5 (ascending)."""
    methods = [m for m in ("full", "moba", "nsa", "ssa") if m in table]
    others = [m for m in methods if m != "ssa"]
    both_modes = [m for m in others if m != "nsa"]
    n = block_count
    out = {}

    def claim(name, fill):
        ctx = _Ctx(table, bands)
        if "ssa" in table:
            fill(ctx)
        out[name] = {"text": CLAIMS[name], "verdict": combine([c.verdict for c in ctx.checks]),
                     "checks": [asdict(c) for c in ctx.checks]}

    def r1(c):
        for o in others:
            c.lower(f"ppl.val.sparse.n{n}", "ssa", o, what=f"val ppl, sparse n={n}")

    def r2(c):
        c.lower("ppl.val.full", "ssa", "full", factor=1.02, what="val ppl, full mode")
        if "moba" in table:
            c.lower("ppl.val.full", "ssa", "moba", what="val ppl, full mode")

    def r3(c):
        for o in both_modes:
            c.lower(f"absgap.val.n{n}", "ssa", o, what=f"|sparse n={n} - full| val ppl")

    def r4(c):
        for mode in ("full", "sparse"):
            for o in others:
                if o == "nsa" and mode == "full":
                    continue
                c.higher(f"attn.{mode}.mass", "ssa", o, what=f"mass in selected blocks, {mode} mode")
                c.lower(f"attn.{mode}.entropy", "ssa", o, what=f"entropy (bits), {mode} mode")

    def r5(c):
        seq = [f"ppl.val.sparse.n{b}" for b in sorted(budgets)] + ["ppl.val.full"]
        vals = [c.get("ssa", k) for k in seq]
        if all(v is not None for v in vals) and len(vals) >= 2:
            rises = [(vals[i + 1] - vals[i], seq[i], seq[i + 1]) for i in range(len(vals) - 1)]
            worst, a, b = max(rises)
            band = max(bands.get(k, 0.0) for k in seq)
            verdict = FAILS if worst > band else HOLDS
            c.add(f"ssa never rises with the budget (largest step {a} -> {b}: {worst:+.4g}; "
                  f"sequence {' '.join(_f(v) for v in vals)})", "ppl.val.sparse.*", -worst, band, verdict)
            c.add(f"ssa falls overall: {seq[0]} {_f(vals[0])} > full {_f(vals[-1])}", seq[0],
                  vals[0] - vals[-1], band)
        else:
            c.add("ssa budget sweep", "ppl.val.sparse.*", None)
        if "moba" in table:
            full, sparse = c.get("moba", "ppl.val.full"), c.get("moba", f"ppl.val.sparse.n{n}")
            margin = None if full is None or sparse is None else full - sparse
            band = max(bands.get("ppl.val.full", 0.0), bands.get(f"ppl.val.sparse.n{n}", 0.0)) \
                if bands else None
            c.add(f"moba full {_f(full)} worse than its sparse n={n} {_f(sparse)}", "ppl.val.full", margin, band)

    def r6(rope):
        def fill(c):
            for mult in multiples:
                for mode in ("full", "sparse"):
                    for o in others:
                        if o == "nsa" and mode == "full":
                            continue
                        c.lower(f"ext.{rope}.{mode}.x{mult:g}", "ssa", o, what=f"ppl at {mult:g}x, {mode} mode")
        return fill

    def goal(c):
        full, sparse = c.get("ssa", "ppl.val.full"), c.get("ssa", f"ppl.val.sparse.n{n}")
        margin = None if full is None or sparse is None else 0.01 * full - (sparse - full)
        rel = None if margin is None else 100 * (sparse / full - 1)
        c.add(f"ssa sparse n={n} {_f(sparse)} vs full {_f(full)}: gap {_f(rel)}% (goal <= 1%)",
              f"gap.val.n{n}", margin)

    for name, fill in (("R1", r1), ("R2", r2), ("R3", r3), ("R4", r4), ("R5", r5),
                       ("R6", r6("none")), ("R6b", r6("llama3")), ("goal", goal)):
        claim(name, fill)
    return out


def paper_verdicts() -> dict:
    """R1-R3 judged on the paper's own perplexities with the same rules (no noise band)."""
    table = {}
    for m, d in PAPER_PPL.items():
        mean = {}
        if "full" in d:
            mean["ppl.val.full"] = d["full"]
        mean["ppl.val.sparse.n16"] = d["sparse"]
        if "full" in d:
            mean["absgap.val.n16"] = abs(d["sparse"] - d["full"])
        table[m] = {"seeds": [0], "mean": mean, "spread": {}, "n": {}}
    res = evaluate_claims(table, {}, 16, [16])
    return {k: res[k] for k in ("R1", "R2", "R3")}
