"""Chat-format prompts: when to use a model's chat template, and how a problem becomes messages.

Instruct models (Qwen2.5-Instruct, Llama-3-Instruct, ...) are trained on their chat template; sending them raw
text ("Question: ... Answer:") wastes what they learnt. ``model.chat`` decides per run:

- ``never``: raw text everywhere (the tiny default: its character tokenizer has no template);
- ``always``: the tokenizer's chat template everywhere (an error if the tokenizer has none);
- ``auto`` (default): the template when the tokenizer has one.

The template itself is the tokenizer's (``apply_chat_template``, transformers' Jinja renderer); this module
only chooses and builds the messages. A problem set may give a problem its own ``messages`` (e.g. GSM8K's system
prompt + the question); otherwise the prompt is one user message. Samplers render ``messages`` with the
generation prompt and stop on the template's end-of-turn token (``stop_token_ids``); the SFT, DPO and GRPO
trainers pass TRL conversational rows (``prompt``: messages, ``completion``: one assistant message), so TRL renders
the same template and puts the loss on the completion only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

ChatMode = Literal["auto", "never", "always"]

#: End-of-turn tokens of common templates (ChatML, Llama 3, Phi-3, Gemma); the ones in a vocabulary stop sampling.
END_OF_TURN = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


def has_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def folder_has_template(model_dir: str | Path) -> bool:
    """Whether a local model folder's tokenizer carries a chat template (read from its files, nothing loaded)."""
    d = Path(model_dir)
    if (d / "chat_template.jinja").exists() or (d / "chat_template.json").exists():
        return True
    cfg = d / "tokenizer_config.json"
    if cfg.exists():
        try:
            return bool(json.loads(cfg.read_text()).get("chat_template"))
        except (OSError, ValueError):
            return False
    return False


def model_has_template(model: str | Path, *, load: bool = False, trust_remote_code: bool = False) -> bool:
    """Whether a model's tokenizer has a chat template: a local folder is read from its files; anything else (a hub
    id) only with ``load`` (the tokenizer is loaded: from the HF cache, or downloaded where the hub is allowed);
    without ``load``, or when it cannot be loaded, False."""
    path = Path(model)
    if path.is_dir():
        return folder_has_template(path)
    if not load:
        return False
    try:
        from transformers import AutoTokenizer

        return has_template(AutoTokenizer.from_pretrained(str(model), trust_remote_code=trust_remote_code))
    except Exception:  # noqa: BLE001 - no tokenizer to read: raw text, as for a model without a template
        return False


def use_chat(mode: ChatMode, tokenizer: Any = None, *, template: bool | None = None, where: str = "the model") -> bool:
    """True if prompts go through the chat template. ``template`` overrides the tokenizer check (a folder's files)."""
    present = has_template(tokenizer) if template is None else template
    if mode == "never":
        return False
    if mode == "always" and not present:
        raise ValueError(f"model.chat is 'always' but the tokenizer of {where} has no chat template; use "
                         "model.chat: auto (raw text for models without one) or give the tokenizer a chat_template")
    return present


def messages_of(prompt: str, messages: list[dict[str, str]] | None) -> list[dict[str, str]]:
    """A row's or problem's prompt as chat messages: its own, else one user message."""
    return [dict(m) for m in messages] if messages else [{"role": "user", "content": prompt}]


def render_prompt(tokenizer: Any, messages: list[dict[str, str]]) -> str:
    """The text the model continues: the template applied with the generation prompt (assistant turn opened)."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def stop_token_ids(tokenizer: Any) -> list[int]:
    """EOS plus the template's end-of-turn tokens present in the vocabulary (generation stops on any of them)."""
    ids: list[int] = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for t in END_OF_TURN:
        if t in vocab and int(vocab[t]) not in ids:
            ids.append(int(vocab[t]))
    return ids


def conversational(prompt: str, messages: list[dict[str, str]] | None, completion: str | None = None) -> dict[str, Any]:
    """A TRL conversational prompt/completion row (the completion as one assistant message)."""
    row: dict[str, Any] = {"prompt": messages_of(prompt, messages)}
    if completion is not None:
        row["completion"] = [{"role": "assistant", "content": completion}]
    return row


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a string, or a list of messages (conversational) whose last one is the answer."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion:
        last = completion[-1]
        return str(last.get("content", "")) if isinstance(last, dict) else str(last)
    return ""
