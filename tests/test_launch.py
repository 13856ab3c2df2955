"""vqshrink.launch: in-process and spawned local runs, the resource -> sbatch mapping, and
real SLURM jobs (round trip, remote failure, timeout -> checkpoint -> requeue -> resume)."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import submitit

from vqshrink.launch import (
    RemoteTraceback,
    Resources,
    StageFailed,
    StageJob,
    inside_slurm_job,
    launch,
    make_executor,
    parse_slurm_extra,
    share_package,
)
from vqshrink.stages import selftest

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture
def no_slurm_job(monkeypatch):
    """As if on a login node, even when pytest itself runs inside a SLURM allocation."""
    for name in ("SLURM_JOB_ID", "VQSHRINK_LOCAL_PROCS"):
        monkeypatch.delenv(name, raising=False)


# ------------------------------------------------------------------------ local launcher


def test_local_runs_in_process_and_returns_the_result(tmp_path, no_slurm_job):
    out = launch(selftest.dist_env, dict(out_dir=str(tmp_path)), name="t", resources=Resources())
    assert out["pid"] == os.getpid()
    assert out["RANK"] is None  # one process: no distributed variables


def test_local_propagates_the_exception_itself(no_slurm_job):
    with pytest.raises(ValueError, match="^deliberate 1$") as info:
        launch(selftest.fail, dict(message="deliberate 1"), name="t", resources=Resources())
    assert info.traceback[-1].name == "fail"


def test_slurm_launcher_inside_a_slurm_job_runs_in_process(tmp_path, monkeypatch, no_slurm_job):
    # e.g. a job that Snakemake's own slurm executor placed: never submit from there
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    assert inside_slurm_job()
    out = launch(selftest.dist_env, dict(out_dir=str(tmp_path)), name="t", resources=Resources(),
                 launcher="slurm", log_dir=tmp_path / "never")
    assert out["pid"] == os.getpid() and out["SLURM_JOB_ID"] == "4242"
    assert not (tmp_path / "never").exists()


def test_unknown_launcher_is_refused(no_slurm_job):
    with pytest.raises(ValueError, match="launcher 'pbs'"):
        launch(selftest.fail, dict(message="x"), name="t", resources=Resources(), launcher="pbs")


def test_two_local_processes_get_their_rank_variables(tmp_path, monkeypatch, no_slurm_job):
    monkeypatch.setenv("VQSHRINK_LOCAL_PROCS", "2")
    before = dict(os.environ)
    out = launch(selftest.dist_env, dict(out_dir=str(tmp_path)), name="t", resources=Resources())
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert out == ranks[0]  # rank 0's return value comes back
    for rank, seen in enumerate(ranks):
        assert seen["RANK"] == seen["LOCAL_RANK"] == str(rank)
        assert seen["WORLD_SIZE"] == "2" and seen["MASTER_ADDR"] == "127.0.0.1"
        assert seen["pid"] != os.getpid()
    assert ranks[0]["MASTER_PORT"] == ranks[1]["MASTER_PORT"] and int(ranks[0]["MASTER_PORT"]) > 0
    assert ranks[0]["pid"] != ranks[1]["pid"]
    assert dict(os.environ) == before  # the parent's environment is left alone


def test_a_failing_local_process_raises_its_exception_with_its_traceback(monkeypatch, no_slurm_job):
    monkeypatch.setenv("VQSHRINK_LOCAL_PROCS", "2")
    with pytest.raises(ValueError, match="^only rank 1$") as info:
        launch(selftest.fail, dict(message="only rank 1", only_rank=1), name="t",
               resources=Resources())
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "local process rank 1 of 2" in str(cause)
    assert 'selftest.py", line' in str(cause) and "ValueError: only rank 1" in str(cause)


# ------------------------------------------------------------------- resources -> sbatch


def test_resources_from_snakemake_take_known_names_and_ignore_the_rest():
    from snakemake.iocontainers import ResourceList  # what snakemake.resources is in a script

    given = dict(_cores=8, _nodes=1, tmpdir="/tmp", mem_mib=7630, gpu=2, cpus_per_task=8,
                 mem_mb="8000", runtime=90, slurm_partition="gpu", constraint="a100",
                 slurm_extra="--qos=high")
    expected = Resources(gpu=2, cpus_per_task=8, mem_mb=8000, runtime=90, slurm_partition="gpu",
                         constraint="a100", slurm_extra="--qos=high")
    assert Resources.from_snakemake(ResourceList(fromdict=given)) == expected
    assert Resources.from_snakemake(SimpleNamespace(**given)) == expected
    assert Resources.from_snakemake(given) == expected
    assert Resources.from_snakemake(SimpleNamespace(_cores=1)) == Resources()
    assert Resources.from_snakemake({"slurm_account": "", "runtime": 5.0}) == Resources(runtime=5)


@pytest.mark.parametrize("extra, expected", [
    (None, {}),
    ("", {}),
    ("--qos=high --exclusive", {"qos": "high", "exclusive": True}),
    ("'--qos=high' --gres gpu:2 --requeue", {"qos": "high", "gres": "gpu:2", "requeue": True}),
    ("--mail-type=END,FAIL --comment='two words'",
     {"mail-type": "END,FAIL", "comment": "two words"}),
    ("--exclusive --qos high", {"exclusive": True, "qos": "high"}),
])
def test_slurm_extra_parsing(extra, expected):
    assert parse_slurm_extra(extra) == expected


@pytest.mark.parametrize("extra", ["-q high", "qos=high", "--qos=high -x"])
def test_slurm_extra_refuses_what_it_cannot_map(extra):
    with pytest.raises(ValueError, match="slurm_extra"):
        parse_slurm_extra(extra)


def sbatch_text(monkeypatch, tmp_path, resources, **kwargs) -> list[str]:
    # no cluster needed: pretend srun exists, then ask submitit for the batch file text
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 2))
    executor = make_executor(resources, name=kwargs.pop("name", "rule.x=1"),
                             folder=tmp_path / "logs" / "%j", **kwargs)
    slurm = executor._executor
    return slurm._make_submission_file_text(slurm._submitit_command_str, "uid").splitlines()


def test_gpu_job_maps_to_one_task_per_gpu(monkeypatch, tmp_path):
    lines = sbatch_text(monkeypatch, tmp_path, Resources(
        gpu=4, cpus_per_task=10, mem_mb=64000, runtime=720, slurm_partition="gpu",
        slurm_account="lab", constraint="a100", slurm_extra="--qos=high --exclusive"),
        signal_delay_s=120)
    for line in ["--gpus-per-node=4", "--ntasks-per-node=4", "--nodes=1", "--cpus-per-task=10",
                 "--mem=63GB", "--time=720", "--partition=gpu", "--account=lab",
                 "--constraint=a100", "--qos=high", "--exclusive", "--signal=USR2@120",
                 "--job-name=rule.x=1", "--open-mode=append",
                 f"--output={tmp_path}/logs/%j/%j_0_log.out"]:
        assert f"#SBATCH {line}" in lines, line
    assert any(line.startswith("srun ") and "submitit.core._submit" in line for line in lines)


def test_cpu_job_asks_for_no_gpus_and_at_least_1gb(monkeypatch, tmp_path):
    lines = sbatch_text(monkeypatch, tmp_path, Resources(mem_mb=500, runtime=1), signal_delay_s=120)
    assert not any(re.match(r"#SBATCH --(gpus|gres)", line) for line in lines)
    for line in ["--ntasks-per-node=1", "--cpus-per-task=1", "--mem=1GB", "--time=1",
                 # a warning due before the job starts would requeue it at once, forever
                 "--signal=USR2@20"]:
        assert f"#SBATCH {line}" in lines, line
    assert not any(re.match(r"#SBATCH --(partition|account|constraint|qos)=", x) for x in lines)


def test_stage_job_requeues_a_fresh_copy_with_the_same_arguments():
    job = StageJob(selftest.count_to, {"n": 3, "state_dir": "s", "out": "o"})
    delayed = job.checkpoint()
    assert isinstance(delayed.function, StageJob) and delayed.function is not job
    assert delayed.function.stage is selftest.count_to
    assert delayed.function.kwargs == job.kwargs and delayed.args == () and delayed.kwargs == {}


# --------------------------------------------------------------------------- real SLURM


@pytest.fixture
def slurm_env(slurm_cluster, monkeypatch, no_slurm_job):
    # the job inherits this process's environment: make sure it can import vqshrink
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (SRC, path) if p))
    return slurm_cluster


SMALL = Resources(mem_mb=500, runtime=5)


@pytest.mark.slurm
def test_slurm_round_trip(tmp_path, slurm_env):
    t0 = time.monotonic()
    out = launch(selftest.count_to, dict(n=3, state_dir=str(tmp_path / "state"),
                                         out=str(tmp_path / "out.json"), step_s=0.05),
                 name="round-trip", resources=SMALL, launcher="slurm", log_dir=tmp_path / "logs",
                 poll_interval_s=0.2)
    assert out["done"] and out["step"] == 3
    (start,) = out["starts"]
    assert start["job_id"] and start["pid"] != os.getpid()
    assert json.loads((tmp_path / "out.json").read_text()) == out
    assert (tmp_path / "logs" / start["job_id"] / f"{start['job_id']}_0_log.out").exists()
    assert time.monotonic() - t0 < 60


@pytest.mark.slurm
def test_slurm_failure_raises_stage_failed_with_remote_traceback(tmp_path, slurm_env):
    with pytest.raises(StageFailed) as info:
        launch(selftest.fail, dict(message="deliberate remote failure 7"), name="fails",
               resources=SMALL, launcher="slurm", log_dir=tmp_path / "logs", poll_interval_s=0.2)
    err = info.value
    message = str(err)
    assert "ValueError: deliberate remote failure 7" in message.splitlines()
    assert 'selftest.py", line' in message
    assert f"SLURM job {err.job_id}" in message
    assert str(err.stderr) in message and str(err.stdout) in message
    assert err.stderr.exists() and err.stdout.exists()
    assert err.stderr.parent == tmp_path / "logs" / err.job_id


@pytest.mark.slurm
def test_slurm_time_limit_requeues_and_resumes_from_checkpoint(tmp_path, slurm_env):
    """A 1-minute job with 62 s of work is requeued once and finishes from its checkpoint.

    Timing on this cluster (measured with .ci/slurm-cluster.sh, SLURM 22.05):
    - slurmctld tests time limits and --signal warnings every 30 s (PERIODIC_TIMEOUT),
      and sends the warning at the first tick with ``now >= end - delay - 30``: up to 30 s
      EARLY. With ``--time=1 --signal=USR2@5`` it arrives 25-55 s into a run (measured:
      26 s, 27 s, 30.6 s), and the limit kill comes at the tick after it (>= 60 s), so the
      requeue (~1 s after the signal) always wins.
    - After ``scontrol requeue`` the job waits cred_expire + 1 s (AuthInfo=cred_expire=10;
      the default 120 s made it ~150 s), then starts within ~1 s (sched_interval=2):
      measured 12.1 s from requeue to restart.
    - A restarted run begins ~12 s after a tick, so its warning comes at the second tick
      after the previous one: ~48 s into run 2.
    Work: 124 steps of 0.5 s = 62 s. Run 1 cannot finish (it gets at most ~54 s), and run 2
    has at most ~62 - 23 = 39 s left against ~46 s available: about 8 s of margin either
    way. Expected wall time: ~62 s of work + ~12 s requeue + ~3 s start-up, i.e. 75-80 s.
    Should a slow machine need a third run, the assertions still hold (~1 min longer).
    """
    state, out = tmp_path / "state", tmp_path / "out.json"
    t0 = time.monotonic()
    result = launch(selftest.count_to, dict(n=124, state_dir=str(state), out=str(out), step_s=0.5,
                                            checkpoint_every=1),
                    name="requeue", resources=Resources(mem_mb=500, runtime=1), launcher="slurm",
                    log_dir=tmp_path / "logs", slurm_signal_delay_s=5, poll_interval_s=0.5)
    elapsed = time.monotonic() - t0
    starts = result["starts"]
    assert result["done"] and result["step"] == 124
    assert len(starts) >= 2, starts
    assert len({s["job_id"] for s in starts}) == 1  # requeued, not resubmitted
    assert [s["restart_count"] for s in starts] == list(range(len(starts)))
    froms = [s["from_step"] for s in starts]
    assert froms[0] == 0 and all(b > a for a, b in itertools.pairwise(froms)), froms  # never from 0
    # the first run was stopped by the time limit, not by a crash: submitit checkpointed it
    job_id = starts[0]["job_id"]
    log = (tmp_path / "logs" / job_id / f"{job_id}_0_log.out").read_text()
    assert "this job is timed-out" in log and f"Requeued job {job_id}" in log
    assert "requeueing vqshrink.stages.selftest.count_to" in log
    print(f"requeue test: {elapsed:.1f} s, starts at steps {froms}, "
          f"restart after {starts[1]['time'] - starts[0]['time']:.1f} s")


@pytest.mark.slurm
def test_terminating_the_waiting_process_cancels_the_job(tmp_path, slurm_env):
    # what happens when Snakemake (or Ctrl-C) stops a rule that waits on its SLURM job
    code = textwrap.dedent(f"""\
        from vqshrink.launch import Resources, launch
        from vqshrink.stages import selftest
        launch(selftest.count_to, dict(n=3000, state_dir={str(tmp_path / 'state')!r},
                                       out={str(tmp_path / 'out.json')!r}, step_s=0.1),
               name="cancel-me", resources=Resources(mem_mb=500, runtime=5), launcher="slurm",
               log_dir={str(tmp_path / 'logs')!r}, poll_interval_s=0.2)
        """)
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    job_id = re.search(r"SLURM job (\d+)", proc.stderr.readline()).group(1)
    deadline = time.monotonic() + 60
    while not (tmp_path / "state" / "last.json").exists():  # the stage is running
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert f"cancelling SLURM job {job_id}" in proc.stderr.read()
    deadline = time.monotonic() + 30
    while True:
        state = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"],
                               capture_output=True, text=True, check=False).stdout.strip()
        if state == "CANCELLED":
            break
        assert time.monotonic() < deadline, f"job {job_id} still {state!r}"
        time.sleep(0.5)
    assert not (tmp_path / "out.json").exists()


def test_share_package_puts_src_first_once(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/a", str(tmp_path), "/b"]))
    share_package(tmp_path)
    assert os.environ["PYTHONPATH"].split(os.pathsep) == [str(tmp_path), "/a", "/b"]
    monkeypatch.delenv("PYTHONPATH")
    share_package(tmp_path)
    assert os.environ["PYTHONPATH"] == str(tmp_path)
