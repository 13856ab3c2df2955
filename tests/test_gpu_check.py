"""benchmarks/gpu_check.py: its measurements carry the paper budget's keys and feed the budget."""

from __future__ import annotations

import importlib.util
import math
import sys

import pandas as pd
import pytest

from vqshrink.plan import budget as pb

from repo_helpers import ROOT, copy_repo, snakemake


def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks/gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass needs its module registered
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def paper_budget(tmp_path_factory):
    """The paper preset's budget (no dataset needed) in a copy of the workflow."""
    repo = copy_repo(tmp_path_factory.mktemp("repo"))
    snakemake("-c1", "results/plan/budget.csv", cwd=repo)
    return repo, pd.read_csv(repo / "results/plan/budget.csv")


def _key(row) -> tuple:
    return (row["rule"], row["model"], int(row["resolution"]), int(row["batch_per_gpu"]),
            str(row["amp"]), str(row["compile"]).lower())


def test_every_gpu_run_of_the_paper_budget_has_a_measurement(paper_budget):
    """The script's jobs in its plan (amp x compile) cover every GPU row's join key."""
    _, budget = paper_budget
    gc = gpu_check()
    planned = {(j.rule, j.model, j.resolution, j.batch_per_gpu, amp, str(comp).lower())
               for j, amp, comp in gc.plan(gc.all_jobs(gc.paper_config()), quick=False)}
    gpu_rows = budget[budget["gpus"] > 0]
    assert len(gpu_rows) > 50
    missing = {_key(r) for _, r in gpu_rows.iterrows()} - planned
    assert not missing


def test_quick_measurements_feed_the_budget_and_its_total(paper_budget):
    """--quick on the CIFAR-10 sweep's tokenizer (paper shapes, batch 1, CPU) into the copy's
    benchmarks/gpu/: the budget fills est_gpu_hours for exactly the matching rows, and the
    summary's sweep and whole-DAG estimates are their sums once every GPU row is measured."""
    repo, _ = paper_budget
    out = repo / "benchmarks" / "gpu"
    gc = gpu_check()
    assert gc.main(["--quick", "--out", str(out), "--only", "cifar_vqvae"]) == 0
    measured = pd.read_csv(out / "cpu.csv")
    assert set(measured["model"]) == {"cifar_vqvae/ae", "cifar_vqvae/vq_ema"}
    assert measured["step_s"].gt(0).all() and measured["error"].isna().all()
    # an error row and a sampling row are written too, and the budget skips them
    extra = pd.DataFrame([{**measured.iloc[0].to_dict(), "model": "maskgit/vq", "step_s": None,
                           "error": "OutOfMemoryError: ..."},
                          {**measured.iloc[0].to_dict(), "kind": "sample", "step_s": 1.0}])
    pd.concat([measured, extra]).to_csv(out / "cpu.csv", index=False)
    snakemake("-c1", "-f", "results/plan/budget.csv", cwd=repo)
    b = pd.read_csv(repo / "results/plan/budget.csv")
    sweep = b["model"].str.startswith("cifar_vqvae/")
    assert sweep.sum() == 27  # one autoencoder, 13 codebook sizes x 2 schedules
    step = dict(zip(measured["model"], measured["step_s"]))
    expect = b.loc[sweep, "max_steps"] * b.loc[sweep, "model"].map(step) * b.loc[sweep, "gpus"] \
        / 3600
    assert b.loc[sweep, "est_gpu_hours"].to_numpy() == pytest.approx(expect.to_numpy(), abs=1e-3)
    assert b.loc[~sweep, "est_gpu_hours"].isna().all()
    s = pd.read_csv(repo / "results/plan/budget_summary.csv").set_index("scope")
    assert s.loc["section vqvae_sweep", "est_gpu_hours"] == pytest.approx(
        math.fsum(b.loc[sweep, "est_gpu_hours"]), abs=1e-9)
    assert math.isnan(s.loc["whole DAG", "est_gpu_hours"])  # the other GPU runs: unmeasured
    # the paper's budget: 2 x 24 x (1.5, 3) GPU-hours per image tokenizer VQ run, (3, 6) days
    # per generator; the goal is a quarter of the low end
    tok = b[(b["section"] == "tokenizers") & (b["rule"] == "tokenizer_train_vq")]
    gen = b[b["rule"] == "generator_train"]
    assert (tok["paper_gpu_hours_low"] == 72).all() and (gen["paper_gpu_hours_high"] == 288).all()
    assert b.loc[b["rule"] == "tokenizer_pretrain_ae", "paper_gpu_hours_low"].isna().all()
    low = 72 * len(tok) + 144 * len(gen)
    assert s.loc["whole DAG", "paper_gpu_hours_low"] == low
    assert s.loc["whole DAG", "goal_gpu_hours"] == low / 4


def test_summary_total_is_the_sum_and_is_judged_against_the_goal():
    """Every GPU row measured: the whole-DAG estimate is the sum of the rows', compared with a
    quarter of the paper's low-end GPU-hours."""
    rows = [{"section": "tokenizers", "rule": "tokenizer_train_vq", "gpus": 2,
             "est_gpu_hours": 10.125, "paper_gpu_hours_low": 72.0, "paper_gpu_hours_high": 144.0},
            {"section": "generators", "rule": "generator_train", "gpus": 2,
             "est_gpu_hours": 30.5, "paper_gpu_hours_low": 144.0, "paper_gpu_hours_high": 288.0},
            {"section": "synthetic", "rule": "synthetic_train_vq", "gpus": 0,
             "est_gpu_hours": None, "paper_gpu_hours_low": None, "paper_gpu_hours_high": None}]
    total = pb.summary_rows(rows)[-1]
    assert total["scope"] == "whole DAG" and total["est_gpu_hours"] == 40.625
    assert total["goal_gpu_hours"] == 54.0 and total["meets_goal"] is True
    rows[1]["est_gpu_hours"] = 50.0
    assert pb.summary_rows(rows)[-1]["meets_goal"] is False
