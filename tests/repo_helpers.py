"""Running Snakemake on a temporary copy of this repository (shared by the workflow tests)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COPY = ["Snakefile", "config.yaml", "workflow", "src", "envs", "slurm"]


def snakemake(*args: str, cwd: Path = ROOT, check: bool = True,
              env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=cwd,
                          capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def copy_repo(dest: Path) -> Path:
    """The workflow's files copied into ``dest`` (results land there, not in the tree)."""
    for name in COPY:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    return dest


def planned_jobs(output: str) -> dict[str, int]:
    """Rule -> count from the job-stats table of a dry run."""
    counts = {}
    for line in output.splitlines():
        m = re.fullmatch(r"\s*(\w+)\s+(\d+)\s*", line)
        if m and m.group(1) not in ("total", "count"):
            counts[m.group(1)] = int(m.group(2))
    return counts


def fake_sources(where: Path, weights: bool = True) -> Path:
    """Config overlay with fake dataset roots (and fake weight files), so that the paper
    preset can plan the image experiments here (a null root or a missing weight file stops
    the DAG)."""
    for sub in ("imagenet", "odir", "cifar", "weights/hub/checkpoints"):
        (where / sub).mkdir(parents=True, exist_ok=True)
    (where / "odir.csv").write_text("filename,labels\n")
    if weights:
        for name in ("inception-2015-12-05.pt", "vgg16-397923af.pth"):
            (where / "weights/hub/checkpoints" / name).write_text("fake")
    overlay = {"datasets": {"imagenet100": {"root": str(where / "imagenet")},
                            "odir": {"image_dir": str(where / "odir"),
                                     "annotation": str(where / "odir.csv")},
                            "cifar10": {"root": str(where / "cifar")}},
               "metrics": {"weights_dir": str(where / "weights")}}
    path = where / "fake.yaml"
    path.write_text(yaml.safe_dump(overlay))
    return path
