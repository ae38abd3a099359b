"""PNG figures of the comparison report (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# Sparse and full curves of one run share a colour; they must stay apart when they coincide, so
# full gets a dashed line and hollow squares drawn over sparse's solid line and filled circles.
MODE_STYLE = {"sparse": dict(ls="-", marker="o"), "full": dict(ls="--", marker="s", mfc="none", ms=7)}
# A perplexity axis spans at least this fraction of its values: a 0.05% difference drawn across the
# whole plot height would look like an effect.
MIN_RELATIVE_SPAN = 0.02


def _colors(runs):
    cmap = plt.get_cmap("tab10")
    return {r["name"]: cmap(i % 10) for i, r in enumerate(runs)}


def _save(fig, path: Path, tight: bool = True) -> Path:
    if tight:
        fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def honest_ylim(values, min_relative_span: float = MIN_RELATIVE_SPAN) -> tuple[float, float] | None:
    """y limits around `values` that span at least `min_relative_span` of their midpoint.

    None when the values already span more (matplotlib's own limits are then honest).
    """
    lo, hi = min(values), max(values)
    mid = (lo + hi) / 2
    need = min_relative_span * abs(mid)
    if hi - lo >= need or need == 0:
        return None
    return mid - need / 2 - (hi - lo) * 0.05, mid + need / 2 + (hi - lo) * 0.05


def _plain_numbers(ax) -> None:
    """Tick labels as the values themselves, never as an offset ("+1.697") plus tiny deltas."""
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")


def budget_curve(runs, path: Path) -> Path | None:
    data = [(r, r["results"]["perplexity"]) for r in runs if r["results"].get("perplexity")]
    if not data:
        return None
    colors = _colors(runs)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    rfs = sorted({x["receptive_field"] for _, d in data for x in d["results"] if x["receptive_field"]})
    ppls = []
    for r, doc in data:
        sparse = [x for x in doc["results"] if x["mode"] == "sparse"]
        if sparse:
            ax.plot([x["receptive_field"] for x in sparse], [x["ppl"] for x in sparse], color=colors[r["name"]],
                    label=f"{r['name']} sparse", **MODE_STYLE["sparse"])
        full = [x for x in doc["results"] if x["mode"] == "full"]
        if full and rfs:  # full attention has no budget: one value, drawn across the swept budgets
            ax.plot(rfs, [full[0]["ppl"]] * len(rfs), color=colors[r["name"]], lw=1, label=f"{r['name']} full",
                    **MODE_STYLE["full"])
        ppls += [x["ppl"] for x in sparse + full[:1] if x.get("ppl") is not None]
    ax.set_xscale("log", base=2)
    ax.set_xticks(rfs, [str(v) for v in rfs])
    ax.minorticks_off()
    ax.set_xlabel("receptive field (block_count x block_size tokens)")
    ax.set_ylabel("perplexity")
    ax.set_title("Sparse budget sweep (solid, filled: sparse; dashed, hollow: full attention)", fontsize=10)
    _plain_numbers(ax)
    ylim = honest_ylim(ppls) if ppls else None
    if ylim:
        ax.set_ylim(*ylim)
        ax.annotate(f"all values within {max(ppls) - min(ppls):.2g}; the axis spans {MIN_RELATIVE_SPAN:.0%} "
                    "of the value so that noise does not look like an effect",
                    xy=(0.01, 0.01), xycoords="axes fraction", fontsize=7, color="dimgray")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def ppl_vs_length(runs, path: Path, key: str = "extrapolation") -> Path | None:
    data = [(r, r["results"][key]) for r in runs if r["results"].get(key)]
    if not data:
        return None
    ropes = [r for r in ("none", "llama3") if any(x["rope"] == r for _, d in data for x in d["results"])]
    colors = _colors(runs)
    fig, axes = plt.subplots(1, len(ropes), figsize=(6 * len(ropes), 4.5), squeeze=False, sharey=True)
    for ax, rope in zip(axes[0], ropes):
        for r, doc in data:
            for mode in ("sparse", "full"):
                pts = sorted((x["length"], x["ppl"]) for x in doc["results"] if x["rope"] == rope and x["mode"] == mode)
                if pts:
                    ax.plot(*zip(*pts), color=colors[r["name"]], label=f"{r['name']} {mode}", **MODE_STYLE[mode])
        train_len = data[0][1]["settings"].get("train_len")
        if train_len:
            ax.axvline(train_len, color="gray", lw=0.8, ls=":")
        lengths = sorted({x["length"] for _, d in data for x in d["results"]})
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(L) for L in lengths])
        ax.minorticks_off()
        ppls = [x["ppl"] for _, d in data for x in d["results"] if x.get("ppl")]
        if ppls and max(ppls) / min(ppls) > 3:
            from matplotlib.ticker import FormatStrFormatter

            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
            ax.tick_params(axis="y", which="minor", labelsize=7)
        else:
            _plain_numbers(ax)
            ylim = honest_ylim(ppls) if ppls else None
            if ylim:
                ax.set_ylim(*ylim)
        ax.set_xlabel("evaluation length (tokens); dotted: training length")
        src = Path(str(data[0][1]["settings"].get("data", ""))).name
        ax.set_title(f"{src}: RoPE {'as trained' if rope == 'none' else 'llama3-scaled (factor L/train_len)'}",
                     fontsize=10)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("perplexity")
    axes[0][-1].legend(fontsize=7, ncol=2)
    return _save(fig, path)


def attention_by_layer(runs, path: Path) -> Path | None:
    data = [(r, r["results"]["attention"]) for r in runs if r["results"].get("attention")]
    if not data:
        return None
    colors = _colors(runs)
    keys = [("sparsity", "attention sparsity (mass in own selection)"), ("entropy_bits", "attention entropy (bits)"),
            ("sink_block_mass", "sink mass (first block)")]
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4.2))
    for ax, (key, title) in zip(axes, keys):
        for r, doc in data:
            for mode, summ in doc["modes"].items():
                ys = [L[key] for L in summ["layers"]]
                ax.plot(range(len(ys)), ys, color=colors[r["name"]], label=f"{r['name']} {mode}",
                        **MODE_STYLE.get(mode, MODE_STYLE["sparse"]))
        ax.set_xlabel("layer")
        ax.set_title(title)
        _plain_numbers(ax)
        if key == "sparsity":
            ax.set_ylim(0, 1.02)
        else:
            ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    n = data[0][1]["settings"].get("block_count")
    s = data[0][1]["settings"].get("block_size")
    fig.suptitle(f"Attention statistics by layer (budget {n}x{s}; solid, filled: sparse inference; dashed, hollow: "
                 "full)", fontsize=10)
    axes[-1].legend(fontsize=7)
    return _save(fig, path)


def retrieval_heatmap(runs, path: Path, key: str = "rank_accuracy") -> Path | None:
    panels = []
    for r in runs:
        doc = r["results"].get("retrieval")
        if not doc:
            continue
        for mode in ("sparse", "full"):
            rows = [x for x in doc["results"] if x["mode"] == mode]
            if rows:
                panels.append((r["name"], mode, rows))
    if not panels:
        return None
    cols = min(4, len(panels))
    nrows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(3.9 * cols + 1, 3.3 * nrows + 0.4), squeeze=False,
                             constrained_layout=True)
    im = None
    for ax, (name, mode, rows) in zip(axes.flat, panels):
        lengths = sorted({x["length"] for x in rows})
        depths = sorted({x["depth"] for x in rows})
        grid = [[0.0] * len(lengths) for _ in depths]
        counts = [[0] * len(lengths) for _ in depths]
        for x in rows:  # mean over haystacks
            i, j = depths.index(x["depth"]), lengths.index(x["length"])
            grid[i][j] += x[key]
            counts[i][j] += 1
        grid = [[g / max(c, 1) for g, c in zip(gr, cr)] for gr, cr in zip(grid, counts)]
        im = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="upper")
        for i in range(len(depths)):
            for j in range(len(lengths)):
                ax.text(j, i, f"{grid[i][j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if grid[i][j] < 0.6 else "black")
        ax.set_xticks(range(len(lengths)), [str(L) for L in lengths], fontsize=7)
        ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths], fontsize=7)
        ax.set_xlabel("context length (tokens)", fontsize=8)
        ax.set_ylabel("needle depth", fontsize=8)
        ax.set_title(f"{name} {mode}", fontsize=9)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    chance, label = retrieval_chance([x for _, _, rows in panels for x in rows], key)
    fig.suptitle(f"Passkey retrieval: {label}", fontsize=10)
    bar = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8)
    bar.ax.axhline(chance, color="red", lw=2)
    bar.ax.text(-0.2, chance, "chance", color="red", fontsize=7, ha="right", va="center",
                transform=bar.ax.get_yaxis_transform())
    return _save(fig, path, tight=False)


def retrieval_chance(rows: list[dict], key: str) -> tuple[float, str]:
    """The score of a model that ignores the context, and a title that states it.

    rank@1: the true key is one of `candidates` keys scored alike, so 1 / candidates. Exact match:
    guessing a random 5-digit key, 1e-5.
    """
    if key == "rank_accuracy":
        counts = sorted({x["candidates"] for x in rows if x.get("candidates")})
        if len(counts) == 1:
            chance = 1 / counts[0]
            return chance, f"rank@1 of the true key among {counts[0]} candidates (chance {chance:.2f}, red line)"
        chance = 1 / counts[0] if counts else 0.0
        return chance, f"rank@1 of the true key (chance at most {chance:.2f}, red line)"
    return 1e-5, "greedy exact match of a random 5-digit key (chance 1e-5, red line)"


def training_curves(runs, path: Path) -> Path | None:
    from .report import _get, train_records, val_records

    data = [(r, train_records(r), val_records(r)) for r in runs]
    data = [x for x in data if x[1]]
    if not data:
        return None
    colors = _colors(runs)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r, m, val in data:
        ax.plot([x["step"] for x in m], [_get(x, "ce_loss", "ce", "loss") for x in m], color=colors[r["name"]],
                alpha=0.6, lw=1, label=f"{r['name']} train ce")
        for mode in sorted({k for v in val for k in v["val_ce"]}):
            pts = [(v["step"], v["val_ce"][mode]) for v in val if mode in v["val_ce"]]
            ax.plot(*zip(*pts), color=colors[r["name"]], label=f"{r['name']} val {mode}",
                    **MODE_STYLE.get(mode, dict(ls=":", marker="^")))
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title("Training curves (markers: validation; solid, filled: sparse; dashed, hollow: full)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def selection_distance(runs, path: Path) -> Path | None:
    """Where the selected blocks are (sparse mode, last layer) and where full attention's mass is."""
    data = [(r, r["results"]["attention"]) for r in runs if r["results"].get("attention")]
    if not data:
        return None
    colors = _colors(runs)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for r, doc in data:
        summ = doc["modes"].get("sparse") or next(iter(doc["modes"].values()))
        edges = summ["distance_bin_edges"]
        last = summ["layers"][-1]
        for ax, key in zip(axes, ("selection_distance_hist", "distance_mass")):
            ys = last[key]
            k = max((i for i, y in enumerate(ys) if y > 0), default=0) + 1
            ax.plot(range(k), ys[:k], marker="o", color=colors[r["name"]], label=r["name"])
            ax.set_xticks(range(k), [str(e) for e in edges[:k]], fontsize=7)
    axes[0].set_title("selected blocks by distance (last layer, sparse)")
    axes[1].set_title("full-attention mass by block distance (last layer)")
    for ax in axes:
        ax.set_xlabel("query block - key block (bin lower edge, blocks)")
        ax.set_ylabel("fraction")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    return _save(fig, path)


ALL = {
    "budget_curve.png": budget_curve,
    "ppl_vs_length.png": ppl_vs_length,
    "attention_by_layer.png": attention_by_layer,
    "selection_distance.png": selection_distance,
    "retrieval_heatmap.png": retrieval_heatmap,
    "training_curves.png": training_curves,
}


def write_all(runs, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fn in ALL.items():
        p = fn(runs, out_dir / name)
        if p is not None:
            written.append(p)
    from .report import extrapolation_keys

    for key in extrapolation_keys(runs):
        if key != "extrapolation":
            p = ppl_vs_length(runs, out_dir / f"ppl_vs_length-{key.split(':', 1)[1]}.png", key)
            if p is not None:
                written.append(p)
    return written
