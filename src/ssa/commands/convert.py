"""`ssa convert`: bring a Llama checkpoint or one of the paper's released checkpoints to SSA, or export a
training run's checkpoint as a plain HF directory."""

from __future__ import annotations

import shutil
from pathlib import Path


def add_arguments(parser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-llama", metavar="PATH_OR_DIR",
                     help="a Hugging Face LlamaForCausalLM checkpoint directory (safetensors)")
    src.add_argument("--from-official", metavar="PATH_OR_DIR",
                     help="a checkpoint released with the SSA paper (LlamaNSAForCausalLM, model_type llama-nsa); "
                          "needs --method, which its config does not record")
    src.add_argument("--from-run", metavar="RUN_OR_CHECKPOINT",
                     help="an `ssa train` run directory (its latest checkpoint) or one checkpoint directory")
    parser.add_argument("--out", required=True, metavar="DIR", help="where to write the SSA checkpoint")
    parser.add_argument("--method", default=None,
                        help="attention method of the converted model: full, moba, nsa, ssa "
                             "(--from-llama: default ssa; --from-official: required, the method it was trained with)")
    parser.add_argument("--block-size", type=int, default=None, help="tokens per block (default 16)")
    parser.add_argument("--block-count", type=int, default=None, help="blocks per query at sparse inference (default 16)")
    parser.add_argument("--pad-vocab-multiple", type=int, default=None,
                        help="--from-llama: pad embedding/head rows to a multiple of this (e.g. 64; padded ids "
                             "are never output)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")


def _budget(args) -> dict:
    overrides = {}
    for name in ("block_size", "block_count"):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
            overrides[name] = value
    return overrides


def run(args) -> int:
    from ssa.model.config import METHODS

    if args.method is not None and args.method not in METHODS:
        raise ValueError(f"--method must be one of {', '.join(METHODS)}, got {args.method!r}")
    overrides = _budget(args)
    if args.from_official:
        return _convert_official(args, overrides)
    if args.pad_vocab_multiple is not None:
        if not args.from_llama:
            raise ValueError("--pad-vocab-multiple applies to --from-llama only (a run keeps its trained vocabulary rows)")
        if args.pad_vocab_multiple < 1:
            raise ValueError(f"--pad-vocab-multiple must be >= 1, got {args.pad_vocab_multiple}")
        overrides["pad_vocab_multiple"] = args.pad_vocab_multiple
    if args.from_llama:
        args.method = args.method or "ssa"
        from ssa.model.convert import convert_llama

        out, config, copied = convert_llama(args.from_llama, args.out, args.method, args.overwrite, **overrides)
        note = " (NSA adds branches Llama lacks: outputs differ until trained)" if config.method == "nsa" else (
            " (gates at identity: full-mode outputs equal the Llama model's)")
        print(f"converted {args.from_llama} -> {out}: method={config.method}, {config.num_hidden_layers} layers, "
              f"{config.num_attention_heads}/{config.num_key_value_heads} heads{note}")
        print(f"tokenizer files copied: {', '.join(copied) if copied else 'none found'}")
        return 0
    return _export_run(args, overrides)


def _convert_official(args, overrides) -> int:
    from ssa.model.official import convert_official

    if args.method is None:
        raise ValueError("--from-official needs --method full, moba, nsa or ssa: the released config does not record it")
    out, config, copied = convert_official(args.from_official, args.out, args.method, args.overwrite, **overrides)
    print(f"converted {args.from_official} -> {out}: method={config.method}, {config.num_hidden_layers} layers, "
          f"{config.num_attention_heads}/{config.num_key_value_heads} heads, block_size={config.block_size}, "
          f"block_count={config.block_count}" + (f", nsa_window={config.nsa_window}" if config.method == "nsa" else ""))
    print(f"tokenizer files copied: {', '.join(copied) if copied else 'none found'}")
    return 0


def _export_run(args, overrides) -> int:
    """Copy the model and tokenizer files of a training checkpoint (no optimizer state)."""
    from ssa.training.checkpoint import resolve_checkpoint

    if args.method is not None:
        raise ValueError("--method applies to --from-llama and --from-official only; a run keeps the method it was trained with")
    step = resolve_checkpoint(args.from_run)
    out = Path(args.out).expanduser()
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise ValueError(f"--out {out} exists and is not empty (pass --overwrite to replace its files)")
    out.mkdir(parents=True, exist_ok=True)
    keep = [p for p in step.iterdir() if p.is_file() and (p.suffix in (".json", ".safetensors", ".model", ".txt"))]
    for p in keep:
        shutil.copyfile(p, out / p.name)  # new files, modes from the umask (not the source's 0600 weights)
    if overrides:
        from ssa.model import SSAConfig

        config = SSAConfig.from_pretrained(out)
        for name, value in overrides.items():
            setattr(config, name, value)
        config.save_pretrained(out)
    print(f"exported {step} -> {out} ({', '.join(sorted(p.name for p in keep))})")
    return 0
