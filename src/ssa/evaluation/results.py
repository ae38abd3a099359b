"""Evaluation results: JSON files under RUN_DIR/eval and plain-text tables."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

from ssa.training.checkpoint import write_text_atomic

KINDS = ("perplexity", "attention", "extrapolation", "retrieval", "commonsense", "copy")


def write_result(path: Path, kind: str, meta: dict, settings: dict, payload: dict, tag: str | None = None) -> Path:
    """Write {"kind", "tag", "meta", "settings", "created", **payload} atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"kind": kind, "tag": tag, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "meta": meta, "settings": settings, **payload}
    write_text_atomic(path, json.dumps(_clean(doc), indent=1))
    return path


def _clean(x):
    """JSON without NaN/inf (written as null)."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def read_results(run_dir: Path) -> dict[str, dict]:
    """{key: document} for RUN_DIR/eval/*.json: key = kind for `<kind>.json`, `kind:tag` for
    `<kind>-<tag>.json` (written with `ssa eval --tag`). The newest file of a key wins."""
    out: dict[str, dict] = {}
    d = Path(run_dir) / "eval"
    if not d.is_dir():
        return out
    for p in sorted(d.glob("*.json"), key=lambda q: q.stat().st_mtime):
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"evaluation result {p} is not valid JSON: {err}") from None
        if isinstance(doc, dict) and doc.get("kind") in KINDS:
            tag = doc.get("tag")
            out[f"{doc['kind']}:{tag}" if tag else doc["kind"]] = doc
    return out


def fmt(x, digits: int = 3) -> str:
    """A table cell: '-' for missing, 'inf'/'-inf'/'nan', and never '-0.000' for a value that rounds to 0."""
    if x is None:
        return "-"
    if isinstance(x, float):
        if math.isnan(x):
            return "nan"
        if not math.isfinite(x):
            return "inf" if x > 0 else "-inf"
        text = f"{x:.0f}" if abs(x) >= 1000 else f"{x:.{digits}f}"
        return text[1:] if text.startswith("-") and not text.strip("-0.") else text
    return str(x)


def table(headers: list[str], rows: list[list], markdown: bool = False) -> str:
    cells = [[fmt(c) for c in r] for r in rows]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in cells]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = lambda r: "  ".join(c.rjust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])
