"""Evaluation of SSA checkpoints: what docs/design.md §1.5 measures.

Modules (each usable on its own, all through the model's public forward):
  loading          checkpoint + tokenizer + run metadata (training length, byte-level data)
  text             documents, token streams and UTF-8 byte counts for bits per byte
  scoring          per-token log-likelihoods of windows under a chosen attention mode / budget
  perplexity       held-out perplexity over budgets, and length extrapolation with RoPE scaling
  attention        attention statistics (sparsity, entropy, KL, sink, distances) per layer and head
  retrieval        seeded passkey / needle-in-a-haystack grid, exact match and likelihood rank
  multiple_choice  acc / acc_norm the lm-evaluation-harness way, with few-shot contexts
  lm_eval_adapter  an lm-evaluation-harness `LM` named "ssa"
  results          JSON output and plain-text tables
  report, plots    markdown comparison of runs and PNG figures
"""
