"""Where a stage runs: local rules stay on the submitting machine, every other rule is a job
with runtime and memory, and a job that asked for a GPU and sees none stops."""

from __future__ import annotations

import os
import re
import warnings
from types import SimpleNamespace

import pytest
import torch

from repo_helpers import copy_repo, snakemake
from vqshrink import launch as vqlaunch
from vqshrink.launch import LOCAL_RULES, GPUUnavailable, Resources, StageJob, launch, placement
from vqshrink.stages import selftest


@pytest.fixture
def no_cuda(monkeypatch):
    """A machine whose torch finds no usable GPU, saying why (as an old driver does)."""
    def unavailable():
        warnings.warn("CUDA initialization: The NVIDIA driver on your system is too old "
                      "(found version 11040).")
        return False
    monkeypatch.setattr(torch.cuda, "is_available", unavailable)
    monkeypatch.delenv("VQSHRINK_LOCAL_PROCS", raising=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)


def test_a_gpu_rule_without_cuda_stops_loudly(tmp_path, no_cuda):
    with pytest.raises(GPUUnavailable) as err:
        launch(selftest.dist_env, {"out_dir": str(tmp_path)}, name="tokenizer_train_vq.x",
               resources=Resources(gpu=2), launcher="local")
    message = str(err.value)
    assert "tokenizer_train_vq.x" in message and "gpu=2" in message
    assert "no CUDA device" in message and "driver on your system is too old" in message
    assert not list(tmp_path.iterdir())  # the stage never ran


def test_the_slurm_job_side_checks_the_gpu_too(tmp_path, no_cuda, monkeypatch):
    monkeypatch.setattr(vqlaunch.submitit, "JobEnvironment",
                        lambda: SimpleNamespace(num_tasks=1))
    with pytest.raises(GPUUnavailable, match="gpu=1"):
        StageJob("vqshrink.stages.selftest.dist_env", {"out_dir": str(tmp_path)}, gpu=1)()
    assert StageJob("vqshrink.stages.selftest.dist_env", {"out_dir": str(tmp_path)})()["RANK"] is None


def test_a_cpu_rule_runs_without_a_gpu(tmp_path, no_cuda):
    seen = launch(selftest.dist_env, {"out_dir": str(tmp_path)}, name="t",
                  resources=Resources(gpu=0), launcher="local")
    assert seen["pid"] == os.getpid()


def test_local_rules_run_here_whatever_the_launcher(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    assert placement("fig2", "slurm", 0) == "local"
    assert placement("synthetic_train_vq", "slurm", 0) == "slurm"
    assert placement("synthetic_train_vq", "local", 1) == "local"
    with pytest.raises(ValueError, match="fig5 .* gpu=1"):
        placement("fig5", "slurm", 1)
    # a report rule under the slurm profile (launcher resource) runs in this process
    sm = SimpleNamespace(params={}, resources={"launcher": "slurm", "mem_mb": 500},
                         config={"launcher": "slurm"}, rule="fig3_fig6", wildcards={})
    seen = vqlaunch.launch_from_snakemake(sm, selftest.dist_env, {"out_dir": str(tmp_path)})
    assert seen["pid"] == os.getpid()


def test_every_job_that_is_not_local_has_runtime_and_memory(tmp_path):
    """The whole demo DAG: tables, figures and tiny data steps are local rules; every
    other rule states runtime and mem_mb (what `--executor slurm` needs) and no local rule
    asks for a GPU."""
    repo = copy_repo(tmp_path)
    # `all` and the budget, which is asked for on its own (not part of `all`)
    out = snakemake("-n", "all", "results/plan/budget.csv", "--config", "preset=demo",
                    cwd=repo).stdout
    blocks = re.split(r"\n(?=(?:local)?rule \w+:)", out)
    seen = set()
    for block in blocks:
        m = re.match(r"(?:local)?rule (\w+):", block)
        if not m or m.group(1) == "all":
            continue
        rule = m.group(1)
        seen.add(rule)
        resources = re.search(r"resources: (.*)", block).group(1)
        outputs = re.search(r"output: (.*)", block).group(1)
        if rule in LOCAL_RULES:
            assert not re.search(r"\bgpu=[1-9]", resources), (rule, resources)
        else:
            assert "runtime=" in resources and "mem_mb=" in resources, (rule, resources)
            assert "results/tables/" not in outputs and "results/figures/" not in outputs, rule
    assert {"synthetic_data", "synthetic_eval", "fig2", "generator_table"} <= seen
    assert set(LOCAL_RULES) <= seen | {"fetch_weights", "smoke_sources"}  # smoke preset only
