"""Config and Llama-style causal LM with the dual-mode gated attention layer."""

from .config import METHODS, SSAConfig
from .modeling import SSACausalLMOutput, SSAForCausalLM, SSAModel

__all__ = ["SSAConfig", "SSAForCausalLM", "SSAModel", "SSACausalLMOutput", "METHODS"]
