"""The base of every params section model, and the constrained number types they share.

Plugins (samplers, trainers, problem sets, verifiers) define their own option models beside their code with
these, so ``config.py`` only assembles sections. Importing this module costs pydantic only: a plugin module that
defines its options here keeps its heavy imports (torch, TRL, vLLM) inside its functions.
"""

from __future__ import annotations

import importlib
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """Unknown keys are errors (a misspelt key must not be silently ignored); assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
Prob = Annotated[float, Field(ge=0.0, le=1.0)]


def Registered(registry: str) -> Any:  # noqa: N802 - used as a type
    """A plugin's registered name, checked against its registry (``"selfimprove.samplers:SAMPLERS"``) when a config
    is validated; the registry's module is imported then, not when this type is declared, so a plugin's option model
    never imports the registries. An unknown name gets "did you mean" from the registry."""
    module, attr = registry.split(":")

    def check(value: str) -> str:
        return getattr(importlib.import_module(module), attr).check(value)

    return Annotated[str, AfterValidator(check)]
