"""Filters declared as data: ``validate.filters`` is a list of ``{function: name, **kwargs}`` steps.

Each filter is a pure function ``(candidates, ctx, **kwargs) -> candidates`` over ``Candidate`` rows
(problem + completion + verdict). ``run_filters`` applies them in order and records how many rows each
step removed, so the validation report shows where the data went.
"""

from selfimprove.filters.builtin import FILTERS, Candidate, FilterContext, FilterStat, run_filters

__all__ = ["FILTERS", "Candidate", "FilterContext", "FilterStat", "run_filters"]
