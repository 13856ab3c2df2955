"""Tiny stages that exercise the launcher, not the science.

``count_to`` behaves like a resumable training loop in miniature: it sleeps through
``n`` steps, keeps its progress in ``<state_dir>/last.json`` and resumes from it, and it
records every (re)start, so a test can tell a requeued job that resumed from one that
started over. ``fail`` raises, so a test can check how a remote error comes back, and
``dist_env`` reports the RANK/WORLD_SIZE/... variables a process was given.

Neither imports torch: a SLURM job running them starts in well under a second, which
keeps the requeue test's timing margins wide.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path


def _write_json(obj: dict, path: Path) -> None:
    # temporary file in the same directory, then an atomic rename: a job killed
    # mid-write leaves the previous file intact
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(obj, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def count_to(n: int, state_dir: str, out: str, step_s: float = 0.1,
             checkpoint_every: int = 1) -> dict:
    """Count to ``n``, one ``step_s`` sleep per step, resuming from ``state_dir/last.json``.

    The state holds ``step`` (steps finished) and ``starts``: one entry per (re)start
    with the pid, ``SLURM_RESTART_COUNT`` and the step it started from. ``out`` gets the
    final state plus ``done: true``; the same dict is returned.
    """
    last = Path(state_dir) / "last.json"
    state = json.loads(last.read_text()) if last.exists() else {"step": 0, "starts": []}
    state["starts"].append(
        {
            "pid": os.getpid(),
            "restart_count": int(os.environ.get("SLURM_RESTART_COUNT", "0")),
            "job_id": os.environ.get("SLURM_JOB_ID"),
            "from_step": state["step"],
            "time": time.time(),
        }
    )
    _write_json(state, last)
    print(f"count_to: starting at step {state['step']} of {n}", flush=True)
    while state["step"] < n:
        time.sleep(step_s)
        state["step"] += 1
        if state["step"] % checkpoint_every == 0 or state["step"] == n:
            _write_json(state, last)
    result = {**state, "done": True}
    _write_json(result, Path(out))
    return result


def fail(message: str, only_rank: int | None = None) -> str:
    """Raise ``ValueError(message)`` (only in process ``RANK == only_rank`` if given)."""
    rank = int(os.environ.get("RANK", "0"))
    if only_rank is None or rank == only_rank:
        raise ValueError(message)
    return f"rank {rank} did not fail"


def dist_env(out_dir: str) -> dict:
    """Write and return the distributed-launch variables this process sees
    (``<out_dir>/rank<RANK>.json``)."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_ID")
    seen = {name: os.environ.get(name) for name in names}
    seen["pid"] = os.getpid()
    _write_json(seen, Path(out_dir) / f"rank{seen['RANK']}.json")
    return seen
