"""Verdicts that respect seed noise (vqshrink.verdicts), on constructed numbers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from vqshrink.stages import claims_report
from vqshrink.stages.synthetic_report import claims_frame
from vqshrink.verdicts import CLAIM_COLUMNS, image_claims, paired_verdict


@pytest.mark.parametrize("diffs, verdict", [
    ([0.10, 0.12, 0.11], "reproduced"),
    ([0.0025, -0.0006, 0.0008], "within noise"),   # the 2-D mode entropy: mixed signs
    ([0.001, 0.001, 0.05], "within noise"),        # all agree, but mean < 2 x standard error
    ([-0.2, -0.21, -0.19], "opposite"),
    ([0.0, 0.0, 0.0], "within noise"),
    ([0.3], "single run"),
    ([], "no run value"),
])
def test_paired_verdict(diffs, verdict):
    v = paired_verdict(diffs)
    assert v["verdict"] == verdict and v["seeds"] == len(diffs)
    if len(diffs) > 1:  # scipy's standard error of the mean is the reference
        assert v["diff_se"] == pytest.approx(stats.sem(diffs))
        assert v["diff_mean"] == pytest.approx(np.mean(diffs))


def test_synthetic_claims_need_agreement_beyond_twice_the_standard_error():
    rows = []
    # 3 seeds; euclidean: +1.0 each (reproduced); mode_entropy: +0.0009 mean with std 0.0015
    # (the 2-D case: within noise); mse: deferral worse by 0.5 each (opposite)
    for seed, ent in zip(range(3), (0.0025, -0.0006, 0.0008)):
        for sched, sign in (("baseline", 0), ("deferred", 1)):
            rows.append({"preset": "test", "input_dim": 2, "seed": str(seed), "schedule": sched,
                         "euclidean": 1.0 + sign * (1.0 + 0.01 * seed),
                         "euclidean_rel": 1.0, "perplexity": 10.0,
                         "mode_entropy": 2.0 + sign * ent, "modes_covered": 10,
                         "mse": 0.1 + sign * (0.5 + 0.01 * seed)})
    claims = claims_frame(pd.DataFrame(rows)).set_index("metric")
    assert claims.loc["euclidean", "verdict"] == "reproduced"
    assert claims.loc["mode_entropy", "verdict"] == "within noise"
    assert claims.loc["mode_entropy", "seeds_agreeing"] == "2/3"
    assert claims.loc["mse", "verdict"] == "opposite"
    assert claims.loc["euclidean_rel", "verdict"] == "within noise"  # no difference at all
    assert claims.loc["mse", "paired_se"] == pytest.approx(stats.sem([0.5, 0.51, 0.52]))


def _table(table: str, rows: list[tuple], seeds: bool = False) -> pd.DataFrame:
    """A table CSV as the report stages write it: labels, run values beside paper values."""
    out = []
    for model, deferred, seed, rfid, paper_rfid, euc, paper_euc in rows:
        out.append({"table": table, "preset": "test", "paper_dataset": "imagenet100",
                    "dataset": "digits", "model": model, "quantizer": "VQ", "gan": "no",
                    "deferred": deferred, "schedule": "x", "variant": model.lower(),
                    "rfid": rfid, "paper_rfid": paper_rfid, "euclidean": euc,
                    "paper_euclidean": paper_euc, **({"seed": seed} if seeds else {})})
    return pd.DataFrame(out)


def test_image_claims_pair_rows_and_compare_directions():
    t3 = _table("3", [
        # model, deferred, seed, r-FID, paper r-FID, Euc, paper Euc
        ("MaskGIT", "yes", 0, 9.0, 8.58, 5.0, 18.75),
        ("MaskGIT", "no", 0, 12.0, 12.22, 6.0, 6.45),
        ("VAR", "yes", 0, 5.0, 5.04, 7.0, 7.56),
        ("VAR", "no", 0, 5.0, 5.39, 1.0, 1.19),
    ])
    t12 = _table("12", [("LlamaGen", "yes", 0, 3.0, math.nan, 1.0, math.nan),
                        ("LlamaGen", "no", 0, 4.0, math.nan, 1.0, math.nan)])
    c = image_claims([t3, t12])
    assert list(c.columns) == CLAIM_COLUMNS and len(c) == 2 * 2 + 2
    row = c[(c["model"] == "MaskGIT") & (c["metric"] == "rfid")].iloc[0]
    assert (row["paper_w_deferred"], row["paper_wo_deferred"]) == (8.58, 12.22)
    assert row["paper_direction"] == "down" and row["run_direction"] == "down"
    assert row["run_agrees"] == "yes" and row["verdict"] == "single run"
    assert row["diff_mean"] == pytest.approx(3.0)  # toward the paper's direction
    euc = c[(c["model"] == "MaskGIT") & (c["metric"] == "euclidean")].iloc[0]
    assert euc["run_agrees"] == "no" and euc["diff_mean"] == pytest.approx(-1.0)
    tie = c[(c["model"] == "VAR") & (c["metric"] == "rfid")].iloc[0]
    assert tie["run_direction"] == "equal" and tie["run_agrees"] == "tie"
    assert set(c[c["table"] == "12"]["verdict"]) == {"no paper value"}
    assert "dataset" not in set(c["metric"])  # paper_dataset is a label, not a metric


def test_image_claims_over_seeds():
    rows = []
    for seed, (a, b) in enumerate([(5.0, 7.0), (5.1, 7.2), (4.9, 6.9)]):
        rows += [("VAR", "yes", seed, a, 5.04, b, 7.56), ("VAR", "no", seed, a + 1, 5.39,
                                                           b - 5 + (seed - 1) * 6, 1.19)]
    c = image_claims([_table("2", rows, seeds=True)]).set_index("metric")
    assert c.loc["rfid", "verdict"] == "reproduced" and c.loc["rfid", "seeds"] == 3
    assert c.loc["euclidean", "verdict"] == "within noise"  # diffs 11, 5, -1: mixed


def test_claims_stage_writes_the_csv(tmp_path):
    paths = []
    for name, frame in (("t3", _table("3", [("VAR", "yes", 0, 5.0, 5.04, 7.0, 7.56),
                                             ("VAR", "no", 0, 6.0, 5.39, 1.0, 1.19)])),):
        paths.append(str(tmp_path / f"{name}.csv"))
        frame.to_csv(paths[-1], index=False)
    claims_report.claims(tables=paths, claims=str(tmp_path / "claims.csv"), settings={},
                         preset="test")
    out = pd.read_csv(tmp_path / "claims.csv", dtype={"table": str})
    assert list(out["metric"]) == ["rfid", "euclidean"] and set(out["table"]) == {"3"}
    assert list(out["run_agrees"]) == ["yes", "yes"]
