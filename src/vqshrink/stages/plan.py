"""The budget table of the targets (:mod:`vqshrink.plan.budget` computes it from config)."""

from __future__ import annotations

import logging

from vqshrink.plan.budget import write_budget, write_summary
from vqshrink.stages import stage

log = logging.getLogger(__name__)


@stage
def budget(*, table: str, summary: str, settings: dict, preset: str,
           step_times: str | None = None) -> None:
    """Write ``results/plan/budget.csv``: the rows built at parse time, with GPU-hours where
    ``step_times`` (benchmarks/gpu/<gpu>.csv) has a matching measurement, and beside it
    ``budget_summary.csv``: per section and whole-DAG GPU-hours against the paper's budget."""
    rows = write_budget(settings["rows"], table, step_times)
    total = write_summary(rows, summary)[-1]
    log.info("budget of preset %s: %d training runs, %s GPU-hours (paper: %s; goal <= %s)%s",
             preset, len(rows),
             "unknown" if total["est_gpu_hours"] is None else f"{total['est_gpu_hours']:.1f}",
             total["paper_gpu_hours_low"], total["goal_gpu_hours"],
             "" if step_times else " (no measured step times in benchmarks/gpu/)")
