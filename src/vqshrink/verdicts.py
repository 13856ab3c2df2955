"""Verdicts that respect seed noise: does a run move a metric the way the paper does?

A paired difference per seed (w/ Deferred minus w/o, signed so that positive is the
paper's direction) is **reproduced** only when every seed agrees in direction AND the mean
difference exceeds twice its standard error (``std / sqrt(n)``, ``ddof=1``); **opposite**
when every seed disagrees by as much; otherwise **within noise**. One seed cannot tell a
difference from noise: its verdict is **single run** (the direction it shows is still
given, in ``run_agrees``).

:func:`image_claims` applies this to the image tables (Tables 2-12): one row per table x
metric x pair of rows that differ only in w/ vs w/o Deferred, the metric pairs found by the
tables' ``paper_<metric>`` / ``<metric>`` columns (the run's value printed beside the paper's
at the same scale, so the direction does not depend on how a metric is scaled).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

# Columns that name a table row apart from its arm (w/ or w/o Deferred) and seed.
PAIR_KEYS = ["model", "quantizer", "gan", "variant", "generator"]
CLAIM_COLUMNS = [
    "table", "preset", "paper_dataset", "dataset", *PAIR_KEYS, "metric",
    "paper_w_deferred", "paper_wo_deferred", "paper_direction",
    "run_w_deferred", "run_wo_deferred", "run_direction", "run_agrees",
    "seeds", "diff_mean", "diff_se", "seeds_agreeing", "verdict",
]


def paired_verdict(diffs) -> dict:
    """Verdict of per-seed differences signed so that positive is the claimed direction."""
    d = np.asarray(diffs, dtype=float)
    n = len(d)
    out = {"seeds": n, "diff_mean": float(d.mean()) if n else math.nan,
           "diff_se": float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
           "seeds_agreeing": f"{int((d > 0).sum())}/{n}"}
    if n == 0 or not np.isfinite(d).all():
        out["verdict"] = "no run value"
    elif n == 1:
        out["verdict"] = "single run"
    elif (d > 0).all() and out["diff_mean"] > 2 * out["diff_se"]:
        out["verdict"] = "reproduced"
    elif (d < 0).all() and -out["diff_mean"] > 2 * out["diff_se"]:
        out["verdict"] = "opposite"
    else:
        out["verdict"] = "within noise"
    return out


def _direction(x: float) -> str:
    if not np.isfinite(x):
        return ""
    return "up" if x > 0 else "down" if x < 0 else "equal"


def metric_stems(frame: pd.DataFrame) -> list[str]:
    """Metrics a table prints beside the paper's: numeric ``paper_<m>`` with a ``<m>`` column."""
    return [c[len("paper_"):] for c in frame.columns
            if c.startswith("paper_") and c[len("paper_"):] in frame.columns
            and pd.api.types.is_numeric_dtype(frame[c])]


def image_claims(tables: list[pd.DataFrame]) -> pd.DataFrame:
    """Claims rows (:data:`CLAIM_COLUMNS`) of the image tables (each a table CSV's frame)."""
    rows = []
    for frame in tables:
        keys = [k for k in PAIR_KEYS if k in frame.columns]
        labels = frame.iloc[0]
        for ident, group in frame.groupby(keys, sort=False, dropna=False):
            arm = {a: g for a, g in group.groupby("deferred")}
            if set(arm) != {"yes", "no"}:
                continue
            w, wo = arm["yes"], arm["no"]
            if "seed" in frame.columns:  # pair by seed when a table has several
                w, wo = w.set_index("seed"), wo.set_index("seed")
                seeds = sorted(set(w.index) & set(wo.index))
                w, wo = w.loc[seeds], wo.loc[seeds]
            for m in metric_stems(frame):
                paper_w, paper_wo = float(w[f"paper_{m}"].iloc[0]), float(wo[f"paper_{m}"].iloc[0])
                run_w = pd.to_numeric(w[m], errors="coerce").to_numpy(dtype=float)
                run_wo = pd.to_numeric(wo[m], errors="coerce").to_numpy(dtype=float)
                paper_diff = paper_w - paper_wo
                sign = float(np.sign(paper_diff)) if np.isfinite(paper_diff) else 0.0
                # differences toward the paper's direction (positive: the paper's way)
                result = paired_verdict(sign * (run_w - run_wo))
                run_diff = float(np.mean(run_w - run_wo)) if len(run_w) else math.nan
                if not np.isfinite(paper_diff):
                    result["verdict"] = "no paper value"
                elif sign == 0:
                    result["verdict"] = "paper shows no difference"
                toward = sign * run_diff
                agrees = "" if not sign or not np.isfinite(toward) else \
                    "yes" if toward > 0 else "no" if toward < 0 else "tie"
                rows.append({
                    "table": labels["table"], "preset": labels.get("preset"),
                    "paper_dataset": labels.get("paper_dataset"),
                    "dataset": labels.get("dataset"),
                    **dict(zip(keys, ident if isinstance(ident, tuple) else (ident,))),
                    "metric": m, "paper_w_deferred": paper_w, "paper_wo_deferred": paper_wo,
                    "paper_direction": _direction(paper_diff),
                    "run_w_deferred": float(np.mean(run_w)) if len(run_w) else math.nan,
                    "run_wo_deferred": float(np.mean(run_wo)) if len(run_wo) else math.nan,
                    "run_direction": _direction(run_diff), "run_agrees": agrees, **result,
                })
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)
