# The layer between Snakemake and the experiment plan (vqshrink.plan.experiments): config,
# checks before any job, the rules' shared paths and params. What runs make each table and
# which settings each stage gets is the plan's business, not this file's.
import os
from pathlib import Path

from snakemake.exceptions import WorkflowError

from vqshrink import config as vqconfig
from vqshrink import launch as vqlaunch
from vqshrink.code_version import code_version
from vqshrink.plan.budget import PlanError
from vqshrink.plan.experiments import (
    CURVE_METRICS,
    IMAGE_DATASETS,
    SMOKE_ROOT,
    SWEEP_ARCH,
    Plan,
)

# Layer config.yaml < preset < --configfile files < --config and validate the result,
# before any rule is built (vqshrink.config.layered_config).
_resolved = vqconfig.layered_config(
    workflow, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
)
config.clear()
config.update(_resolved)

# The rules' script processes and their SLURM jobs import the package of this workflow's
# src/ also in a `--sdm conda` environment, which holds only its dependencies.
vqlaunch.share_package(Path(workflow.basedir) / "src")


def check_results_writable(root="results", below=False):
    """Stop before any job when outputs could not be written (a file in the way, a
    read-only or immutable directory; with ``below``, also one inside ``root``), naming
    the directory."""
    path = Path(root)
    probe = path / f".write-probe-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise WorkflowError(
            f"results directory {path.resolve()} is not writable: {err}"
        )
    for sub in path.rglob("*") if below else []:
        if sub.is_dir() and not os.access(sub, os.W_OK):
            raise WorkflowError(f"results directory {sub.resolve()} is not writable")


check_results_writable()
check_results_writable("results/state", below=True)  # written while stages train

# The plan of this config, checked as a whole before any job: unknown generator keys, and
# schedules that would void an experiment on a dataset's real size (vqshrink.plan.budget).
plan = Plan(config)
try:
    plan.check()
except PlanError as err:
    raise WorkflowError(str(err))

PRESET = config["preset"]
DATASETS = config["datasets"]
METRICS = config["metrics"]
SYN = config["synthetic"]
TOK = config["tokenizers"]
GEN = config["generators"]
STAGE_SCRIPT = "../scripts/stage.py"
ENV = "../../envs/vqshrink.yaml"

# Where rules run is decided in one place (vqshrink.launch.placement): these rules (tables,
# figures, the weight download, tiny data steps) run on the submitting machine under every
# launcher and executor (what the `localrules:` directive does); every other rule is a job.
workflow.localrules(*vqlaunch.LOCAL_RULES)


def stage_params(stage):
    """A rule's stage and a fingerprint of the code it runs (vqshrink.code_version):
    a code change reruns the stages running that code and their dependents only."""
    return {"stage": stage, "code": code_version(stage)}


def log_path(rule_name, pattern):
    return f"results/logs/{rule_name}/{pattern}.log"


def bench_path(rule_name, pattern):
    return f"results/benchmarks/{rule_name}/{pattern}.tsv"
