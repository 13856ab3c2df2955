"""Login-node memory of a rule waiting on its SLURM job: stage by name vs stage function.

Each side runs in a fresh child process that does what a rule's script does under
``--profile slurm``: the Snakemake script preamble's imports, then ``vqshrink.launch``,
then it submits a stage and waits for it. The two sides differ in one thing:

- by name (the workflow now): ``launch("vqshrink.stages.synthetic.make_data", ...)``; the job imports the
  stage's module (and torch), the waiting process does not;
- by function (before): the waiting process imports the stage's module to hand
  ``vqshrink.stages.synthetic.make_data`` itself to submitit (torch comes with it).

Printed: each side's peak RSS (VmHWM, MB) and their ratio. With a SLURM cluster
(``sinfo`` answers) both really submit ``synthetic.make_data`` and wait for it; without
one they stop after the imports, which is where the memory goes. Run (repository root)::

    PYTHONPATH=src python benchmarks/bench_waiting_rss.py
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")

CHILD = r"""
import json, sys
from snakemake.logging import logger
from snakemake.iocontainers import Snakemake
from vqshrink.launch import Resources, launch, peak_rss_mb
by_function, submit, work = sys.argv[1] == "function", sys.argv[2] == "1", sys.argv[3]
if by_function:
    from vqshrink.stages.synthetic import make_data as stage
else:
    stage = "vqshrink.stages.synthetic.make_data"
if submit:
    settings = {"input_dim": 2, "n_clusters": 10, "points_per_cluster": 100,
                "cluster_std": 1.0, "center_box": [-10.0, 10.0], "min_separation": 4.0,
                "data_seed": 0}
    launch(stage, {"data": f"{work}/d.npz", "record": f"{work}/d.json", "settings": settings,
                   "preset": "bench", "log": f"{work}/d.log", "threads": 1},
           name="bench-waiting-rss", resources=Resources(mem_mb=2000, runtime=10),
           launcher="slurm", log_dir=f"{work}/submitit")
print(json.dumps({"peak_rss_mb": peak_rss_mb(), "torch": "torch" in sys.modules}))
"""


def slurm_answers() -> bool:
    if not shutil.which("sinfo"):
        return False
    return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=30).returncode == 0


def measure(side: str, submit: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "SLURM_JOB_ID"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p)
    with tempfile.TemporaryDirectory(prefix="bench-rss-") as work:
        out = subprocess.run([sys.executable, "-c", CHILD, side, str(int(submit)), work],
                             env=env, capture_output=True, text=True, timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    submit = slurm_answers()
    print(f"SLURM job submitted and waited for: {'yes' if submit else 'no (imports only)'}")
    by_name, by_function = measure("name", submit), measure("function", submit)
    for label, r in (("by name (now)", by_name), ("by function (before)", by_function)):
        print(f"{label:22s} peak RSS {r['peak_rss_mb']:7.1f} MB   torch imported: {r['torch']}")
    print(f"ratio before/now: {by_function['peak_rss_mb'] / by_name['peak_rss_mb']:.1f}x "
          f"(target: now under 150 MB)")


if __name__ == "__main__":
    main()
