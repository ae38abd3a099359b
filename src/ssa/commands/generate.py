"""`ssa generate`: stream text from a checkpoint with a prompt, an attention mode and a budget."""

from __future__ import annotations

import sys
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint directory (config.json + safetensors) or an `ssa train` run directory")
    parser.add_argument("--prompt", help="prompt text (or use --prompt-file)")
    parser.add_argument("--prompt-file", help="read the prompt from this file")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--mode", choices=("sparse", "full"), default=None,
                        help="attention at inference (default: the checkpoint's; sparse for moba/nsa/ssa)")
    parser.add_argument("--block-count", type=int, default=None, help="sparse budget: blocks per query")
    parser.add_argument("--block-size", type=int, default=None, help="tokens per block")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-cache", action="store_true", help="recompute the whole prefix every token (slow; for checking)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: bfloat16 on GPU, float32 on CPU)")


def _check_args(args) -> str:
    if (args.prompt is None) == (args.prompt_file is None):
        raise ValueError("give exactly one of --prompt TEXT or --prompt-file FILE")
    if args.prompt_file is not None:
        path = Path(args.prompt_file).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"--prompt-file {path} does not exist")
        prompt = path.read_text(encoding="utf-8")
    else:
        prompt = args.prompt
    if not prompt:
        raise ValueError("the prompt is empty")
    for name in ("max_new_tokens", "block_count", "block_size", "num_beams"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.temperature < 0:
        raise ValueError(f"--temperature must be >= 0 (0 = greedy), got {args.temperature}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise ValueError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.top_k is not None and args.top_k < 1:
        raise ValueError(f"--top-k must be >= 1, got {args.top_k}")
    return prompt


def load(checkpoint, device=None, dtype=None):
    """(model in eval mode, tokenizer) from a checkpoint directory or a training run directory."""
    from transformers import AutoTokenizer

    from ssa.evaluation.loading import resolve_device, resolve_dtype
    from ssa.training.checkpoint import load_model, resolve_checkpoint

    path = resolve_checkpoint(checkpoint)  # a run dir -> its latest step
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    # AutoTokenizer, not tokenizer.json only: converted Llama checkpoints may carry other formats.
    if not any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise FileNotFoundError(f"checkpoint {path} has no tokenizer files (tokenizer.json)")
    tokenizer = AutoTokenizer.from_pretrained(path)
    return load_model(path, device=device, dtype=dtype).eval(), tokenizer


def run(args) -> int:
    import torch
    from transformers import TextStreamer

    prompt = _check_args(args)
    model, tokenizer = load(args.checkpoint, args.device, args.dtype)
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(model.device)
    if ids.shape[1] == 0:
        raise ValueError("the prompt encodes to zero tokens")
    torch.manual_seed(args.seed)
    sample = args.temperature > 0
    settings = dict(
        max_new_tokens=args.max_new_tokens, do_sample=sample, num_beams=args.num_beams,
        use_cache=not args.no_cache, attention_mode=args.mode, block_count=args.block_count,
        block_size=args.block_size, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id or 0,
    )
    if sample:
        settings.update(temperature=args.temperature, top_k=args.top_k or 0, top_p=args.top_p or 1.0)
    # Beam search picks the best beam at the end, so only greedy and sampling can stream.
    streamer = TextStreamer(tokenizer, skip_prompt=True) if args.num_beams == 1 else None
    sys.stdout.write(prompt)
    sys.stdout.flush()
    out = model.generate(ids, attention_mask=torch.ones_like(ids), streamer=streamer, **settings)
    if streamer is None:
        print(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return 0
