"""The budget table of the targets (:mod:`vqshrink.plan.budget` computes it from config)."""

from __future__ import annotations

import logging

from vqshrink.plan.budget import total_gpu_hours, write_budget
from vqshrink.stages import stage

log = logging.getLogger(__name__)


@stage
def budget(*, table: str, settings: dict, preset: str, step_times: str | None = None) -> None:
    """Write ``results/plan/budget.csv``: the rows built at parse time, with GPU-hours where
    ``step_times`` (benchmarks/gpu/<gpu>.csv) has a matching measurement."""
    rows = write_budget(settings["rows"], table, step_times)
    total = total_gpu_hours(rows)
    log.info("budget of preset %s: %d training runs, %s GPU-hours%s", preset, len(rows),
             "unknown" if total is None else f"{total:.1f}",
             "" if step_times else " (no measured step times in benchmarks/gpu/)")
