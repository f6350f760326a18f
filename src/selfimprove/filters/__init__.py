"""Filters declared as data: ``validate.filters`` is a list of ``{function: name, **kwargs}`` steps.

Each filter is a pure function ``(candidates, ctx, **kwargs) -> candidates`` over ``Candidate`` rows
(problem + completion + verdict). ``run_filters`` applies them in order and records how many rows each
step removed, so the validation report shows where the data went.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from selfimprove.options import Registered
from selfimprove.filters.builtin import FILTERS, Candidate, FilterContext, FilterStat, check_kwargs, run_filters

__all__ = ["FILTERS", "Candidate", "FilterContext", "FilterStat", "FilterStep", "run_filters"]


class FilterStep(BaseModel):
    """One filter in the pipeline: ``{function: name, **kwargs}`` (checked against the filter's signature)."""

    model_config = ConfigDict(extra="allow")
    function: Registered("selfimprove.filters:FILTERS")

    @model_validator(mode="after")
    def _args(self) -> FilterStep:
        if self.function in FILTERS:
            check_kwargs(self.function, self.kwargs)
        return self

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})
