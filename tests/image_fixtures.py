"""Fixtures shared by the image-stage tests (tokenizers, generators): one torch thread, a small
prepared digits dataset and the substitute FID network with its reference statistics.

Import them into a test module (``from image_fixtures import data, fid_net, one_thread``);
pytest then uses them as that module's own fixtures.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vqshrink.data.digits import digits_images
from vqshrink.data.prepared import SplitRows, write_prepared
from vqshrink.stages import tokenizer as tok

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
    tok.train_fid_classifier(data=data, classifier=str(d / "cls.pt"), record=str(d / "cls.json"),
                             settings={"epochs": 1, "batch_size": 64, "lr": 2e-3, "seed": 0,
                                       "dataset": "digits"}, preset="test")
    for split in ("val", "test"):
        tok.fid_reference(data=data, stats=str(d / f"{split}.npz"), preset="test",
                          settings={"split": split, "fid": FID, "device": "cpu"},
                          classifier=str(d / "cls.pt"))
    return {"classifier": str(d / "cls.pt"), "val": str(d / "val.npz"),
            "test": str(d / "test.npz")}


def kill_at_step(module, monkeypatch, step: int) -> list[int]:
    """Make ``module.check_finite`` (called once per training step) raise KeyboardInterrupt
    at ``step``, once: a simulated kill. Returns the list of steps it sees, appended to."""
    real, seen, pending = module.check_finite, [], [step]

    def killed(loss, *, epoch, step, **kw):
        seen.append(step)
        if step in pending:
            pending.clear()
            raise KeyboardInterrupt("simulated kill")
        real(loss, epoch=epoch, step=step, **kw)

    monkeypatch.setattr(module, "check_finite", killed)
    return seen


def nan_at_step(module, monkeypatch, at: int) -> None:
    """Make the loss that ``module.check_finite`` sees at step ``at`` NaN (weights stay finite)."""
    real = module.check_finite

    def poisoned(loss, *, epoch, step, **kw):
        real(loss * float("nan") if step == at else loss, epoch=epoch, step=step, **kw)

    monkeypatch.setattr(module, "check_finite", poisoned)
