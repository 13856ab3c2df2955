"""Pieces every training stage shares: seeding, devices, resumable state, loss checks.

Training state lives in a stage's ``state_dir``, outside the rule's declared outputs
(Snakemake deletes those before a rerun). It is one stable file, ``last.pt``, rewritten
atomically; a requeued SLURM job or a rerun after a crash resumes from it. State made
with other settings or from other input files (their digests, :mod:`vqshrink.integrity`)
is set aside as ``stale-<fingerprint>.pt`` rather than resumed; a damaged file (its stored
checksums do not match) is an error naming it, never a silent restart. A non-finite loss
keeps the last finite state in ``last.pt`` and says so.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from vqshrink import distributed
from vqshrink.integrity import input_digests
from vqshrink.io import CheckpointError, load_torch, remove_leftovers, save_torch

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


def check_finite(loss: torch.Tensor, *, epoch: int, step: int, what: str = "loss",
                 state: ResumableState | None = None,
                 snapshot: Callable[[], dict] | None = None) -> None:
    """Stop on a NaN or infinite ``loss``; with ``state`` and ``snapshot`` (the training state
    before this step) the last finite state is kept in ``state.path`` and the message says where;
    with ``state`` alone the message names the state saved last (if any)."""
    if not torch.isfinite(loss).all():
        if state is None:
            kept = "no training state is kept"
        else:
            kept = state.keep_finite(snapshot) if snapshot is not None else state.kept()
        raise NonFiniteLossError(
            f"{what} is {loss.item()} at epoch {epoch}, step {step}; training stopped; {kept}"
        )


def fingerprint(settings: Mapping[str, Any]) -> str:
    """A short stable hash of the settings a state was made with."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def all_finite(obj: Any) -> bool:
    """Whether every floating tensor in a (nested) state is finite."""
    if isinstance(obj, torch.Tensor):
        return not obj.is_floating_point() or bool(torch.isfinite(obj).all())
    if isinstance(obj, Mapping):
        return all(all_finite(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(all_finite(v) for v in obj)
    return True


def position(state: Mapping[str, Any]) -> str:
    """Where a training state stands: epochs and batches done, step."""
    pos = state.get("pos", state)
    return (f"step {pos.get('step')}, after {pos.get('epoch')} epochs and "
            f"{pos.get('batch', 0)} batches")


class ResumableState:
    """Owns ``<state_dir>/last.pt`` for one training stage.

    ``restore()`` returns the saved dict (or ``None`` to start fresh); ``save(build)``
    writes ``build()`` atomically, and ``maybe_save`` does so at most once per
    ``interval_s`` seconds. Only rank 0 writes under DDP. ``inputs`` (name -> path) are
    the stage's input files: their digests are part of the fingerprint.
    """

    def __init__(
        self,
        state_dir: str | Path,
        settings: Mapping[str, Any],
        *,
        inputs: Mapping[str, str | Path | None] | None = None,
        interval_s: float = 60.0,
        rank: int = 0,
    ) -> None:
        self.path = Path(state_dir) / "last.pt"
        self.inputs = input_digests(inputs or {})
        self.settings_fingerprint = fingerprint(settings)
        self.fingerprint = fingerprint({"settings": self.settings_fingerprint,
                                        "inputs": self.inputs})
        self.interval_s = interval_s
        self.rank = rank
        self.saved_at: str | None = None  # position of the last save of this run
        self._last_save = time.monotonic()

    def _tidy(self) -> None:
        """Remove what killed saves left; list the states set aside earlier."""
        remove_leftovers(self.path)
        stale = sorted(self.path.parent.glob("stale-*.pt"))
        if stale:
            size = sum(p.stat().st_size for p in stale) / 2**20
            log.warning("%d training state(s) made with other settings or inputs are kept in "
                        "%s (%.1f MiB): %s; delete them once not needed", len(stale),
                        self.path.parent, size, ", ".join(p.name for p in stale))

    def _difference(self, state: Mapping[str, Any]) -> str:
        if "inputs" not in state or "settings_fingerprint" not in state:
            return "with other settings or inputs"
        why = []
        if state["settings_fingerprint"] != self.settings_fingerprint:
            why.append("with other settings")
        changed = sorted(k for k in {*state["inputs"], *self.inputs}
                         if state["inputs"].get(k) != self.inputs.get(k))
        if changed:
            why.append(f"from other inputs ({', '.join(changed)})")
        return " and ".join(why)

    def restore(self, map_location: str | torch.device = "cpu") -> dict | None:
        if self.rank == 0 and self.path.parent.is_dir():
            self._tidy()
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
            log.warning("training state in %s was made %s; moved to %s and starting afresh",
                        self.path, self._difference(state), stale.name)
            return None
        log.info("resuming from %s at %s", self.path, position(state))
        return state

    def save(self, build: Callable[[], dict]) -> None:
        if self.rank == 0:
            state = build()
            if not all_finite(state):
                raise NonFiniteLossError(f"the training state at {position(state)} holds "
                                         f"non-finite values and was not saved; {self.kept()}")
            save_torch({**state, "fingerprint": self.fingerprint,
                        "settings_fingerprint": self.settings_fingerprint,
                        "inputs": self.inputs}, self.path)
            self.saved_at = position(state)
        self._last_save = time.monotonic()

    def maybe_save(self, build: Callable[[], dict], *, force: bool = False,
                   before: Callable[[], None] | None = None) -> bool:
        """Save when ``interval_s`` has passed (or ``force``); ``before`` runs first (the
        training loop's :meth:`StepLog.check`, which stops on a non-finite loss)."""
        if force or time.monotonic() - self._last_save >= self.interval_s:
            if before is not None:
                before()
            self.save(build)
            return True
        return False

    def kept(self) -> str:
        """What a stopped run leaves: the state saved last, if any (it holds no step whose loss
        was non-finite: :class:`StepLog` is checked before every save)."""
        if self.path.exists():
            when = f" ({self.saved_at})" if self.saved_at else ""
            return (f"the last state saved{when} is kept in {self.path}; a rerun with the same "
                    "settings resumes there, other settings start afresh")
        return f"no training state was saved before it ({self.path} does not exist)"

    def keep_finite(self, build: Callable[[], dict]) -> str:
        """After a non-finite loss: save ``build()`` if all of it is finite; say what is kept."""
        state = build()
        if all_finite(state):
            self.save(lambda: state)
            return (f"the training state before this step ({position(state)}: weights and "
                    "optimizer as they were; running statistics such as an EMA codebook "
                    f"already hold this batch) is kept in {self.path}; a rerun with the same "
                    "settings resumes there, other settings start afresh")
        if self.path.exists():
            when = f" ({self.saved_at})" if self.saved_at else ""
            return (f"the weights are no longer finite and were not saved; the last state "
                    f"saved{when} is kept in {self.path}")
        return (f"the weights are no longer finite and no earlier state was saved "
                f"({self.path} does not exist)")


# Steps between host reads of a training loop's running numbers (the progress bar and the
# non-finite-loss check); a read waits for the device, so it is not done every step.
SYNC_EVERY = 100


class StepLog:
    """A training loop's per-step numbers, summed on the device without a host read.

    ``add(loss, *values, epoch=, step=)`` adds ``values`` (scalar tensors or floats) to
    float64 sums on ``device`` and remembers, on the device too, the first step whose ``loss``
    was NaN or infinite. Host reads happen only at the loop's sync points: :meth:`check`
    (every :data:`SYNC_EVERY` steps, at the end of an epoch and before every state save: a
    saved state never holds a step with a non-finite loss) raises
    :class:`NonFiniteLossError` naming that step's epoch and number and the state kept;
    :meth:`means` and :meth:`saved` read the sums. float64 sums of the float32 values in step
    order give the numbers the per-step ``.item()`` sums gave.
    """

    def __init__(self, names: tuple[str, ...], device: torch.device, *,
                 state: ResumableState | None = None, saved: list[float] | None = None) -> None:
        self.names, self.device, self.state = tuple(names), device, state
        self.sums = torch.zeros(len(self.names), dtype=torch.float64, device=device)
        self.count = 0
        if saved is not None:  # the sums of a resumed epoch, then its step count
            self.sums += torch.tensor(saved[:-1], dtype=torch.float64, device=device)
            self.count = int(saved[-1])
        self._where: list[tuple[int, int]] = []  # (epoch, step) of the steps since the check
        self._bad = torch.full((), -1, dtype=torch.long, device=device)  # index into _where
        self._bad_loss = torch.zeros((), dtype=torch.float64, device=device)

    def _scalar(self, v: torch.Tensor | float) -> torch.Tensor:
        if isinstance(v, torch.Tensor):
            return v.detach().reshape(()).to(torch.float64)
        return torch.full((), float(v), dtype=torch.float64, device=self.device)

    def add(self, loss: torch.Tensor, *values: torch.Tensor | float, epoch: int,
            step: int) -> None:
        """One step: ``values`` (as many as ``names``) summed; ``loss`` watched."""
        self.sums += torch.stack([self._scalar(v) for v in values])
        self.count += 1
        first = (self._bad < 0) & ~torch.isfinite(loss.detach()).all()
        self._bad = torch.where(first, len(self._where), self._bad)
        self._bad_loss = torch.where(first, self._scalar(loss), self._bad_loss)
        self._where.append((epoch, step))

    def check(self) -> None:
        """A sync point: stop on the first non-finite loss since the last check."""
        bad = int(self._bad)
        if bad >= 0:
            epoch, step = self._where[bad]
            check_finite(self._bad_loss, epoch=epoch, step=step, state=self.state)
        self._where.clear()

    def means(self) -> torch.Tensor:
        """The running means (on the device; no host read)."""
        return self.sums / max(self.count, 1)

    def saved(self) -> list[float]:
        """The sums and the step count, for a training state (a host read)."""
        return [*self.sums.tolist(), float(self.count)]

    def reset(self) -> None:
        self.sums.zero_()
        self.count = 0


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


# ---------------------------------------------------------------- the training loop
# The layout of the states :func:`fit` writes; part of their fingerprint, so that a state
# written by an earlier loop is set aside (``stale-*.pt``), never misread.
STATE_FORMAT = 2

class ShuffledRows:
    """The batch order of the image and token stages: a fresh permutation per epoch, a
    function of (seed, epoch) only (:func:`epoch_order`), full batches (the rest of the
    split is left out of that epoch). Nothing to save: a resumed epoch redraws it."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.steps_per_epoch = n // batch_size

    def batches(self, epoch: int) -> list[np.ndarray]:
        order = epoch_order(self.n, self.seed, epoch)
        bs = self.batch_size
        return [order[i * bs:(i + 1) * bs] for i in range(self.steps_per_epoch)]

    def epoch_done(self) -> None:
        pass

    def state(self) -> None:
        return None

    def load(self, state: Any) -> None:
        pass


class TorchShuffle:
    """The batch order of the synthetic stages: ``torch.randperm`` from one generator seeded
    once, every epoch's order drawn from it in turn, the last batch smaller. Its state is the
    generator as it was before the running epoch's order was drawn (between epochs: as it is),
    so a resumed epoch redraws the same order."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size = n, batch_size
        self.steps_per_epoch = math.ceil(n / batch_size)
        self.generator = torch.Generator().manual_seed(seed)
        self._before = self.generator.get_state()

    def batches(self, epoch: int) -> list[torch.Tensor]:
        self._before = self.generator.get_state()
        return epoch_batches(self.n, self.batch_size, self.generator)

    def epoch_done(self) -> None:
        self._before = self.generator.get_state()

    def state(self) -> torch.Tensor:
        return self._before

    def load(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
        self._before = state


@dataclass
class Loop:
    """What a training stage gives :func:`fit`: its modules, its step and its validation.

    ``step(rows, local, step, epoch)`` trains on one batch (``rows`` the whole batch's rows
    of the split, ``local`` this rank's slice; optimiser steps included) and returns
    ``names``' values, the loss first. ``validate()`` (rank 0 only) returns ``val_names``'
    values; ``monitor`` is the one the plateau scheduler (from step ``plateau_from``) and
    early stopping (from step ``early_stop_from``; 0 patience: never) watch, lower is better.
    ``keep_best``: none, the weights of every evaluation that improved ``monitor``
    (``"improved"``), or those of the lowest value of one validation number (its name).
    """

    what: str
    model: torch.nn.Module
    optimizers: dict[str, torch.optim.Optimizer]
    order: ShuffledRows | TorchShuffle
    epochs: int
    names: tuple[str, ...]
    step: Callable[..., tuple]
    modules: dict[str, torch.nn.Module] = field(default_factory=dict)
    plateau: Any = None
    validate: Callable[[], list[float]] | None = None
    val_names: tuple[str, ...] = ()
    eval_every: int = 1
    monitor: str | None = None
    patience: int = 0
    plateau_from: int = 0
    early_stop_from: int = 0
    keep_best: str | None = None
    best_key: str = "best_val"


@dataclass
class Fitted:
    """What :func:`fit` leaves: the curve rows, the kept best weights (or None), whether
    early stopping ended the run, the steps taken and the state file (removed once the
    stage's outputs are written)."""

    curve: list[dict]
    best: dict | None
    stopped_early: bool
    steps: int
    state: ResumableState


def fit(loop: Loop, *, state_dir: str, settings: Mapping[str, Any],
        inputs: Mapping[str, str | None], checkpoint_interval_s: float, device: torch.device,
        info: Any) -> Fitted:
    """The one training loop: batches in ``loop.order``, split across ranks; the training
    state (weights, optimisers, scheduler, batch order, bookkeeping and the running epoch's
    sums) saved atomically at most every ``checkpoint_interval_s`` and at the end, and
    resumed at step granularity, only when made with the same ``settings`` and ``inputs``
    (:class:`ResumableState`); per epoch a curve row of the running means, validation every
    ``eval_every`` epochs and at the last, plateau, early stopping and best weights."""
    made_with = {**settings, "what": loop.what, "world": info.world_size, "format": STATE_FORMAT}
    state = ResumableState(state_dir, made_with, inputs=inputs, interval_s=checkpoint_interval_s, rank=info.rank)
    pos = {"epoch": 0, "batch": 0, "step": 0}
    sums = None
    book = {"curve": [], "best": None, loop.best_key: math.inf, "bad_evals": 0,
            "stopped_early": False, "done": False}
    if (saved := state.restore()) is not None:
        loop.model.load_state_dict(saved["model"])
        for name, opt in loop.optimizers.items():
            opt.load_state_dict(saved["optimizers"][name])
        for name, module in loop.modules.items():
            module.load_state_dict(saved["modules"][name])
        if loop.plateau is not None:
            loop.plateau.load_state_dict(saved["plateau"])
        loop.order.load(saved["order"])
        pos, sums, book = dict(saved["pos"]), list(saved["sums"]), dict(saved["book"])
    steps = StepLog(loop.names, device, state=state, saved=sums)
    main_opt = next(iter(loop.optimizers.values()))

    def snapshot() -> dict:
        return {"model": loop.model.state_dict(),
                "optimizers": {k: o.state_dict() for k, o in loop.optimizers.items()},
                "modules": {k: m.state_dict() for k, m in loop.modules.items()},
                "plateau": loop.plateau.state_dict() if loop.plateau is not None else None,
                "order": loop.order.state(), "pos": dict(pos), "sums": steps.saved(),
                "book": book}

    epochs, per_epoch = loop.epochs, loop.order.steps_per_epoch
    loop.model.train()
    t0 = time.perf_counter()
    bar = progress(None, desc=loop.what, disable=not info.is_main, unit="step",
                   total=epochs * per_epoch, initial=pos["epoch"] * per_epoch + pos["batch"])
    while not book["done"] and pos["epoch"] < epochs:
        epoch = pos["epoch"]
        batches = loop.order.batches(epoch)
        while pos["batch"] < len(batches):
            rows = batches[pos["batch"]]
            local = rows[info.rank::info.world_size]
            step = pos["step"]
            values = loop.step(rows, local, step, epoch)
            steps.add(values[0], *values, epoch=epoch, step=step)
            pos["batch"] += 1
            pos["step"] += 1
            bar.update(1)
            if pos["step"] % SYNC_EVERY == 0:
                steps.check()
                bar.set_postfix(loss=f"{steps.means()[0].item():.4f}", refresh=False)
            if pos["batch"] < len(batches):
                state.maybe_save(snapshot, before=steps.check)

        # ---- end of epoch: curve row, validation, scheduler, early stopping, best weights
        steps.check()
        means = distributed.all_mean(steps.means())
        row = {"epoch": epoch + 1, "step": pos["step"],
               **{name: m.item() for name, m in zip(loop.names, means)},
               "lr": main_opt.param_groups[0]["lr"]}
        last_epoch = epoch + 1 == epochs
        if loop.validate is not None and ((epoch + 1) % loop.eval_every == 0 or last_epoch):
            values = loop.validate() if info.is_main else [math.nan] * len(loop.val_names)
            values = dict(zip(loop.val_names, broadcast_from_main(values, device)))
            row.update(values)
            watched = values[loop.monitor]
            if loop.plateau is not None and pos["step"] >= loop.plateau_from:
                loop.plateau.step(watched)
            improved = False
            if pos["step"] >= loop.early_stop_from:
                improved = early_stopping_update(book, watched, patience=loop.patience,
                                                 last_epoch=last_epoch, key=loop.best_key)
            if loop.keep_best == "improved":
                better = improved
            elif loop.keep_best is not None:
                better = book["best"] is None or values[loop.keep_best] < book["best"]["value"]
            else:
                better = False
            if better and info.is_main:
                book["best"] = {"epoch": epoch + 1, "step": pos["step"],
                                "value": values[loop.keep_best if loop.keep_best != "improved"
                                                else loop.monitor],
                                "model": {k: v.detach().cpu().clone()
                                          for k, v in loop.model.state_dict().items()}}
            if book["stopped_early"]:
                log.info("%s: early stop after epoch %d (%d evaluations without a better %s)",
                         loop.what, epoch + 1, book["bad_evals"], loop.monitor)
        row["seconds"] = time.perf_counter() - t0
        book["curve"].append(row)
        log.info("%s epoch %d: %s", loop.what, epoch + 1,
                 {k: round(v, 5) for k, v in row.items() if isinstance(v, float)})
        pos.update(epoch=epoch + 1, batch=0)
        loop.order.epoch_done()
        steps.reset()
        book["done"] = book["done"] or pos["epoch"] >= epochs
        state.maybe_save(snapshot, force=book["done"])
    bar.close()
    return Fitted(curve=book["curve"], best=book["best"], stopped_early=book["stopped_early"],
                  steps=pos["step"], state=state)
