"""``results/tables/claims.csv``: the paper's w/ vs w/o Deferred directions beside the run's,
for every image table, with verdicts that respect seed noise (:mod:`vqshrink.verdicts`)."""

from __future__ import annotations

import logging

import pandas as pd

from vqshrink.stages import stage
from vqshrink.stages.synthetic_report import save_csv
from vqshrink.verdicts import image_claims

log = logging.getLogger(__name__)


@stage
def claims(*, tables: list[str], claims: str, settings: dict, preset: str) -> None:
    """One row per table x metric x (w/, w/o Deferred) pair of the image tables."""
    frame = image_claims([pd.read_csv(path, dtype={"table": str}) for path in tables])
    save_csv(frame, claims)
    counts = frame["verdict"].value_counts().to_dict()
    log.info("claims of %d tables (preset %s): %s", len(tables), preset, counts)
