"""Models built from a config (no download). Importing this package registers ``selfimprove_llama``
with ``AutoConfig`` and ``AutoModelForCausalLM`` so saved tiny models load with the Auto classes."""

from selfimprove.models.tiny import (
    ARITHMETIC_CHARS,
    TinyLlamaConfig,
    TinyLlamaForCausalLM,
    build_char_tokenizer,
    build_tiny_model,
    coupled_position_ids,
    register_auto_classes,
    reset_token_ids,
)

register_auto_classes()

__all__ = [
    "ARITHMETIC_CHARS",
    "TinyLlamaConfig",
    "TinyLlamaForCausalLM",
    "build_char_tokenizer",
    "build_tiny_model",
    "coupled_position_ids",
    "register_auto_classes",
    "reset_token_ids",
]
