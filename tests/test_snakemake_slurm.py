"""A Snakemake rule whose stage runs as a SLURM job (launcher: slurm) and fails there:
the remote traceback and the job's log path must reach Snakemake's error output."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.mark.slurm
def test_failed_slurm_stage_reaches_snakemake_output(tmp_path, slurm_cluster):
    (tmp_path / "Snakefile").write_text(textwrap.dedent("""\
        rule bad:
            output: "out_{x}.txt"
            params: launcher="slurm", slurm={"max_num_timeout": 2, "signal_delay_s": 30}
            resources: mem_mb=500, runtime=5
            script: "stage.py"
        """))
    (tmp_path / "stage.py").write_text(textwrap.dedent("""\
        from vqshrink.launch import launch_from_snakemake
        from vqshrink.stages import selftest

        launch_from_snakemake(snakemake, selftest.fail,
                              {"message": "deliberate failure in rule bad"})
        """))
    env = {k: v for k, v in os.environ.items() if k != "SLURM_JOB_ID"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-c1", "out_7.txt"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    assert "ValueError: deliberate failure in rule bad" in output
    logs = re.findall(r"stderr: (\S+_log\.err)", output)
    assert logs and Path(logs[0]).exists(), output
    log_dir = Path(logs[0]).parent
    assert log_dir.parent == tmp_path / "results" / "logs" / "submitit" / "bad"
    sbatch = (log_dir / f"{log_dir.name}_submission.sh").read_text()
    assert "#SBATCH --job-name=bad.x=7" in sbatch and "#SBATCH --signal=USR2@30" in sbatch
    assert "#SBATCH --mem=1GB" in sbatch and "#SBATCH --time=5" in sbatch
