"""The README is executable: every `snakemake` command in it dry-runs (-n) in a copy of the
repository, and no option swallows the targets it names.

Commands are found generically (fenced code blocks and inline code spans), so commands added
to the README later are covered too. How each is adapted for a dry run:
* ``-n`` is added; ``--config preset=demo`` where the command chooses no preset (the demo
  preset plans without dataset paths or weights);
* a ``--configfile`` that the README only names (e.g. ``my.yaml``) is created empty;
* ``<placeholders>`` (e.g. ``<target>``) become ``results/tables/synthetic.csv``;
* ``--report FILE`` is dropped (a report needs the outputs on disk; the dry run plans
  its DAG);
* cluster profiles and ``--executor slurm`` dry-run as written (nothing is submitted).
"""

from __future__ import annotations

import re
import shlex

import pytest

from repo_helpers import ROOT, copy_repo, planned_jobs, snakemake

README = ROOT / "README.md"
PLACEHOLDER_TARGET = "results/tables/synthetic.csv"
# Commands that look after the working directory rather than plan jobs.
MAINTENANCE = {"--unlock", "--cleanup-metadata", "--lint", "--list-rules", "--list-changes",
               "--summary", "--detailed-summary", "--dag", "--rulegraph", "--filegraph",
               "--delete-all-output", "--delete-temp-output", "--version"}


def readme_commands(text: str) -> list[str]:
    """Every `snakemake ...` command of the README, from fenced blocks and inline spans,
    one per shell command (split at &&, ;, |), comments dropped, in order, unique."""
    chunks = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        chunks += block.splitlines()
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    chunks += re.findall(r"`([^`\n]+)`", prose)
    commands = []
    for chunk in chunks:
        chunk = re.sub(r"\s#.*$", "", chunk.strip())
        for part in re.split(r"&&|;|\|", chunk):
            part = part.strip()
            if part.startswith("snakemake ") and part not in commands:
                commands.append(part)
    return commands


def dry_run_args(command: str) -> list[str]:
    """The command's arguments for a dry run (see the module docstring). ``--report FILE``
    is dropped: a report needs the outputs on disk, so its dry run is the plan of its DAG."""
    words = shlex.split(command)[1:]
    if "--report" in words:
        i = words.index("--report")
        del words[i:i + 2]
    words = [PLACEHOLDER_TARGET if re.fullmatch(r"<[^>]+>", w) else w for w in words]
    if not any(w.startswith("preset=") for w in words):
        words += ["--config", "preset=demo"] if "--config" not in words else []
        if "--config" in words and "preset=demo" not in words:
            words.insert(words.index("--config") + 1, "preset=demo")
    return words if "-n" in words else ["-n", *words]


def named_targets(words: list[str]) -> list[str]:
    """The results/ paths a command names, other than as the value of a one-value option."""
    single_valued = {"--report", "--configfile", "--profile", "-d", "--directory"}
    return [w for prev, w in zip([None, *words], words)
            if w.startswith("results/") and prev not in single_valued]


COMMANDS = readme_commands(README.read_text())
# Commands whose dry runs are the same (e.g. `snakemake -n` and the demo command) run once.
DRY_RUNS = list({" ".join(dry_run_args(c)): c for c in reversed(COMMANDS)}.values())[::-1]


def test_readme_has_the_documented_commands():
    """The parser finds the README's commands (a broken parser must not pass vacuously)."""
    joined = "\n".join(COMMANDS)
    assert len(COMMANDS) >= 8
    for must in ("--profile slurm", "--profile slurm/executor", "--report", "--forcerun",
                 "fetch_weights"):
        assert must in joined, must


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_keeps_its_targets(command):
    """Options taking several values (--forcerun, --config, ...) must not swallow a target:
    every results/ path the command names is a target as Snakemake parses it."""
    from snakemake.cli import get_argument_parser

    words = dry_run_args(command)
    args = get_argument_parser().parse_args(words)
    assert set(named_targets(words)) <= set(args.targets or []), (command, args.targets)


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return copy_repo(tmp_path_factory.mktemp("readme"))


@pytest.mark.workflow
@pytest.mark.parametrize("command", DRY_RUNS)
def test_readme_command_dry_runs(command, repo):
    """Each command plans; one that names targets plans them, not the default `all`."""
    args = dry_run_args(command)
    for prev, word in zip(args, args[1:]):
        if prev == "--configfile" and not (repo / word).exists():
            (repo / word).parent.mkdir(parents=True, exist_ok=True)
            (repo / word).write_text("{}\n")
    proc = snakemake(*args, cwd=repo, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(args)}\n{out[-3000:]}"
    if set(args) & MAINTENANCE:  # no plan to check: it only has to be accepted
        return
    jobs = planned_jobs(proc.stdout)
    assert jobs or "Nothing to be done" in out, out[-2000:]
    if named_targets(args):
        assert "all" not in jobs, (command, jobs)

