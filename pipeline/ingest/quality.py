"""The quality gate: a dataset's Great Expectations suite run row by row.

Each expectation in the suite may carry `meta.anchorlake`:
  `reason`             the quarantine code for rows it rejects (default: the expectation type)
  `max_failing_share`  if more than this share of the batch's rows fail it, the whole batch is
                       refused (nothing is committed; the operator decides)
Rows an expectation rejects are found with `unexpected_index_list` (result_format COMPLETE),
never with the capped partial lists. A batch is validated in chunks; `QualityReport` adds them up.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from pipeline.datasets import Dataset
from pipeline.errors import AnchorlakeError, BadInput

log = logging.getLogger(__name__)


class BatchRejected(AnchorlakeError):
    """The suite refuses the batch as a whole; nothing is committed. Terminal."""

    exit_code = 1


POLICY_KEYS = ("reason", "max_failing_share")
COLUMN_KWARGS = ("column", "column_A", "column_B")


def suite_problems(dataset: Dataset) -> list[str]:
    """Everything wrong with a dataset's suite, found without data, one line each: an expectation
    type GX does not know (which GX would only log, validating nothing), a column the dataset does
    not have, an unknown or out-of-range `meta.anchorlake` key, a regex not matching whole strings."""
    from difflib import get_close_matches

    from great_expectations.expectations.registry import (
        get_expectation_impl,
        list_registered_expectation_implementations,
    )

    where, problems = dataset.suite_path, []
    columns = {c.name for c in dataset.columns} | {"contributor"}
    for n, e in enumerate(dataset.suite_json()["expectations"]):
        kind = e.get("type") if isinstance(e, dict) else None
        at = f"{where}: expectations[{n}] ({kind})"
        if not isinstance(kind, str):
            problems.append(f"{where}: expectations[{n}] has no type")
            continue
        try:
            get_expectation_impl(kind)
        except Exception:
            near = get_close_matches(kind, list_registered_expectation_implementations(), n=1)
            problems.append(f"{at}: unknown expectation type" + (f" (did you mean {near[0]}?)" if near else ""))
        kwargs = e.get("kwargs") or {}
        named = [kwargs[k] for k in COLUMN_KWARGS if k in kwargs] + list(kwargs.get("column_list", []))
        problems += [f"{at}: unknown column {c!r} (the dataset has {', '.join(sorted(columns))})"
                     for c in named if c not in columns]
        regex = str(kwargs.get("regex", ""))
        if regex.endswith("$") and not regex.endswith("\\$"):
            problems.append(f"{at}: regex {regex!r} ends in $, which also matches before a final newline: end it "
                            "with \\Z to match the whole string")
        policy = (e.get("meta") or {}).get("anchorlake", {})
        problems += [f"{at}: unknown meta.anchorlake key {k!r} (known: {', '.join(POLICY_KEYS)})"
                     for k in policy if k not in POLICY_KEYS]
        share = policy.get("max_failing_share", 0)
        if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0 <= share <= 1:
            problems.append(f"{at}: meta.anchorlake.max_failing_share must be a number from 0 to 1")
    return problems


@dataclass
class ExpectationTally:
    type: str
    kwargs: dict[str, Any]
    reason: str
    max_failing_share: float | None
    evaluated: int = 0
    unexpected: int = 0

    @property
    def success(self) -> bool:
        return self.unexpected == 0


@dataclass
class ChunkResult:
    """What validating one chunk found (picklable: a worker process finds it, the batch's report
    adds it up): the failing rows, each expectation's (rows evaluated, rows unexpected), and the
    chunk's public GX result and Data Docs page (None for an empty chunk)."""

    failures: dict[int, tuple[str, str]]  # row position in the chunk -> (reason, detail)
    counts: list[tuple[int, int]]
    summary: dict[str, Any] | None = None
    docs: str | None = None


# What of a GX result may be published (batches/ is public, SPEC §13.1): counts and shares, never
# values (`partial_unexpected_list`, `observed_value`, … can quote a rejected record).
PUBLIC_RESULT_KEYS = frozenset({"element_count", "missing_count", "missing_percent", "unexpected_count",
                                "unexpected_percent", "unexpected_percent_total", "unexpected_percent_nonmissing"})


@dataclass
class QualityReport:
    """Validation of a whole batch, accumulated over its chunks."""

    dataset: Dataset
    suite: dict[str, Any] = field(default_factory=dict)
    tallies: list[ExpectationTally] = field(default_factory=list)
    chunks: list[dict[str, Any]] = field(default_factory=list)
    docs: list[str] = field(default_factory=list)  # one Data Docs HTML page per chunk
    _context: Any = None

    def __post_init__(self) -> None:
        self.suite = self.dataset.suite_json()
        problems = suite_problems(self.dataset)
        if problems:
            more = f" (and {len(problems) - 1} more: run `anchorlake check`)" if len(problems) > 1 else ""
            raise BadInput(problems[0] + more)
        for e in self.suite["expectations"]:
            policy = (e.get("meta") or {}).get("anchorlake", {})
            limit = policy.get("max_failing_share")
            self.tallies.append(ExpectationTally(e.get("type", "?"), e.get("kwargs", {}),
                                                 policy.get("reason", e.get("type", "?")),
                                                 None if limit is None else float(limit)))

    def _validator(self) -> Any:
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        if self._context is None:
            from great_expectations.execution_engine import pandas_execution_engine

            # GX fingerprints every in-memory batch (an MD5 over all values, ~3 s per million rows)
            # only to label it; anchorlake pins every byte with SHA-256 already, so skip it.
            pandas_execution_engine.HASH_THRESHOLD = 0
            for name in ("great_expectations", "great_expectations.data_context.types.base"):  # the latter sets INFO
                logging.getLogger(name).setLevel(logging.WARNING)
            context = gx.get_context(mode="ephemeral")
            context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
            # GX may return results in another order than the suite's: tag each expectation.
            expectations = [dict(e, meta={**(e.get("meta") or {}), "anchorlake_position": i})
                            for i, e in enumerate(self.suite["expectations"])]
            try:
                suite = gx.ExpectationSuite(name=self.suite.get("name", self.dataset.name), expectations=expectations,
                                            meta=self.suite.get("meta") or {})
            except Exception as e:  # GX raises many kinds for a malformed suite
                raise BadInput(f"{self.dataset.suite_path}: not a valid Great Expectations suite: {e}") from None
            asset = context.data_sources.add_pandas("anchorlake").add_dataframe_asset(self.dataset.name)
            self._context = (asset.add_batch_definition_whole_dataframe("chunk"), suite)
        return self._context

    @property
    def columns(self) -> list[str] | None:
        """The columns the suite reads, or None if an expectation reads the whole table."""
        names: list[str] = []
        for t in self.tallies:
            found = [t.kwargs[k] for k in ("column", "column_A", "column_B") if k in t.kwargs]
            found += list(t.kwargs.get("column_list", []))
            if not found:
                return None
            names += [n for n in found if n not in names]
        return names

    def selected(self, table: Any) -> Any:
        """The columns of a chunk's typed rows (Arrow) the suite reads."""
        wanted = self.columns
        if wanted is None or not set(wanted) <= set(table.column_names):
            return table  # the whole table, or a column it lacks: let GX say which, clearly
        return table.select(wanted)

    def validate(self, frame: Any) -> ChunkResult:
        """Validate one chunk (a pandas DataFrame indexed 0..n-1) and add it to the batch's tally."""
        return self.add(self.check(frame))

    def add(self, result: ChunkResult) -> ChunkResult:
        for tally, (evaluated, unexpected) in zip(self.tallies, result.counts, strict=True):
            tally.evaluated += evaluated
            tally.unexpected += unexpected
        if result.summary is not None and result.docs is not None:
            self.chunks.append(result.summary)
            self.docs.append(result.docs)
        return result

    def check(self, frame: Any) -> ChunkResult:
        """Validate one chunk (a pandas DataFrame indexed 0..n-1), changing nothing of the report."""
        counts = [(0, 0)] * len(self.tallies)
        if len(frame) == 0:
            return ChunkResult({}, counts)
        definition, suite = self._validator()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            batch = definition.get_batch(batch_parameters={"dataframe": frame})
            result = batch.validate(suite, result_format={"result_format": "COMPLETE"})
        failures: dict[int, tuple[str, str]] = {}
        if len(result.results) != len(self.tallies):  # GX skipped one: never pass that as success
            raise BadInput(f"{self.dataset.suite_path}: Great Expectations ran {len(result.results)} of the suite's "
                           f"{len(self.tallies)} expectations")
        for res in result.results:
            position = int(res.expectation_config.meta["anchorlake_position"])
            tally = self.tallies[position]
            message = _raised(res.exception_info)
            if message is not None:
                raise BadInput(f"{self.dataset.suite_path}: expectation {tally.type} "
                               f"on {tally.kwargs.get('column', '?')} cannot run: {message}")
            if res.success:
                counts[position] = (len(frame), 0)
                continue
            indices = (res.result or {}).get("unexpected_index_list")
            if indices is None:
                raise BatchRejected(f"dataset {self.dataset.name}: {tally.type} failed for the batch as a whole")
            counts[position] = (len(frame), len(indices))
            column = tally.kwargs.get("column", "")
            for i in indices:
                row = int(i["index"] if isinstance(i, dict) else i)
                failures.setdefault(row, (tally.reason, f"{tally.type} on {column}".strip()))
        for res in result.results:  # validation.json and Data Docs are public: counts only, never values
            if res.result:
                res.result = {k: v for k, v in res.result.items() if k in PUBLIC_RESULT_KEYS}
        summary = json.loads(json.dumps(result.to_json_dict(), default=str))
        return ChunkResult(failures, counts, summary, _render_docs(result))

    def check_thresholds(self) -> None:
        """Refuse the batch if any expectation's failing share is over its declared limit."""
        refusals = []
        for t in self.tallies:
            if t.max_failing_share is not None and t.evaluated and t.unexpected / t.evaluated > t.max_failing_share:
                refusals.append(f"{t.type} on {t.kwargs.get('column', '')}: {t.unexpected / t.evaluated:.1%} of rows "
                                f"fail, over {t.max_failing_share:.1%}")
        if refusals:
            raise BatchRejected(f"dataset {self.dataset.name}: the quality gate refuses the batch: " + "; ".join(refusals))

    def summary(self) -> dict[str, Any]:
        return {
            "format": "anchorlake.validation/1",
            "suite": self.suite.get("name"),
            "success": all(t.success for t in self.tallies),
            "expectations": [{"type": t.type, "kwargs": t.kwargs, "reason": t.reason,
                              "max_failing_share": t.max_failing_share, "evaluated": t.evaluated,
                              "unexpected": t.unexpected, "success": t.success} for t in self.tallies],
            "gx_results": self.chunks,
        }


def _raised(info: Any) -> str | None:
    """The exception message GX recorded for an expectation, flat or keyed by metric; else None."""
    if not isinstance(info, dict):
        return None
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message"))
    return None


@cache
def _page_view() -> Any:
    """This process's Data Docs page view: one, so its Jinja templates are compiled once, not per page."""
    from great_expectations.render.view import DefaultJinjaPageView

    return DefaultJinjaPageView()


def _render_docs(result: Any) -> str:
    """Great Expectations Data Docs page for one validation result."""
    from great_expectations.render.renderer import ValidationResultsPageRenderer

    try:
        return str(_page_view().render(ValidationResultsPageRenderer().render(result)))
    except Exception as e:  # rendering is a report, never a reason to lose a batch
        log.warning("Data Docs rendering failed: %s", e)
        return f"<html><body><p>Data Docs could not be rendered: {e}</p></body></html>"


# --- validating in worker processes --------------------------------------------------------------

_CHECKING: dict[tuple[str, str], QualityReport] = {}  # per dataset and suite: this process's report to check with


def checking(dataset: Dataset) -> QualityReport:
    """This process's report for checking `dataset`'s chunks, its GX context built: made before
    worker processes are forked, they inherit it rather than each building its own."""
    key = (dataset.name, dataset.suite_sha256())
    report = _CHECKING.get(key)
    if report is None or report.dataset != dataset:
        report = _CHECKING[key] = QualityReport(dataset)
        report._validator()
    return report


def check_chunk(dataset: Dataset, table: Any) -> ChunkResult:
    """Validate one chunk's typed rows (an Arrow table of the columns the suite reads)."""
    return checking(dataset).check(table.to_pandas())
