"""Reruns after a code change follow the code a stage runs (vqshrink.code_version and the
rules' `code` param), not the one entry script every rule shares."""

from __future__ import annotations

import os
import shutil

import pytest

from repo_helpers import ROOT, copy_repo, planned_jobs, snakemake
from vqshrink import code_version as cv

STAGES = ("vqshrink.stages.synthetic.make_data", "vqshrink.stages.tokenizer.train_vq",
          "vqshrink.stages.generator.train", "vqshrink.stages.synthetic_report.tables")


@pytest.fixture
def src(tmp_path, monkeypatch):
    """A copy of src/ that code_version reads instead of the tree's."""
    shutil.copytree(ROOT / "src", tmp_path / "src")
    monkeypatch.setattr(cv, "SRC", tmp_path / "src")
    cv._parsed.cache_clear()
    yield tmp_path / "src" / "vqshrink"
    cv._parsed.cache_clear()


def versions() -> dict[str, str]:
    cv._parsed.cache_clear()
    return {s: cv.code_version(s) for s in STAGES}


def test_comments_formatting_and_docstrings_change_nothing(src):
    before = versions()
    path = src / "stages" / "synthetic.py"
    text = path.read_text()
    first_def = text.index("\ndef ")
    edited = text[:first_def] + "\n\n# a new comment\n" + text[first_def:]
    path.write_text("# header comment\n" + edited.replace('"""', '"""Edited. ', 1))
    assert versions() == before


def test_a_change_reruns_the_stages_that_import_it(src):
    before = versions()
    with open(src / "models" / "var.py", "a") as fh:
        fh.write("\nVAR_TWEAK = 2\n")
    after = versions()
    assert after["vqshrink.stages.generator.train"] != before["vqshrink.stages.generator.train"]
    for stage in STAGES[:2] + STAGES[3:]:
        assert after[stage] == before[stage], stage
    with open(src / "stages" / "synthetic.py", "a") as fh:
        fh.write("\nSYN_TWEAK = 1\n")
    again = versions()
    assert again["vqshrink.stages.synthetic.make_data"] != after["vqshrink.stages.synthetic.make_data"]
    assert again["vqshrink.stages.tokenizer.train_vq"] == after["vqshrink.stages.tokenizer.train_vq"]


def test_modules_follow_lazy_and_relative_imports(src):
    (src / "stages" / "lazy_probe.py").write_text(
        "def run():\n    from ..metrics import diversity\n    import vqshrink.kmeans\n")
    mods = cv.modules_of("vqshrink.stages.lazy_probe.run")
    assert {"vqshrink.metrics.diversity", "vqshrink.metrics", "vqshrink.kmeans",
            "vqshrink.stages", "vqshrink"} <= set(mods)
    with pytest.raises(ValueError, match="unknown stage"):
        cv.modules_of("vqshrink.stages.nope.run")


def test_snakemake_reruns_on_package_changes_not_on_the_entry_script(tmp_path):
    repo = copy_repo(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(repo / "src")}  # the copy's package, as installed
    target = "results/synthetic/data/dim2.npz"
    snakemake("-c1", target, "--config", "preset=demo", cwd=repo, env=env)
    # the shared entry script's mtime (a touch, a checkout): not a reason to rerun
    os.utime(repo / "workflow/scripts/stage.py")
    # the code this stage runs (the data generator of vqshrink.data.synthetic): a reason
    with open(repo / "src/vqshrink/data/synthetic.py", "a") as fh:
        fh.write("\nDATA_TWEAK = 1\n")
    proc = snakemake("-n", target, "--profile", "slurm", "--config", "preset=demo", cwd=repo,
                     env=env)
    assert planned_jobs(proc.stdout) == {"synthetic_data": 1}
    assert "Params have changed since last execution" in proc.stdout
    assert "Code has changed" not in proc.stdout
