"""Config and Llama-style causal LM with the dual-mode gated attention layer.

Importing this package registers SSAConfig / SSAForCausalLM with transformers' Auto classes, so
`AutoModelForCausalLM.from_pretrained(path)` loads an SSA checkpoint without trust_remote_code.
"""

from .cache import SSACache
from .config import METHODS, SSAConfig
from .modeling import SSACausalLMOutput, SSAForCausalLM, SSAModel


def _register_with_auto_classes() -> None:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast

    AutoConfig.register(SSAConfig.model_type, SSAConfig, exist_ok=True)
    AutoModel.register(SSAConfig, SSAModel, exist_ok=True)
    AutoModelForCausalLM.register(SSAConfig, SSAForCausalLM, exist_ok=True)
    # SSA checkpoints carry a tokenizers-library tokenizer.json; without a tokenizer_class in
    # tokenizer_config.json AutoTokenizer needs to know which class reads it.
    try:
        AutoTokenizer.register(SSAConfig, fast_tokenizer_class=PreTrainedTokenizerFast, exist_ok=True)
    except (TypeError, ValueError):  # signature differs across transformers versions; configs still name the class
        pass


_register_with_auto_classes()

__all__ = ["SSAConfig", "SSAForCausalLM", "SSAModel", "SSACausalLMOutput", "SSACache", "METHODS"]
