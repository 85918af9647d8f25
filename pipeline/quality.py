"""The quality gate: a dataset's Great Expectations suite run row by row.

Each expectation in the suite may carry `meta.anchorlake`:
  `reason`             the quarantine code for rows it rejects (default: the expectation type)
  `max_failing_share`  if more than this share of rows fail it, the whole batch is refused
Rows an expectation rejects are found with `unexpected_index_list` (result_format COMPLETE),
never with the capped partial lists.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from pipeline.datasets import Dataset
from pipeline.errors import AnchorlakeError, BadInput

log = logging.getLogger(__name__)


class BatchRejected(AnchorlakeError):
    """The suite refuses the batch as a whole; nothing is committed. Terminal."""

    exit_code = 1


@dataclass
class QualityResult:
    failures: dict[int, tuple[str, str]] = field(default_factory=dict)  # row position -> (reason, detail)
    validation: dict[str, Any] = field(default_factory=dict)
    success: bool = True


def run_suite(dataset: Dataset, frame: Any) -> QualityResult:
    """Validate `frame` (a pandas DataFrame with a 0..n-1 index) against the dataset's suite."""
    suite_json = dataset.suite_json()
    result = QualityResult()
    if len(frame) == 0:
        result.validation = {"suite_name": suite_json.get("name"), "success": True, "results": [],
                             "statistics": {"evaluated_expectations": 0}, "note": "no rows to validate"}
        return result

    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    try:
        suite = gx.ExpectationSuite(**{k: v for k, v in suite_json.items() if k in ("name", "expectations", "meta")})
    except Exception as e:  # GX raises many kinds for a malformed suite
        raise BadInput(f"{dataset.suite_path}: not a valid Great Expectations suite: {e}") from None
    source = context.data_sources.add_pandas("anchorlake")
    asset = source.add_dataframe_asset(dataset.name)
    definition = asset.add_batch_definition_whole_dataframe("batch")
    batch = definition.get_batch(batch_parameters={"dataframe": frame})
    validation = batch.validate(suite, result_format={"result_format": "COMPLETE"})
    rows = len(frame)
    refusals = []
    for res in validation.results:
        config = res.expectation_config
        assert config is not None
        policy = (config.meta or {}).get("anchorlake", {})
        reason = policy.get("reason", config.type)
        if res.exception_info and res.exception_info.get("raised_exception"):
            message = res.exception_info.get("exception_message")
            raise BadInput(f"{dataset.suite_path}: expectation {config.type} cannot run: {message}")
        if res.success:
            continue
        indices = (res.result or {}).get("unexpected_index_list")
        if indices is None:
            refusals.append(f"{config.type} failed for the table as a whole")
            continue
        column = config.kwargs.get("column", "")
        for i in indices:
            position = int(i["index"] if isinstance(i, dict) else i)
            result.failures.setdefault(position, (reason, f"{config.type} on {column}".strip()))
        share = len(indices) / rows
        limit = policy.get("max_failing_share")
        if limit is not None and share > float(limit):
            refusals.append(f"{config.type} on {column}: {share:.1%} of rows fail, over {float(limit):.1%}")
    # Row indices are kept out of validation.json: quarantine.parquet is the row-level record.
    summary = validation.to_json_dict()
    for res in summary.get("results", []):
        (res.get("result") or {}).pop("unexpected_index_list", None)
        (res.get("result") or {}).pop("unexpected_list", None)
        (res.get("result") or {}).pop("unexpected_index_query", None)
    result.validation = json.loads(json.dumps(summary, default=str))
    result.success = bool(validation.success)
    if refusals:
        raise BatchRejected(f"dataset {dataset.name}: the quality gate refuses the batch: " + "; ".join(refusals))
    return result
