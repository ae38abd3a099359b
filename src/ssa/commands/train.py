"""`ssa train`: train a model from a preset or a config file.

    ssa train --preset tiny --method ssa --out runs/tiny-ssa
    ssa train --config my.json --set train.max_steps=50 model.block_count=8 --out runs/x
    ssa train --out runs/tiny-ssa --resume --set train.max_steps=2000
    torchrun --nproc_per_node 2 -m ssa.cli train --preset study --out runs/study-ssa
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--preset", help="preset name from configs/ (tiny, study, 300m, 1b)")
    parser.add_argument("--config", metavar="FILE", help="a JSON config {model, train, data} instead of a preset")
    parser.add_argument("--method", help="full, moba, nsa or ssa (default: the config's, else ssa)")
    parser.add_argument("--out", metavar="RUN_DIR", help="run directory (default runs/<preset>-<method>)")
    parser.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                        help="dotted overrides, e.g. train.max_steps=50 model.block_count=8 data.seq_len=256")
    parser.add_argument("--seed", type=int, help="shorthand for --set train.seed=N")
    parser.add_argument("--resume", action="store_true",
                        help="continue RUN_DIR from its latest checkpoint (config from RUN_DIR/train_config.json)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (metrics still go to metrics.jsonl)")


def _base_config(args) -> tuple[dict, str | None]:
    from ssa.training.config import load_config_file, load_preset

    if args.preset and args.config:
        raise ValueError("give either --preset or --config, not both")
    if args.resume:
        if args.preset or args.config:
            raise ValueError("--resume takes its config from RUN_DIR/train_config.json: drop --preset/--config")
        if not args.out:
            raise ValueError("--resume needs --out RUN_DIR")
        saved = load_config_file(Path(args.out) / "train_config.json")
        base = {k: saved[k] for k in ("model", "train", "data", "method", "preset") if k in saved}
        if args.method and args.method != saved.get("method"):
            raise ValueError(f"--method {args.method} differs from the run's method {saved.get('method')!r}")
        return base, saved.get("preset")
    if args.config:
        return load_config_file(args.config), None
    name = args.preset or "tiny"
    return load_preset(name), name


def run(args) -> int:
    from ssa.training.config import resolve_config

    base, preset = _base_config(args)
    overrides = list(args.overrides or [])
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    cfg = resolve_config(base, method=args.method, overrides=overrides, preset=preset)
    out = Path(args.out) if args.out else Path("runs") / f"{preset or 'custom'}-{cfg['method']}"

    from ssa.cli import CommandError
    from ssa.training.trainer import train

    try:
        summary = train(cfg, out, resume=args.resume, progress=not args.no_progress)
    except KeyboardInterrupt:
        raise CommandError(f"interrupted; continue from the last checkpoint with: ssa train --out {out} --resume") from None
    except FloatingPointError as err:  # a diverged run: the checkpoints before it are intact
        raise CommandError(str(err)) from None
    last = summary.get("last") or {}
    line = {"run_dir": summary["run_dir"], "step": summary["step"], "wall_s": round(summary["wall_s"], 1),
            "loss": last.get("loss"), "ce_loss": last.get("ce_loss"), "align_loss": last.get("align_loss")}
    if summary.get("val"):
        line["val_ce"] = summary["val"].get("val_ce")
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun only rank 0 reports
        print(json.dumps(line))
    return 0
