"""`python -m ssa.evaluation.lm_eval ARGS`: lm_eval's own command line with the "ssa" model registered.

lm-eval 0.4.x resolves `--model NAME` only against its built-in registry, so a plain
`lm_eval --model ssa` cannot see an installed package. This entry registers the model first and
then hands the arguments, unchanged, to lm_eval's CLI:

    python -m ssa.evaluation.lm_eval --model ssa \\
        --model_args pretrained=runs/tiny-ssa,attention_mode=sparse,block_count=16 \\
        --tasks piqa --limit 50

(Newer lm-eval releases that discover plugins through the `lm_eval.models` entry-point group,
which this package declares, also accept the plain `lm_eval --model ssa ...`.)
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        print("ssa lm_eval: error: lm-eval is not installed; run: pip install 'lm-eval>=0.4.4'", file=sys.stderr)
        return 2
    import ssa.evaluation.lm_eval_adapter  # noqa: F401  (registers "ssa")
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0]] + list(argv)
    cli_evaluate()
    return 0


if __name__ == "__main__":
    sys.exit(main())
