"""`--profile slurm` on a real cluster: a user's --configfile keeps the SLURM launcher, the
local rules stay local, and the process waiting on a job stays small (no torch)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
import yaml

from repo_helpers import copy_repo

SMALL_WAITER_MB = 150
INIT = "results/synthetic/dim2/h32/seed0/baseline/init/model.pt"


def _sacct(since: str) -> list[tuple[str, str]]:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-S", since, "-o", "JobName%200,State"],
                         capture_output=True, text=True, check=True).stdout
    return [tuple(line.split("|")[:2]) for line in out.splitlines() if line.strip()]


def _sacct_settled(since: str, prefix: str, timeout: float = 60.0) -> list[tuple[str, str]]:
    """sacct once our jobs have left the live states. The launcher returns when the job's
    result file is written, which can be a moment before slurmctld records the exit (seen in
    CI: RUNNING right after snakemake returned)."""
    live = ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING")
    deadline = time.monotonic() + timeout
    while True:
        jobs = _sacct(since)
        ours = [state for name, state in jobs if name.startswith(prefix)]
        if (ours and not any(state.startswith(live) for state in ours)) \
                or time.monotonic() > deadline:
            return jobs
        time.sleep(1.0)


@pytest.mark.slurm
def test_profile_with_a_user_configfile_submits_jobs(tmp_path, slurm_cluster):
    repo = copy_repo(tmp_path)
    (repo / "my.yaml").write_text(yaml.safe_dump({"preset": "demo",
                                                  "synthetic": {"kmeans_iters": 3}}))
    env = {k: v for k, v in os.environ.items() if k != "SLURM_JOB_ID"}
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 2))
    proc = subprocess.run([sys.executable, "-m", "snakemake", INIT, "--profile", "slurm",
                           "--configfile", "my.yaml"], cwd=repo, env=env, capture_output=True,
                          text=True, timeout=600, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    jobs = _sacct_settled(since, "synthetic_init_codebook.dim=2,")
    names = [name for name, _ in jobs]
    ours = [(n, s) for n, s in jobs if n.startswith("synthetic_init_codebook.dim=2,")]
    assert ours and all(s == "COMPLETED" for _, s in ours), jobs
    assert not any(n.startswith("synthetic_data") for n in names), jobs  # a local rule
    record = json.loads((repo / INIT).with_name("run.json").read_text())
    assert record["preset"] == "demo" and record["settings"]["kmeans_iters"] == 3
    # the rule's process waited for its job without importing torch
    peaks = [float(x) for x in re.findall(r"waiting for it took (\d+) MB peak RSS", output)]
    assert len(peaks) == 1, output
    assert peaks[0] < SMALL_WAITER_MB, output
