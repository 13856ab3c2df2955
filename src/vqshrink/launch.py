"""Run a stage: in this process, as N local processes, or as a SLURM job through submitit.

A rule's script calls :func:`launch_from_snakemake` (or :func:`launch`) with a stage, by
dotted path (``"vqshrink.stages.synthetic.train_vq"``) or as the function, and its
keyword arguments. The same Snakemake
resources (``gpu``, ``cpus_per_task``, ``mem_mb``, ``runtime``, ``slurm_partition``,
``slurm_account``, ``constraint``, ``slurm_extra``) describe the job everywhere:

- ``launcher="local"``, or any launcher inside a SLURM job that someone else placed
  (Snakemake's own slurm executor): the stage runs here. With ``gpu > 1`` (or
  ``VQSHRINK_LOCAL_PROCS=N``, for CPU tests of the DDP path) it runs as N spawned
  processes with the usual RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT set.
- ``launcher="slurm"``: the stage is submitted with submitit, one task per GPU, and this
  process waits for it. A failure comes back as :class:`StageFailed` carrying the
  remote traceback and the log paths. A job that reaches its time limit (or is
  preempted) is checkpointed by submitit and requeued by :class:`StageJob`; the stage
  then resumes from the checkpoint it keeps on disk itself.

Stages must be module-level functions of the package, so that they pickle by
reference and import on the compute node. Given by name, a stage is imported only where it
runs: a process that waits on a SLURM job never imports torch or the stage modules, so each
waiting rule costs the login node about 30 MB (printed when its job ends).

Where a rule runs is decided in one place, :func:`placement`: the rules in
:data:`LOCAL_RULES` (tables, figures, the weight download, tiny data steps) always run on
the submitting machine (Snakemake's ``localrules`` are set from the same list); every other
rule runs where the launcher says. A job whose rule asks for GPUs and sees no CUDA device
stops (:func:`require_gpus`) instead of training on the CPU.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import pickle
import re
import resource
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import submitit

LAUNCHERS = ("local", "slurm")

# Rules that run on the submitting machine under every launcher and executor: tables,
# figures, the weight download (needs internet) and tiny data steps. The workflow sets
# Snakemake's ``localrules`` from this list (workflow/rules/common.smk).
LOCAL_RULES = (
    "synthetic_data",
    "synthetic_projection",
    "synthetic_table",
    "embeddings_collapse",
    "fig2",
    "fig3_fig6",
    "fetch_weights",
    "tokenizer_table",
    "fig4",
    "generator_table",
    "fig5",
    "training_curves",
    "claims",
    "budget",
    "smoke_sources",
)

Stage = Callable[..., Any] | str  # a function, or its dotted path


class GPUUnavailable(RuntimeError):
    """A job whose rule asked for GPUs sees no CUDA device."""


class StageFailed(RuntimeError):
    """A stage failed in a SLURM job. The message holds the remote traceback (or what
    SLURM reported when the job died without one), the job id and its log paths. Also
    raised for a spawned local process whose exception could not be sent back as itself."""

    def __init__(self, message: str, *, job_id: str | None = None, stdout: Path | None = None,
                 stderr: Path | None = None, remote_traceback: str | None = None) -> None:
        super().__init__(message)
        self.job_id = job_id
        self.stdout = stdout
        self.stderr = stderr
        self.remote_traceback = remote_traceback


class RemoteTraceback(Exception):
    """Carries a child process's traceback text as the cause of the re-raised error."""

    def __str__(self) -> str:
        return "\n" + self.args[0]


@dataclass
class Resources:
    """A job's resources, under Snakemake's standard resource names."""

    gpu: int = 0                        # GPUs; one task (process) per GPU
    cpus_per_task: int = 1
    mem_mb: int = 4000                  # for the whole job (sbatch --mem, rounded up to GB)
    runtime: int = 60                   # minutes (SLURM time limit)
    slurm_partition: str | None = None
    slurm_account: str | None = None
    constraint: str | None = None
    slurm_extra: str | None = None      # e.g. "--qos=high --exclusive"

    @classmethod
    def from_snakemake(cls, resources: Any) -> Resources:
        """From ``snakemake.resources`` (or a dict); absent names keep their defaults,
        other entries (``_cores``, ``tmpdir``, ...) are ignored."""
        values = {}
        for f in fields(cls):
            value = _lookup(resources, f.name)
            if value is None or value == "":
                continue
            values[f.name] = int(float(value)) if isinstance(f.default, int) else str(value)
        return cls(**values)


def _lookup(container: Any, key: str, default: Any = None) -> Any:
    if isinstance(container, Mapping) or hasattr(container, "get"):
        return container.get(key, default)
    return getattr(container, key, default)


def inside_slurm_job() -> bool:
    """True within a SLURM allocation (a job's processes see SLURM_JOB_ID)."""
    return bool(os.environ.get("SLURM_JOB_ID"))


def parse_slurm_extra(extra: str | None) -> dict[str, Any]:
    """``"--qos=high --exclusive --gres gpu:2"`` -> ``{"qos": "high", "exclusive": True,
    "gres": "gpu:2"}`` (submitit's ``slurm_additional_parameters``)."""
    tokens = shlex.split(extra or "")
    out: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--") or token == "--":
            raise ValueError(
                f"slurm_extra {extra!r}: expected long options (--key=value or --flag), "
                f"got {token!r}"
            )
        key, eq, value = token[2:].partition("=")
        if not eq:
            nxt = tokens[i + 1] if i + 1 < len(tokens) else None
            if nxt is not None and not nxt.startswith("-"):
                value, i = nxt, i + 1
            else:
                value = True
        out[key] = value
        i += 1
    return out


def submitit_parameters(resources: Resources, *, name: str, signal_delay_s: int) -> dict[str, Any]:
    """The ``AutoExecutor.update_parameters`` keywords for these resources."""
    params: dict[str, Any] = {
        "name": name,
        "nodes": 1,
        "tasks_per_node": max(1, resources.gpu),  # one task per GPU (DDP)
        "cpus_per_task": resources.cpus_per_task,
        "mem_gb": max(1, math.ceil(resources.mem_mb / 1024)),
        "timeout_min": max(1, resources.runtime),
        "slurm_signal_delay_s": _signal_delay(signal_delay_s, resources.runtime),
    }
    if resources.gpu > 0:
        params["gpus_per_node"] = resources.gpu
    for ours, theirs in (("slurm_partition", "slurm_partition"),
                         ("slurm_account", "slurm_account"),
                         ("constraint", "slurm_constraint")):
        value = getattr(resources, ours)
        if value:
            params[theirs] = value
    extra = parse_slurm_extra(resources.slurm_extra)
    if extra:
        params["slurm_additional_parameters"] = extra
    return params


def _signal_delay(signal_delay_s: int, runtime_min: int) -> int:
    # slurmctld sends the warning signal on a 30 s tick, up to 30 s before it is due. A
    # delay close to the time limit would signal (and requeue) every run within seconds
    # of its start, forever; cap it so that a run gets at least ~10 s.
    return max(1, min(signal_delay_s, max(1, runtime_min) * 60 - 40))


def make_executor(resources: Resources, *, name: str, folder: str | Path,
                  max_num_timeout: int = 30, signal_delay_s: int = 120) -> submitit.AutoExecutor:
    """A SLURM AutoExecutor writing its files under ``folder`` (``%j`` = job id)."""
    executor = submitit.AutoExecutor(folder=Path(folder).absolute(), cluster="slurm",
                                     slurm_max_num_timeout=max_num_timeout)
    executor.update_parameters(**submitit_parameters(resources, name=name,
                                                     signal_delay_s=signal_delay_s))
    return executor


def share_package(src: str | Path) -> None:
    """Put ``src`` first on ``PYTHONPATH`` for the processes started from here: the rules'
    scripts (also inside a ``--sdm conda`` environment, envs/vqshrink.yaml, which holds the
    package's dependencies, not the package) and the SLURM jobs they submit."""
    paths = [str(src), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                         if p and p != str(src)]]
    os.environ["PYTHONPATH"] = os.pathsep.join(paths)


def resolve_stage(stage: Stage) -> Callable[..., Any]:
    """The stage function of its dotted path (``"vqshrink.stages.synthetic.train_vq"``),
    imported here, so only where the stage runs; a function is returned as it is."""
    if callable(stage):
        return stage
    module, _, attr = stage.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"unknown stage {stage!r}: {err}") from err


def require_gpus(gpus: int, name: str) -> None:
    """Stop when the rule asked for ``gpus`` > 0 and this process sees no CUDA device (no
    GPU allocated, or a driver too old for the installed torch), rather than letting
    ``device: auto`` train on the CPU for days."""
    if gpus <= 0:
        return
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count:
        return
    why = " ".join(str(w.message).strip() for w in caught)
    raise GPUUnavailable(
        f"{name}: the rule asked for {gpus} GPU(s) (resource gpu={gpus}) but this job sees no "
        f"CUDA device (torch {torch.__version__}, built for CUDA {torch.version.cuda}; "
        f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '(unset)')})"
        + (f": {why}" if why else "")
        + ". Stopped instead of training on the CPU. Run it on a GPU node, or set gpu: 0 in "
        "the stage group's resources in the config to run on the CPU on purpose."
    )


def placement(rule: str, launcher: str, gpu: int) -> str:
    """Where a rule's stage runs: ``local`` for :data:`LOCAL_RULES`, else ``launcher``."""
    if rule in LOCAL_RULES:
        if gpu > 0:
            raise ValueError(f"rule {rule} runs on the submitting machine (vqshrink.launch."
                             f"LOCAL_RULES) but asks for gpu={gpu}")
        return "local"
    return launcher


class StageJob(submitit.helpers.Checkpointable):
    """``stage(**kwargs)`` as a submitit job that requeues itself on timeout/preemption.

    A stage given by name is imported in the job, not by the process that submits it.
    Nothing is kept in memory across a requeue: ``checkpoint`` resubmits a fresh
    instance with the same arguments, and the stage resumes from its own ``last``
    checkpoint on disk.
    """

    def __init__(self, stage: Stage, kwargs: Mapping[str, Any], gpu: int = 0) -> None:
        self.stage = stage
        self.kwargs = dict(kwargs)
        self.gpu = gpu

    def __call__(self) -> Any:
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            _set_dist_env(rank=env.global_rank, world_size=env.num_tasks,
                          local_rank=env.local_rank, master_addr=env.hostnames[0],
                          master_port=_port_for_job(env.raw_job_id))
        require_gpus(self.gpu, _stage_name(self.stage))
        return resolve_stage(self.stage)(**self.kwargs)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        print(f"vqshrink.launch: requeueing {_stage_name(self.stage)}; it resumes from its "
              "own checkpoint", flush=True)
        return submitit.helpers.DelayedSubmission(type(self)(self.stage, self.kwargs, self.gpu))


def launch(stage: Stage, kwargs: dict, *, name: str, resources: Resources,
           launcher: str = "local", log_dir: str | Path = "results/logs/submitit",
           slurm_max_num_timeout: int = 30, slurm_signal_delay_s: int = 120,
           poll_interval_s: float = 1.0) -> Any:
    """Run ``stage(**kwargs)`` with ``launcher`` and return its (rank 0's) result."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher {launcher!r}: expected one of {', '.join(LAUNCHERS)}")
    if launcher == "local" or inside_slurm_job():
        require_gpus(resources.gpu, name)
        fn = resolve_stage(stage)
        nprocs = int(os.environ.get("VQSHRINK_LOCAL_PROCS") or max(1, resources.gpu))
        if nprocs <= 1:
            return fn(**kwargs)
        return _spawn_local(fn, kwargs, nprocs)
    return _run_on_slurm(stage, kwargs, name=name, resources=resources, log_dir=log_dir,
                         max_num_timeout=slurm_max_num_timeout,
                         signal_delay_s=slurm_signal_delay_s, poll_interval_s=poll_interval_s)


def launch_from_snakemake(snakemake: Any, stage: Stage, kwargs: dict) -> Any:
    """:func:`launch` for a rule's script: the launcher from the rule's params, else its
    ``launcher`` resource (set by the slurm profile's default-resources, which a user's
    --configfile or --config cannot drop), else the config; :func:`placement` keeps local
    rules local. Slurm settings from the params (else the config), resources from the rule,
    the job named after the rule and its wildcards, logs under
    ``results/logs/submitit/<rule>``."""
    config = getattr(snakemake, "config", None) or {}
    launcher = (_lookup(snakemake.params, "launcher") or _lookup(snakemake.resources, "launcher")
                or config.get("launcher") or "local")
    slurm = _lookup(snakemake.params, "slurm") or config.get("slurm") or {}
    wildcards = ",".join(f"{k}={v}" for k, v in snakemake.wildcards.items())
    name = re.sub(r"[^A-Za-z0-9_.,=+-]+", "-", f"{snakemake.rule}.{wildcards}" if wildcards
                  else snakemake.rule)
    resources = Resources.from_snakemake(snakemake.resources)
    launcher = placement(snakemake.rule, launcher, resources.gpu)
    return launch(stage, kwargs, name=name, resources=resources,
                  launcher=launcher, log_dir=Path("results/logs/submitit") / snakemake.rule,
                  slurm_max_num_timeout=int(slurm.get("max_num_timeout", 30)),
                  slurm_signal_delay_s=int(slurm.get("signal_delay_s", 120)))


# ---------------------------------------------------------------- local processes


def _set_dist_env(*, rank: int, world_size: int, local_rank: int, master_addr: str,
                  master_port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(local_rank),
                      MASTER_ADDR=master_addr, MASTER_PORT=str(master_port))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_for_job(job_id: str) -> int:
    # every task of a job must agree on the port without talking to each other
    return 20000 + int(re.sub(r"\D", "", job_id) or 0) % 20000


def _local_worker(rank: int, world_size: int, port: int, stage: Callable[..., Any],
                  kwargs: dict, exchange: str) -> None:
    _set_dist_env(rank=rank, world_size=world_size, local_rank=rank, master_addr="127.0.0.1",
                  master_port=port)
    try:
        result = stage(**kwargs)
    except BaseException as err:
        text = traceback.format_exc()
        try:
            blob = pickle.dumps(err)
        except Exception:
            blob = None
        with open(Path(exchange) / f"error-{rank}.pkl", "wb") as fh:
            pickle.dump((blob, text), fh)
        raise
    if rank == 0:
        with open(Path(exchange) / "result.pkl", "wb") as fh:
            pickle.dump(result, fh)


@contextlib.contextmanager
def _neutral_main_module() -> Iterator[None]:
    """Spawned children re-import the parent's ``__main__`` unless told otherwise; a
    Snakemake script has no ``if __name__ == "__main__"`` guard and would run again in
    every child. Children only need the stage, which they import by its module."""
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _spawn_local(stage: Callable[..., Any], kwargs: dict, nprocs: int) -> Any:
    import torch.multiprocessing as mp

    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="vqshrink-launch-") as exchange:
        with _neutral_main_module():
            context = mp.start_processes(
                _local_worker, args=(nprocs, port, stage, kwargs, exchange), nprocs=nprocs,
                join=False, start_method="spawn")
        try:
            while not context.join():
                pass
        except Exception as err:
            failed = getattr(err, "error_index", None)
            ranks = ([failed] if failed is not None else []) + list(range(nprocs))
            for rank in ranks:
                path = Path(exchange) / f"error-{rank}.pkl"
                if not path.exists():
                    continue
                with open(path, "rb") as fh:
                    blob, text = pickle.load(fh)
                try:
                    original = pickle.loads(blob) if blob is not None else None
                except Exception:
                    original = None
                cause = RemoteTraceback(f"local process rank {rank} of {nprocs}:\n{text}")
                if isinstance(original, BaseException):
                    raise original from cause
                raise StageFailed(f"local process rank {rank} of {nprocs} failed:\n{text}") \
                    from None
            raise
        with open(Path(exchange) / "result.pkl", "rb") as fh:
            return pickle.load(fh)


# ---------------------------------------------------------------- SLURM through submitit


def _stage_name(stage: Stage) -> str:
    if isinstance(stage, str):
        return stage
    return f"{getattr(stage, '__module__', '?')}.{getattr(stage, '__qualname__', stage)}"


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: VmHWM, which starts afresh with the
    program (getrusage's ru_maxrss carries over the peak of the parent that forked it:
    Snakemake, with torch loaded)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _run_on_slurm(stage: Stage, kwargs: dict, *, name: str, resources: Resources,
                  log_dir: str | Path, max_num_timeout: int, signal_delay_s: int,
                  poll_interval_s: float) -> Any:
    executor = make_executor(resources, name=name, folder=Path(log_dir) / "%j",
                             max_num_timeout=max_num_timeout, signal_delay_s=signal_delay_s)
    submitted_at = time.time()
    job = executor.submit(StageJob(stage, kwargs, resources.gpu))
    _drop_stale_results(job, submitted_at)
    print(f"vqshrink.launch: {name}: SLURM job {job.job_id} ({_stage_name(stage)}); "
          f"logs: {job.paths.stdout}, {job.paths.stderr}", file=sys.stderr, flush=True)
    with _cancel_when_interrupted(job):
        _wait(job, poll_interval_s)
    print(f"vqshrink.launch: {name}: SLURM job {job.job_id} ended; waiting for it took "
          f"{peak_rss_mb():.0f} MB peak RSS here", file=sys.stderr, flush=True)
    return _collect(job, name)


def _drop_stale_results(job: submitit.Job, submitted_at: float) -> None:
    # A SLURM cluster whose state was reset hands out job ids again; a result file left
    # in the log folder by an earlier job of the same id must not be taken for ours.
    for task in range(job.num_tasks):
        path = job.task(task).paths.result_pickle
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mtime < submitted_at:
                path.unlink()


@contextlib.contextmanager
def _cancel_when_interrupted(job: submitit.Job) -> Iterator[None]:
    """Cancel the SLURM job if waiting for it is interrupted (Ctrl-C, SIGTERM, error)."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        def on_sigterm(signum: int, frame: Any) -> None:
            raise SystemExit(128 + signum)
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    except BaseException:
        print(f"vqshrink.launch: interrupted; cancelling SLURM job {job.job_id}",
              file=sys.stderr, flush=True)
        job.cancel(check=False)
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _squeue_finished(job_id: str) -> bool:
    """Fallback when sacct cannot tell (no accounting): has the job left the queue or
    reached a final state?"""
    try:
        out = subprocess.run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"],
                             capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    if out.returncode != 0:
        return "invalid job id" in out.stderr.lower()
    states = set(out.stdout.split())
    active = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD",
              "REQUEUE_FED", "RESIZING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT",
              "RESV_DEL_HOLD", "SPECIAL_EXIT", "PREEMPTED"}
    return not (states & active)


def _wait(job: submitit.Job, poll_interval_s: float, probe_every_s: float = 10.0) -> None:
    """Poll until every task wrote its result or SLURM reports the job finished.

    Result files are checked every ``poll_interval_s``; SLURM itself (sacct, or squeue
    where sacct has nothing) every ``probe_every_s``, so a job that died without a result
    (killed, out of memory, cancelled) is noticed within seconds, not after submitit's
    back-off of up to 10 minutes, and never waited on forever.
    """
    next_probe = time.monotonic() + probe_every_s
    while not job.done():
        if time.monotonic() >= next_probe:
            next_probe = time.monotonic() + probe_every_s
            if job.watcher.is_done(job.job_id, mode="force"):
                return
            if job.watcher.get_state(job.job_id, mode="cache") == "UNKNOWN" \
                    and _squeue_finished(job.job_id):
                return
        time.sleep(poll_interval_s)


def _collect(job: submitit.Job, name: str) -> Any:
    """Rank 0's result, or StageFailed for the first task that failed."""
    from submitit.core.utils import FailedJobError, pickle_load

    errors = []
    for task in range(job.num_tasks):
        sub = job.task(task)
        err = sub.exception()  # FailedJobError (stage raised) or UncompletedJobError (no result)
        if err is not None:
            errors.append((isinstance(err, FailedJobError), task, sub, err))
    if not errors:
        return job.task(0).result()
    errors.sort(key=lambda e: (not e[0], e[1]))  # a real traceback first
    raised, task, sub, err = errors[0]
    remote = None
    if raised:
        with contextlib.suppress(Exception):
            _, remote = pickle_load(sub.paths.result_pickle)  # ("error", traceback text)
    if remote is not None:
        what, detail = f"task {task}", remote
    else:
        what = f"task {task}, state {job.watcher.get_state(job.job_id, mode='force')}"
        detail = str(err)
    raise StageFailed(
        f"stage {name} failed in SLURM job {job.job_id} ({what}):\n{detail.rstrip()}\n"
        f"SLURM job {job.job_id} logs:\n  stdout: {sub.paths.stdout}\n  stderr: {sub.paths.stderr}",
        job_id=job.job_id, stdout=sub.paths.stdout, stderr=sub.paths.stderr,
        remote_traceback=remote,
    )
