import os
import subprocess
from pathlib import Path

import pytest

# ---------------------------------------------------------------------------------------
# SLURM test cluster (.ci/slurm-cluster.sh)
#
# Tests that need a real SLURM take the `slurm_cluster` fixture (and carry the `slurm`
# marker). Without a running cluster they are skipped, or the fixture starts one when
# VQSHRINK_START_SLURM=1. Under CI=true a missing cluster is an error, never a skip.
# ---------------------------------------------------------------------------------------

SLURM_CLUSTER_SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "slurm-cluster.sh"


@pytest.fixture(scope="session")
def slurm_cluster() -> dict:
    """The single-node cluster of .ci/slurm-cluster.sh: partition ``debug``, with accounting."""

    def cluster(command: str, timeout: int) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SLURM_CLUSTER_SCRIPT), command], capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL, check=False)

    def unavailable(reason: str) -> None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}\n(CI=true: SLURM tests must run, not be skipped)", pytrace=False)
        pytest.skip(reason)

    if os.environ.get("VQSHRINK_START_SLURM") == "1":
        started = cluster("start", timeout=900)  # may apt-get install first
        if started.returncode != 0:
            unavailable(f"`{SLURM_CLUSTER_SCRIPT} start` failed (rc {started.returncode}):\n"
                        f"{(started.stdout + started.stderr)[-3000:]}")
    status = cluster("status", timeout=60)
    if status.returncode != 0:
        unavailable("no SLURM test cluster is running (start one with `bash .ci/slurm-cluster.sh "
                    f"start`, or set VQSHRINK_START_SLURM=1):\n{status.stdout}{status.stderr}")
    return {"partition": "debug", "status": status.stdout}
