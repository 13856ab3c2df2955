"""Fixtures shared by the image-stage tests (tokenizers, generators): one torch thread, a small
prepared digits dataset and the substitute FID network with its reference statistics.

Import them into a test module (``from image_fixtures import data, fid_net, one_thread``);
pytest then uses them as that module's own fixtures.
"""

from __future__ import annotations

import collections
import contextlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import vqshrink
from vqshrink.data.digits import digits_images
from vqshrink.data.prepared import SplitRows, write_prepared
from vqshrink import training
from vqshrink.stages import metric_nets

FID = {"feature_net": "classifier", "batch_size": 64, "dataset": "digits"}


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread, as the rules give these stages on 2 cores (and much faster than
    two threads fighting other processes for them)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_digits(out, train: int, val: int, test: int) -> str:
    """The first train + val + test digits at 16 px as a prepared dataset in ``out``."""
    images, labels = digits_images(16)
    ends = np.cumsum([train, val, test])
    rows = {"train": range(0, ends[0]), "val": range(ends[0], ends[1]),
            "test": range(ends[1], ends[2])}
    splits = {s: SplitRows(index=[str(i) for i in r], labels=labels[list(r)],
                           images=images[list(r)]) for s, r in rows.items()}
    write_prepared(out, splits, meta={"dataset": "digits", "classes": [str(i) for i in range(10)]},
                   resolution=16, progress=False)
    return str(out)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> str:
    """300 digits at 16 px: 200 train / 50 val / 50 test (a prepared dataset)."""
    return write_digits(tmp_path_factory.mktemp("data") / "digits", 200, 50, 50)


@pytest.fixture(scope="module")
def fid_net(data, tmp_path_factory) -> dict:
    """The substitute classifier and the val/test reference statistics (the DAG's FID stages)."""
    d = tmp_path_factory.mktemp("fid")
    metric_nets.train_fid_classifier(data=data, classifier=str(d / "cls.pt"),
                                     record=str(d / "cls.json"),
                                     settings={"epochs": 1, "batch_size": 64, "lr": 2e-3,
                                               "seed": 0, "dataset": "digits"}, preset="test")
    for split in ("val", "test"):
        metric_nets.fid_reference(data=data, stats=str(d / f"{split}.npz"), preset="test",
                                  settings={"split": split, "fid": FID, "device": "cpu"},
                                  classifier=str(d / "cls.pt"))
    return {"classifier": str(d / "cls.pt"), "val": str(d / "val.npz"),
            "test": str(d / "test.npz")}


def kill_at_step(monkeypatch, step: int) -> list[int]:
    """Make the training loop's ``StepLog.add`` (once per step, after its update) raise
    KeyboardInterrupt at ``step``, once: a simulated kill. Returns the list of steps it sees,
    appended to."""
    seen, pending = [], [step]

    class Killed(training.StepLog):
        def add(self, loss, *values, epoch, step):
            seen.append(step)
            if step in pending:
                pending.clear()
                raise KeyboardInterrupt("simulated kill")
            super().add(loss, *values, epoch=epoch, step=step)

    monkeypatch.setattr(training, "StepLog", Killed)
    return seen


def nan_at_step(monkeypatch, at: int) -> None:
    """Make the loss the training loop's ``StepLog`` watches at step ``at`` NaN (weights stay finite);
    it is found at the next sync point (a state save, every SYNC_EVERY steps, the epoch's end)."""

    class Poisoned(training.StepLog):
        def add(self, loss, *values, epoch, step):
            super().add(loss * float("nan") if step == at else loss, *values, epoch=epoch,
                        step=step)

    monkeypatch.setattr(training, "StepLog", Poisoned)


HOST_READS = ("item", "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__")


@contextlib.contextmanager
def count_host_reads(monkeypatch):
    """Count the tensor-to-host reads (``.item()``, ``.tolist()``, ``.numpy()``, ``bool()``,
    ``int()``, ``float()``, ``__index__``) that vqshrink's own code makes inside: on a GPU
    each waits for the device. Reads inside torch are not counted (the optimizers read
    their step counters, which stay on the CPU), nor those of ``models/labels.py`` (it reads
    labels only when they are on the CPU). Yields a Counter by "file:line method"."""
    counts: collections.Counter = collections.Counter()
    root = str(Path(vqshrink.__file__).parent)
    cpu_only = str(Path(root) / "models" / "labels.py")
    with monkeypatch.context() as m:
        for name in HOST_READS:
            real = getattr(torch.Tensor, name)

            def counted(self, *a, _real=real, _name=name, **kw):
                caller = sys._getframe(1)
                file = caller.f_code.co_filename
                if file.startswith(root) and file != cpu_only:
                    where = Path(file).relative_to(root)
                    counts[f"{where}:{caller.f_lineno} {_name}"] += 1
                return _real(self, *a, **kw)

            m.setattr(torch.Tensor, name, counted)
        yield counts
