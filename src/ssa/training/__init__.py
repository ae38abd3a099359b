"""Training: tokenizers, data, the training loop, checkpoints and presets.

Submodules import torch / transformers lazily where they can, so `ssa --help` stays fast.
Main entry points:
    ssa.training.checkpoint.load_for_inference(path, device=None, dtype=None) -> (model, tokenizer)
    ssa.training.checkpoint.resolve_checkpoint(path) -> Path of a checkpoint step directory
    ssa.training.trainer.train(config, run_dir, resume=False) -> summary dict
    ssa.training.config.resolve_config(...) / load_preset(name)
"""
