"""`ssa report RUN_DIR [RUN_DIR ...] --out DIR`: markdown comparison table and PNG plots."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories evaluated with `ssa eval`")
    p.add_argument("--out", default="report", help="output folder for report.md and the PNGs (default ./report)")
    p.add_argument("--no-plots", action="store_true", help="only the markdown report")


def run(args) -> int:
    from ssa.evaluation.report import collect, markdown

    runs = [collect(Path(d)) for d in args.runs]
    names = [r["name"] for r in runs]
    for i, r in enumerate(runs):  # disambiguate equal folder names
        if names.count(r["name"]) > 1:
            r["name"] = f"{Path(r['dir']).parent.name}/{r['name']}"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figures = []
    if not args.no_plots:
        from ssa.evaluation.plots import write_all

        figures = [str(p) for p in write_all(runs, out)]
    text = markdown(runs, figures)
    (out / "report.md").write_text(text + "\n", encoding="utf-8")
    print(text)
    print(f"\nwrote {out / 'report.md'}" + (f" and {len(figures)} figures" if figures else ""))
    return 0
