"""Where a round's model lives on disk and how to tell it is whole before loading it.

A round's model folder (``runs/rN/model``) is one of:

- a Hugging Face folder (``config.json``, weights, tokenizer) — one model;
- ``ensemble.json`` plus one Hugging Face folder per member (``m0``, ``m1``, ...; see ``selfimprove.ensemble``);
- ``model_ref.json`` pointing at an external model (``model.source: path | hub``).

Each is a stage output with a ``manifest.json`` (sizes and sha256 of every file, written last). ``resolve``
checks the manifest before anything loads the weights, so a truncated or edited ``model.safetensors`` is reported
by name ("...model.safetensors: size 1200 != 2460160 recorded in ...manifest.json") instead of as a
deserialisation error deep inside safetensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selfimprove.io import MANIFEST, DataError, verify_manifest

ENSEMBLE_FILE = "ensemble.json"
REF_FILE = "model_ref.json"
DEEP_CHECK_BYTES = 1 << 30  # hash every file of models up to 1 GiB; bigger ones get the size check only


def members(model_dir: str | Path) -> list[Path]:
    """The member folders of a round's model (the folder itself for a single model)."""
    model_dir = Path(model_dir)
    spec = model_dir / ENSEMBLE_FILE
    if spec.exists():
        return [model_dir / m for m in json.loads(spec.read_text())["members"]]
    return [model_dir]


def member_names(n: int) -> list[str]:
    return [f"m{i}" for i in range(n)]


def write_ensemble(out_dir: str | Path, names: list[str]) -> None:
    from selfimprove.io import write_json

    write_json(Path(out_dir) / ENSEMBLE_FILE, {"members": names})


def _manifest_dir(model_dir: Path) -> Path | None:
    for d in (model_dir, model_dir.parent):
        if (d / MANIFEST).exists():
            return d
    return None


def check(model_dir: str | Path) -> None:
    """Raise ``DataError`` naming the file when the model folder does not match its manifest."""
    model_dir = Path(model_dir)
    d = _manifest_dir(model_dir)
    if d is None:
        return  # a model folder made outside the loop (a test fixture, a downloaded model): nothing to check
    manifest = json.loads((d / MANIFEST).read_text())
    size = sum(int(e.get("bytes", 0)) for e in manifest.get("files", {}).values())
    try:
        verify_manifest(d, deep=size <= DEEP_CHECK_BYTES)
    except DataError as e:
        producer = manifest.get("producer", "the stage that wrote it")
        raise DataError(f"corrupt model: {e}. Re-create it: delete {d} and run {producer} again "
                        f"(selfimprove run --resume NAME, or dvc repro {producer})") from None


def resolve(model_dir: str | Path) -> str:
    """A round's model folder, or the external model it points to (``model_ref.json``), checked before use."""
    model_dir = Path(model_dir)
    ref = model_dir / REF_FILE
    if ref.exists():
        return json.loads(ref.read_text())["path"]
    if not (model_dir / "config.json").exists() and not (model_dir / "adapter_config.json").exists():
        raise FileNotFoundError(
            f"model not found: {model_dir} has no config.json (run the stage that produces it, e.g. 'dvc repro', "
            "or check model.path)"
        )
    check(model_dir)
    return str(model_dir)


def adapter_base(path: str | Path) -> str | None:
    """The base model of an adapter-only folder (PEFT ``adapter_config.json``), else None."""
    import json

    cfg_file = Path(path) / "adapter_config.json"
    if not cfg_file.exists():
        return None
    return str(json.loads(cfg_file.read_text())["base_model_name_or_path"])


def load_merged(path: str | Path, dtype: Any = None) -> tuple[Any, Any]:
    """An adapter-only folder as a plain model: base weights with the adapter merged in (and its tokenizer)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import selfimprove.models  # noqa: F401 - registers the tiny model class

    base = adapter_base(path)
    if base is None:
        raise ValueError(f"{path} is not an adapter-only model folder (no adapter_config.json)")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype or torch.float32)
    return PeftModel.from_pretrained(model, str(path)).merge_and_unload(), AutoTokenizer.from_pretrained(path)
