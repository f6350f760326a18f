"""Tiny Llama-style models built from a config, with coupled position ids, plus a character tokenizer.

This is the embedded default model of the demo (DESIGN.md §3): nothing is downloaded. The model is a
``LlamaForCausalLM`` whose position ids are *coupled* (Cho et al. 2024, "Position coupling"): the id resets
to 0 at BOS and at separator tokens such as ``+`` and ``=`` and counts 1, 2, ... inside each segment, so
digit i of each operand and of the answer share an id. The feasibility prototype found this is what makes a
2-layer, 128-dim model learn multi-digit addition in about a minute of CPU and extrapolate to unseen lengths.

The ids are computed *inside* the model from ``input_ids`` (and the attention mask), so callers use plain
``model(...)``, ``model.generate(...)`` (greedy, sampling, ``num_return_sequences``, left padding, KV
cache) and TRL's ``SFTTrainer`` without passing ``position_ids``. With ``position_scheme="standard"`` the
model is a plain
``llama`` (ids 0, 1, 2, ...) and saves as one, so any Llama runtime (vLLM, llama.cpp) can serve it.

Usage::

    import selfimprove.models  # registers the "selfimprove_llama" model type with the Auto classes
    tok = build_char_tokenizer("0123456789+=")
    model = build_tiny_model(tok)
    model.save_pretrained(d); tok.save_pretrained(d)
    AutoModelForCausalLM.from_pretrained(d)  # -> TinyLlamaForCausalLM
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Literal

import torch
from huggingface_hub.dataclasses import strict
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
    PreTrainedTokenizerFast,
)

logger = logging.getLogger(__name__)

PAD, BOS, EOS, UNK = "[PAD]", "[BOS]", "[EOS]", "[UNK]"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, BOS, EOS, UNK)
#: Characters of the default arithmetic vocabulary.
ARITHMETIC_CHARS = "0123456789+="
#: Characters that start a new position segment by default (BOS is always a reset token).
DEFAULT_RESET_CHARS = "+="

PositionScheme = Literal["coupled", "standard"]


def build_char_tokenizer(
    chars: str,
    *,
    padding_side: Literal["left", "right"] = "left",
    model_max_length: int = 512,
) -> PreTrainedTokenizerFast:
    """A character-level tokenizer: one token per character of ``chars``; ids 0-3 are the specials
    ``[PAD] [BOS] [EOS] [UNK]``.

    Every encoding starts with ``[BOS]`` (template post-processor); decoding concatenates characters, so
    ``decode(encode(s), skip_special_tokens=True) == s`` for any ``s`` over ``chars``. Unknown characters map
    to ``[UNK]``. ``padding_side`` defaults to left, which batched generation with a decoder-only model needs;
    training collators (TRL) pad on their own side.

    >>> tok = build_char_tokenizer("0123456789+=")
    >>> tok("12+3=")["input_ids"]
    [1, 5, 6, 14, 7, 15]
    >>> tok.decode(tok("12+3=")["input_ids"], skip_special_tokens=True)
    '12+3='
    """
    unique = list(dict.fromkeys(chars))
    if not unique:
        raise ValueError("chars must be a non-empty string")
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for c in unique:
        vocab[c] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # One pre-token per character, whitespace included ([\s\S] also matches newlines, unlike ".").
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A $B:1",
        special_tokens=[(BOS, vocab[BOS])],
    )
    # Without a decoder, `decode` would join the tokens with spaces.
    backend.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        padding_side=padding_side,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
    return tokenizer


def coupled_position_ids(
    input_ids: torch.Tensor,
    reset_token_ids: list[int] | torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Coupled position ids for a ``(batch, seq)`` tensor of token ids.

    A reset token (BOS, ``+``, ``=``) gets id 0 and the tokens after it count 1, 2, ... until the next reset.
    Padding (``attention_mask == 0``) also resets and gets id 0, so left padding does not shift anything;
    tokens before the first reset behave as if a reset preceded the sequence.

    >>> coupled_position_ids(torch.tensor([[1, 5, 6, 14, 7, 15, 8, 9]]), [1, 14, 15]).tolist()
    [[0, 1, 2, 0, 1, 0, 1, 2]]
    """
    resets = torch.as_tensor(reset_token_ids, dtype=input_ids.dtype, device=input_ids.device)
    is_reset = torch.isin(input_ids, resets)
    if attention_mask is not None:
        is_reset = is_reset | (attention_mask == 0)
    seq = input_ids.shape[-1]
    idx = torch.arange(seq, device=input_ids.device).expand_as(input_ids)
    # Index of the latest reset at or before each token (-1 when none yet); the id is the distance to it.
    last_reset = torch.where(is_reset, idx, torch.full_like(idx, -1)).cummax(dim=-1).values
    pos = idx - last_reset
    pos = pos.masked_fill(is_reset, 0)
    return pos.long()


@strict
class TinyLlamaConfig(LlamaConfig):
    """``LlamaConfig`` plus the position scheme.

    ``position_reset_token_ids`` lists the token ids at which coupled ids restart (BOS is added by
    :func:`build_tiny_model`). A ``"standard"`` config serialises as a plain ``llama`` config.
    """

    model_type = "selfimprove_llama"
    # Registered in-process (no remote code): loaders that look for a remote-code class map (TRL builds GRPO's
    # reference model that way) find none and fall back to AutoModelForCausalLM, which knows this class.
    auto_map: ClassVar[dict[str, str]] = {}

    position_scheme: str = "coupled"
    position_reset_token_ids: list[int] | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        if self.position_scheme not in ("coupled", "standard"):
            raise ValueError(f"position_scheme must be 'coupled' or 'standard', got {self.position_scheme!r}")
        super().__post_init__(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.position_scheme == "standard":
            # A standard-position model is an ordinary Llama: save it as one so other engines can load it.
            out["model_type"] = LlamaConfig.model_type
            out.pop("position_scheme", None)
            out.pop("position_reset_token_ids", None)
            if out.get("architectures"):
                out["architectures"] = ["LlamaForCausalLM"]
        return out


class TinyLlamaModel(LlamaModel):
    """The Llama backbone with coupled position ids derived from ``input_ids`` when none are given.

    The ids must be computed here, not only in the causal-LM head: TRL's trainers patch in a fused LM head
    that calls the backbone directly (``model.base_model(...)``), which would otherwise fall back to
    0, 1, 2, ... during training while generation used coupled ids.
    """

    config_class = TinyLlamaConfig

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.LongTensor | None = None, cache: Any = None, **kwargs: Any) -> Any:
        coupled = getattr(self.config, "position_scheme", "standard") == "coupled"
        if coupled and position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            if input_ids is None or past:
                raise ValueError(
                    "coupled position ids are computed from the full input_ids; pass position_ids explicitly when "
                    "calling forward with inputs_embeds or a non-empty cache (generate() does this for you)"
                )
            position_ids = coupled_position_ids(input_ids, self.config.position_reset_token_ids or [], attention_mask)
        if coupled and attention_mask is None and cache is None and input_ids is not None:
            # Without a 2D mask, transformers reads non-monotonic position ids as packed sequences and would
            # forbid attention across the resets; an explicit all-ones mask keeps one sequence per row.
            attention_mask = torch.ones_like(input_ids)
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                               cache=cache, **kwargs)


class TinyLlamaForCausalLM(LlamaForCausalLM):
    """``LlamaForCausalLM`` that derives its position ids from ``input_ids`` when the caller gives none.

    * Training / full forward (no cache, or an empty one): coupled ids from ``input_ids`` and the mask.
    * ``generate``: ids are recomputed from the whole sequence so far in ``prepare_inputs_for_generation`` and
      the library slices off the part for the new tokens, so KV-cached decoding sees the same ids as a full
      recompute.
    * Caller-supplied ``position_ids`` are used as given.
    """

    config_class = TinyLlamaConfig
    config: TinyLlamaConfig

    def __init__(self, config: TinyLlamaConfig):
        # Checked here, not in the config: transformers builds default configs (``TinyLlamaConfig()``) to diff
        # generation parameters when saving, and those must construct.
        if config.position_scheme == "coupled" and not config.position_reset_token_ids:
            raise ValueError("position_scheme='coupled' needs position_reset_token_ids (at least the BOS id)")
        super().__init__(config)
        self.model = TinyLlamaModel(config)
        self.post_init()

    @property
    def _coupled(self) -> bool:
        return getattr(self.config, "position_scheme", "standard") == "coupled"

    def _position_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        return coupled_position_ids(input_ids, self.config.position_reset_token_ids or [], attention_mask)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Any = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> Any:
        if self._coupled and position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            if input_ids is None or past:
                raise ValueError(
                    "coupled position ids are computed from the full input_ids; pass position_ids "
                    "explicitly when "
                    "calling forward with inputs_embeds or a non-empty cache (generate() does this for you)"
                )
            position_ids = self._position_ids(input_ids, attention_mask)
        if self._coupled and attention_mask is None and cache is None and input_ids is not None:
            # Without a 2D mask, transformers reads non-monotonic position ids as packed sequences and would
            # forbid attention across the resets; an explicit all-ones mask keeps one sequence per row.
            attention_mask = torch.ones_like(input_ids)
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    def _prepare_position_ids_for_generation(self, inputs_tensor: torch.Tensor, model_kwargs: dict) -> Any:
        if (
            self._coupled
            and inputs_tensor is not None
            and inputs_tensor.dim() == 2
            and not inputs_tensor.is_floating_point()
        ):
            return self._position_ids(inputs_tensor, model_kwargs.get("attention_mask"))
        return super()._prepare_position_ids_for_generation(inputs_tensor, model_kwargs)

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        cache: Any = None,
        attention_mask: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        full = attention_mask is None or attention_mask.shape[-1] == input_ids.shape[-1]
        if self._coupled and full:
            # generate() extends position ids by +1 per new token; coupled ids restart at separators, so
            # recompute them from the whole sequence. The parent slices them to the tokens being fed.
            kwargs["position_ids"] = self._position_ids(input_ids, attention_mask)
        return super().prepare_inputs_for_generation(
            input_ids,
            next_sequence_length=next_sequence_length,
            cache=cache,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )


_REGISTERED = False


def register_auto_classes() -> None:
    """Register ``selfimprove_llama`` with ``AutoConfig`` / ``AutoModelForCausalLM`` (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    AutoConfig.register(TinyLlamaConfig.model_type, TinyLlamaConfig, exist_ok=True)
    AutoModelForCausalLM.register(TinyLlamaConfig, TinyLlamaForCausalLM, exist_ok=True)
    _REGISTERED = True


def reset_token_ids(tokenizer: PreTrainedTokenizerFast, reset_chars: str = DEFAULT_RESET_CHARS) -> list[int]:
    """BOS plus the ids of ``reset_chars`` that are in the tokenizer's vocabulary."""
    vocab = tokenizer.get_vocab()
    ids = [tokenizer.bos_token_id] + [vocab[c] for c in reset_chars if c in vocab]
    return [int(i) for i in ids if i is not None]


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast,
    layers: int = 2,
    hidden: int = 128,
    heads: int = 4,
    intermediate: int = 512,
    position_scheme: PositionScheme = "coupled",
    rope_theta: float = 10_000.0,
    seed: int = 0,
    *,
    reset_chars: str = DEFAULT_RESET_CHARS,
    max_position_embeddings: int = 256,
    attn_implementation: str = "sdpa",
) -> LlamaForCausalLM:
    """A freshly initialised tiny Llama (tied embeddings, no dropout) for ``tokenizer``'s vocabulary.

    ``position_scheme="coupled"`` returns a :class:`TinyLlamaForCausalLM` whose ids reset at BOS and at
    ``reset_chars``; ``"standard"`` returns a plain ``LlamaForCausalLM``. ``seed`` fixes the initial weights.
    Attention defaults to sdpa: on one CPU thread at these sizes it measured the same as eager (train step and
    batched generation within 5 %, docs/recipe.md), and it is the library default.
    """
    register_auto_classes()
    common: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": float(rope_theta)},
        tie_word_embeddings=True,
        attention_dropout=0.0,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    if position_scheme == "coupled":
        config: LlamaConfig = TinyLlamaConfig(
            position_scheme="coupled",
            position_reset_token_ids=reset_token_ids(tokenizer, reset_chars),
            **common,
        )
        config._attn_implementation = attn_implementation
        model: LlamaForCausalLM = TinyLlamaForCausalLM(config)
    elif position_scheme == "standard":
        config = LlamaConfig(**common)
        config._attn_implementation = attn_implementation
        model = LlamaForCausalLM(config)
    else:
        raise ValueError(f"position_scheme must be 'coupled' or 'standard', got {position_scheme!r}")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("built tiny %s model: %d params, scheme=%s", type(model).__name__, n_params, position_scheme)
    return model
