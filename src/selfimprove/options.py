"""The base of every params section model, and the constrained number types they share.

Plugins (samplers, trainers, problem sets, verifiers) define their own option models beside their code with
these, so ``config.py`` only assembles sections. Importing this module costs pydantic only: a plugin module that
defines its options here keeps its heavy imports (torch, TRL, vLLM) inside its functions.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """Unknown keys are errors (a misspelt key must not be silently ignored); assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


PosInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
Prob = Annotated[float, Field(ge=0.0, le=1.0)]
