"""Pieces every training stage shares: seeding, devices, resumable state, loss checks.

Training state lives in a stage's ``state_dir``, outside the rule's declared outputs
(Snakemake deletes those before a rerun). It is one stable file, ``last.pt``, rewritten
atomically; a requeued SLURM job or a rerun after a crash resumes from it. State made
with other settings is set aside rather than resumed, and a damaged file is an error,
never a silent restart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from vqshrink.io import CheckpointError, load_torch, save_torch

log = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the epoch and step."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when present, else CPU; an explicit ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} was asked for but no CUDA device is visible")
    return torch.device(name)


def check_finite(loss: torch.Tensor, *, epoch: int, step: int, what: str = "loss") -> None:
    if not torch.isfinite(loss).all():
        raise NonFiniteLossError(
            f"{what} is {loss.item()} at epoch {epoch}, step {step}; "
            "training stopped, the last good checkpoint is kept"
        )


def fingerprint(settings: Mapping[str, Any]) -> str:
    """A short stable hash of the settings a state was made with."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class ResumableState:
    """Owns ``<state_dir>/last.pt`` for one training stage.

    ``restore()`` returns the saved dict (or ``None`` to start fresh); ``save(build)``
    writes ``build()`` atomically, and ``maybe_save`` does so at most once per
    ``interval_s`` seconds. Only rank 0 writes under DDP.
    """

    def __init__(
        self,
        state_dir: str | Path,
        settings: Mapping[str, Any],
        *,
        interval_s: float = 60.0,
        rank: int = 0,
    ) -> None:
        self.path = Path(state_dir) / "last.pt"
        self.fingerprint = fingerprint(settings)
        self.interval_s = interval_s
        self.rank = rank
        self._last_save = time.monotonic()

    def restore(self, map_location: str | torch.device = "cpu") -> dict | None:
        if not self.path.exists():
            return None
        state = load_torch(self.path, map_location=map_location)
        if not isinstance(state, dict) or "fingerprint" not in state:
            raise CheckpointError(
                f"{self.path} is not a vqshrink training state (no fingerprint); "
                "delete it to start this stage afresh"
            )
        if state["fingerprint"] != self.fingerprint:
            stale = self.path.with_name(f"stale-{state['fingerprint']}.pt")
            if self.rank == 0:
                os.replace(self.path, stale)
            log.warning("training state in %s was made with other settings; moved to %s "
                        "and starting afresh", self.path, stale.name)
            return None
        log.info("resuming from %s (epoch %s)", self.path, state.get("epoch"))
        return state

    def save(self, build: Callable[[], dict]) -> None:
        if self.rank == 0:
            save_torch({**build(), "fingerprint": self.fingerprint}, self.path)
        self._last_save = time.monotonic()

    def maybe_save(self, build: Callable[[], dict], *, force: bool = False) -> bool:
        if force or time.monotonic() - self._last_save >= self.interval_s:
            self.save(build)
            return True
        return False


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled row order of one epoch: a function of (seed, epoch) only, so a resumed
    epoch sees the same batches."""
    return np.random.default_rng([seed, epoch]).permutation(n)


def cosine_lr(step: int, total: int, lr: float, min_lr: float, warmup: int) -> float:
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    t = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * t))


def broadcast_from_main(values: list[float], device: torch.device) -> list[float]:
    """Rank 0's numbers on every rank (identity for one process)."""
    values = [float(v) for v in values]  # plain floats: states load with weights_only
    if not (dist.is_available() and dist.is_initialized()):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return t.tolist()


def early_stopping_update(book: dict, value: float, *, patience: int, last_epoch: bool,
                          key: str = "best_val") -> bool:
    """One evaluation's early-stopping bookkeeping (lower ``value`` is better).

    A new best resets ``book["bad_evals"]`` and is stored under ``book[key]``; otherwise the
    evaluation counts as bad. After ``patience`` bad evaluations in a row (0: never), unless
    this is the last epoch anyway, ``book["stopped_early"]`` and ``book["done"]`` are set.
    Returns whether ``value`` was a new best.
    """
    improved = value < book[key]
    if improved:
        book[key], book["bad_evals"] = value, 0
    else:
        book["bad_evals"] += 1
    if patience and book["bad_evals"] >= patience and not last_epoch:
        book["stopped_early"] = book["done"] = True
    return improved


def epoch_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffled index batches of one epoch (the last batch may be smaller)."""
    order = torch.randperm(n, generator=generator)
    return list(order.split(batch_size))


def progress(iterable, **kwargs):
    """tqdm that prints sparsely when stderr is not a terminal (logs, SLURM jobs)."""
    from tqdm.auto import tqdm

    interactive = sys.stderr.isatty()
    kwargs.setdefault("mininterval", 0.5 if interactive else 15.0)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)
