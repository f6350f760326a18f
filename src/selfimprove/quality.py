"""Great Expectations gate for each round's self-generated dataset.

GX decides; we only make its verdict stop the round: GX returns ``success=False`` without raising, so
``check_round_data`` raises ``DataQualityError`` whose message names every failed expectation with its
observed value and example rows. The full result (GX's own JSON) goes into the round's validation report.

Four batches are validated, each against its own suite:

| batch | expectations |
|---|---|
| ``train`` (the training set) | exact column set; ids unique; prompt/completion non-null; completion length 1..max; origin in {self, real}; weight >= 0; **no prompt from the evaluation set** |
| ``accepted`` (this round's new self-labels) | at least ``min_rows`` rows |
| ``samples`` (every completion with its verdict) | answer parse rate >= ``min_parse_rate`` |
| ``problems`` (one row per sampled problem) | acceptance rate within ``acceptance_rate`` |

A GRPO round (``finetune.trainer: grpo``) trains on prompts: its ``train`` batch expects the prompt columns, unique
problems, a pass rate inside ``finetune.grpo.prompt_band`` and no evaluation prompt. After training,
``check_rollouts`` validates the rollouts GRPO generated: exact columns, unique ids, completions present, every
reward finite and within the weighted sum's bounds, every group exactly ``num_generations`` completions.

GX is imported lazily (its import takes ~5 s) and its progress bars are off.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from selfimprove.config import ExpectationsConfig

log = logging.getLogger(__name__)

TRAIN_COLUMNS = ["id", "prompt", "completion", "problem_id", "origin", "round", "weight", "difficulty", "label", "agreement",
                 "messages"]
PAIR_COLUMNS = ["id", "prompt", "chosen", "rejected", "problem_id", "round", "difficulty", "origin", "messages"]
PROMPT_COLUMNS = ["id", "prompt", "problem_id", "round", "pass_rate", "difficulty", "origin", "messages"]
ROLLOUT_COLUMNS = ["id", "problem_id", "round", "step", "member", "index", "completion", "reward", "rewards", "answer",
                   "pseudo_label", "gold_passed"]


VOLATILE = {"meta", "id", "batch_id", "validation_id", "run_id", "run_time", "validation_time", "ge_load_time",
            "checkpoint_id", "batch_markers"}


def _stable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _stable(v) for k, v in obj.items() if k not in VOLATILE}
    if isinstance(obj, list):
        return [_stable(v) for v in obj]
    return obj


class DataQualityError(RuntimeError):
    """A round's dataset failed its Great Expectations suite; ``report`` holds the details."""

    def __init__(self, message: str, report: dict[str, Any], path: str | Path | None = None):
        super().__init__(message)
        self.report = report
        self.path = path  # where the full report was written, if it was


@dataclass
class QualityReport:
    success: bool
    suites: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"success": self.success, "failures": self.failures, "suites": self.suites}

    def to_stable_dict(self) -> dict[str, Any]:
        """GX's results without what differs between identical validations (run times, ids of the validation run,
        of expectations and of in-memory batches): the copy kept inside the DVC output. The full JSON goes to MLflow."""
        return _stable({"success": self.success, "failures": self.failures, "suites": self.suites})

    def summary(self) -> str:
        if self.success:
            n = sum(len(s["results"]) for s in self.suites.values())
            return f"all {n} expectations passed"
        lines = [f"{len(self.failures)} expectation(s) failed:"]
        for f in self.failures:
            col = f" on column '{f['column']}'" if f.get("column") else ""
            detail = []
            if f.get("observed_value") is not None:
                detail.append(f"observed {f['observed_value']!r}")
            if f.get("unexpected_count"):
                detail.append(f"{f['unexpected_count']} unexpected row(s), e.g. {f.get('examples')}")
            if f.get("error"):
                detail.append(f"error: {f['error']}")
            bounds = {k: v for k, v in f.get("kwargs", {}).items() if k in ("min_value", "max_value", "value_set", "column_set")}
            if "value_set" in bounds and len(str(bounds["value_set"])) > 80:
                bounds["value_set"] = f"<{len(bounds['value_set'])} values>"
            lines.append(f"  - [{f['batch']}] {f['expectation']}{col} {bounds}: " + "; ".join(detail))
        return "\n".join(lines)


_CTX: Any = None


def _plain(v: Any) -> Any:
    """numpy scalars -> Python numbers, so reports read 0.0 rather than np.float64(0.0)."""
    return v.item() if hasattr(v, "item") and not isinstance(v, list | dict | str) else v


def _context() -> Any:
    global _CTX
    if _CTX is None:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        logging.getLogger("great_expectations").setLevel(logging.WARNING)
        ctx = gx.get_context(mode="ephemeral")
        ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
        _CTX = ctx
    return _CTX


def _suite_specs(cfg: ExpectationsConfig, eval_prompts: list[str], columns: list[str], text_col: str,
                 band: tuple[float, float] | None = None) -> dict[str, list[Any]]:
    import great_expectations.expectations as gxe

    lo, hi = cfg.acceptance_rate
    if text_col == "prompt":  # GRPO: prompts only, one per problem, each with some reward variance to learn from
        train = [
            gxe.ExpectTableColumnsToMatchSet(column_set=columns, exact_match=True),
            gxe.ExpectColumnValuesToBeUnique(column="id"),
            gxe.ExpectColumnValuesToBeUnique(column="problem_id"),
            gxe.ExpectColumnValuesToNotBeNull(column="prompt"),
            gxe.ExpectColumnValueLengthsToBeBetween(column="prompt", min_value=1, max_value=cfg.max_completion_chars),
            gxe.ExpectColumnValuesToBeInSet(column="origin", value_set=["self", "real"]),
        ]
        if band is not None:
            train.append(gxe.ExpectColumnValuesToBeBetween(column="pass_rate", min_value=band[0], max_value=band[1]))
    else:
        train = [
            gxe.ExpectTableColumnsToMatchSet(column_set=columns, exact_match=True),
            gxe.ExpectColumnValuesToBeUnique(column="id"),
            gxe.ExpectColumnValuesToNotBeNull(column="prompt"),
            gxe.ExpectColumnValuesToNotBeNull(column=text_col),
            gxe.ExpectColumnValueLengthsToBeBetween(column=text_col, min_value=1, max_value=cfg.max_completion_chars),
            gxe.ExpectColumnValuesToBeInSet(column="origin", value_set=["self", "real"]),
        ]
        if text_col == "completion":
            train.append(gxe.ExpectColumnValuesToBeBetween(column="weight", min_value=0))
        else:
            train.append(gxe.ExpectColumnValueLengthsToBeBetween(column="rejected", min_value=1,
                                                                 max_value=cfg.max_completion_chars))
    if eval_prompts:
        train.append(gxe.ExpectColumnValuesToNotBeInSet(column="prompt_normalized", value_set=eval_prompts))
    return {
        "train": train,
        "accepted": [gxe.ExpectTableRowCountToBeBetween(min_value=cfg.min_rows)],
        "samples": [gxe.ExpectColumnMeanToBeBetween(column="parsed", min_value=cfg.min_parse_rate, max_value=1.0)],
        "problems": [gxe.ExpectColumnMeanToBeBetween(column="accepted", min_value=lo, max_value=hi)],
    }


def _run_suite(df: Any, expectations: list[Any], asset: str, uid: str) -> Any:
    """Validate one DataFrame against a fresh suite of ``expectations`` in the ephemeral context (GX's result)."""
    import great_expectations as gx

    ctx = _context()
    bd = ctx.data_sources.add_pandas(f"src-{uid}").add_dataframe_asset(asset).add_batch_definition_whole_dataframe("all")
    suite = ctx.suites.add(gx.ExpectationSuite(name=f"suite-{uid}"))
    for e in expectations:
        suite.add_expectation(e)
    vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=f"vd-{uid}", data=bd, suite=suite))
    return vd.run(batch_parameters={"dataframe": df}, result_format="COMPLETE")


def validate_frame(df: Any, expectations: list[Any], name: str) -> QualityReport:
    """Run GX expectations on one DataFrame; failures carry the failing row indices (``unexpected_index_list``)."""
    res = _run_suite(df, expectations, name, f"{name}-{id(df)}")
    report = QualityReport(success=bool(res.success))
    report.suites[name] = res.to_json_dict()
    for r in res.results:
        if r.success:
            continue
        kwargs = {k: v for k, v in r.expectation_config.kwargs.items() if k not in ("batch_id",)}
        report.failures.append({
            "batch": name, "expectation": r.expectation_config.type, "column": kwargs.get("column"), "kwargs": kwargs,
            "observed_value": _plain((r.result or {}).get("observed_value")),
            "unexpected_index_list": list((r.result or {}).get("unexpected_index_list") or []),
        })
    return report


def check_round_data(
    frames: dict[str, Any],
    cfg: ExpectationsConfig,
    eval_prompts: list[str],
    name: str = "round",
    pairs: bool = False,
    raise_on_failure: bool = True,
    prompts: bool = False,
    band: tuple[float, float] | None = None,
) -> QualityReport:
    """Validate the round's frames (``train``, ``accepted``, ``samples``, ``problems``) with GX.

    ``train`` must carry a ``prompt_normalized`` column (whitespace-normalised prompt) for the
    decontamination expectation. Raises ``DataQualityError`` on any failure unless told not to.
    """
    columns = (PROMPT_COLUMNS if prompts else PAIR_COLUMNS if pairs else TRAIN_COLUMNS) + ["prompt_normalized"]
    specs = _suite_specs(cfg, eval_prompts, columns, "prompt" if prompts else "chosen" if pairs else "completion", band)
    return _check(frames, specs, name, raise_on_failure)


def check_rollouts(df: Any, num_generations: int, reward_bounds: tuple[float, float], name: str = "rollouts",
                   raise_on_failure: bool = True) -> QualityReport:
    """Validate a GRPO round's rollouts (one row per generated completion) with GX; see the module table."""
    import great_expectations.expectations as gxe
    import pandas as pd

    lo, hi = reward_bounds
    rows = [
        gxe.ExpectTableColumnsToMatchSet(column_set=ROLLOUT_COLUMNS, exact_match=True),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        gxe.ExpectColumnValuesToBeUnique(column="id"),
        gxe.ExpectColumnValuesToNotBeNull(column="completion"),
        gxe.ExpectColumnValuesToNotBeNull(column="reward"),
        gxe.ExpectColumnValuesToBeBetween(column="reward", min_value=lo - 1e-9, max_value=hi + 1e-9),
        gxe.ExpectColumnValuesToBeBetween(column="step", min_value=0),
    ]
    keys = ["member", "step", "problem_id"]
    sizes = (df.fillna({"member": ""}).groupby(keys).size().reset_index(name="size") if len(df)
             else pd.DataFrame({"size": []}))
    groups = [gxe.ExpectColumnValuesToBeBetween(column="size", min_value=num_generations, max_value=num_generations)]
    return _check({"rollouts": df, "groups": sizes}, {"rollouts": rows, "groups": groups}, name, raise_on_failure)


def check_proposals(df: Any, eval_texts: list[str], min_accepted: int, name: str = "proposals",
                    raise_on_failure: bool = True) -> QualityReport:
    """Validate a round's accepted proposals (one row each: ``id``, ``problem_id``, ``text_normalized``,
    ``label_source``, ``labelled``) with GX: at least ``min_accepted``, unique, labelled by construction or left to
    the vote, and **no evaluation problem** among them (the normalised texts of the round's evaluation problems)."""
    import great_expectations.expectations as gxe

    rows = [
        gxe.ExpectTableRowCountToBeBetween(min_value=min_accepted),
        gxe.ExpectColumnValuesToBeUnique(column="problem_id"),
        gxe.ExpectColumnValuesToBeInSet(column="label_source", value_set=["execution", "vote", "gold-of-parent"]),
        gxe.ExpectColumnValuesToBeInSet(column="labelled", value_set=[True],
                                        condition_parser="pandas", row_condition='label_source=="execution"'),
    ]
    if eval_texts:
        rows.append(gxe.ExpectColumnValuesToNotBeInSet(column="text_normalized", value_set=eval_texts))
    return _check({"proposals": df}, {"proposals": rows}, name, raise_on_failure)


def check_traces(traces: Any, min_traces: int, name: str = "traces", raise_on_failure: bool = True) -> QualityReport:
    """Validate a round's two-attempt traces (``correct``) with GX: at least ``min_traces``, unique ids, a known mode,
    feedback on every second attempt that was made and none where the episode ended, an episode ends only after a
    right first attempt (extrinsic), an unchanged second attempt where none was made, edit distances in [0, 1]."""
    import great_expectations.expectations as gxe
    import pandas as pd

    df = pd.DataFrame([t.model_dump() for t in traces] if traces else [],
                      columns=["id", "mode", "feedback", "attempted", "r1", "r2", "y1", "y2", "edit"])
    df["has_feedback"] = [bool(str(f).strip()) for f in df["feedback"]]
    df["same"] = [a == b for a, b in zip(df["y1"], df["y2"])]
    rows = [
        gxe.ExpectTableRowCountToBeBetween(min_value=min_traces),
        gxe.ExpectColumnValuesToBeUnique(column="id"),
        gxe.ExpectColumnValuesToBeInSet(column="mode", value_set=["intrinsic", "extrinsic"]),
        gxe.ExpectColumnValuesToBeBetween(column="edit", min_value=0.0, max_value=1.0),
        gxe.ExpectColumnValuesToBeInSet(column="has_feedback", value_set=[True], condition_parser="pandas",
                                        row_condition="attempted==True"),
        gxe.ExpectColumnValuesToBeInSet(column="has_feedback", value_set=[False], condition_parser="pandas",
                                        row_condition="attempted==False"),
        gxe.ExpectColumnValuesToBeInSet(column="r1", value_set=[True], condition_parser="pandas",
                                        row_condition="attempted==False"),
        gxe.ExpectColumnValuesToBeInSet(column="same", value_set=[True], condition_parser="pandas",
                                        row_condition="attempted==False"),
    ]
    return _check({"traces": df}, {"traces": rows}, name, raise_on_failure)


def _check(frames: dict[str, Any], specs: dict[str, list[Any]], name: str, raise_on_failure: bool) -> QualityReport:
    report = QualityReport(success=True)
    for batch, expectations in specs.items():
        df = frames[batch]
        res = _run_suite(df, expectations, batch, f"{name}-{batch}-{id(df)}")
        result = res.to_json_dict()
        result["suite_name"] = f"{name}/{batch}"  # the GX object names carry a per-process id; reports must not
        report.suites[batch] = result
        for r in res.results:
            if r.success:
                continue
            report.success = False
            kwargs = {k: v for k, v in r.expectation_config.kwargs.items() if k not in ("batch_id",)}
            idx = (r.result or {}).get("unexpected_index_list") or []
            examples = []
            for i in list(idx)[:3]:
                try:
                    row = df.loc[i]
                    examples.append({c: row[c] for c in ("id", "problem_id", "prompt", "completion", "chosen") if c in df.columns})
                except Exception:  # noqa: BLE001
                    examples.append(i)
            if not examples:
                examples = list((r.result or {}).get("partial_unexpected_list") or [])[:3]
            info = r.exception_info or {}
            error = info.get("exception_message") if info.get("raised_exception") else None
            report.failures.append(
                {
                    "batch": batch,
                    "expectation": r.expectation_config.type,
                    "column": kwargs.get("column"),
                    "kwargs": kwargs,
                    "observed_value": _plain((r.result or {}).get("observed_value")),
                    "unexpected_count": (r.result or {}).get("unexpected_count"),
                    "examples": examples,
                    "error": error,
                }
            )
    if not report.success and raise_on_failure:
        raise DataQualityError(f"{name}: dataset failed validation; the round stops here.\n{report.summary()}", report.to_dict())
    return report
