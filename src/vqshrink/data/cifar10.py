"""CIFAR-10 (32 x 32, 10 classes) through torchvision.

Splits: the official 10,000 test images are ``test``; a validation split of
``val_size`` images (default 5,000, in proportion to the classes) is carved from the
50,000 official training images by the seed, and the remaining training images are
``train`` (45,000 by default; ``val_size=0`` keeps all 50,000 and writes no ``val``).
``{split}_index.txt`` records ``train:<i>`` / ``test:<i>``, the row in torchvision's
official train / test set.

Nothing is downloaded unless ``download=True``; otherwise ``root`` must already hold
``cifar-10-batches-py`` (torchvision's layout).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from vqshrink.data.prepared import DatasetError, SplitRows, split_indices, write_prepared

RESOLUTION = 32
VAL_SIZE = 5_000
FOLDER = "cifar-10-batches-py"


def load_cifar10(
    root: str | Path, *, train: bool, download: bool = False
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(uint8 N x 32 x 32 x 3 images, int64 labels, class names) of one official split."""
    from torchvision.datasets import CIFAR10

    root = Path(root)
    if not download and not (root / FOLDER).is_dir():
        raise DatasetError(
            f"CIFAR-10 not found: {root} has no {FOLDER}/ folder; put torchvision's "
            "CIFAR-10 there or prepare with download=True"
        )
    try:
        ds = CIFAR10(str(root), train=train, download=download)
    except RuntimeError as err:  # torchvision's "not found or corrupted"
        raise DatasetError(f"CIFAR-10 under {root} cannot be read: {err}") from None
    images = np.asarray(ds.data, dtype=np.uint8)
    return images, np.asarray(ds.targets, dtype=np.int64), list(ds.classes)


def prepare_cifar10(
    root: str | Path,
    out_dir: str | Path,
    *,
    download: bool = False,
    val_size: int = VAL_SIZE,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Prepare CIFAR-10 from ``root`` (downloading there only if ``download``) into ``out_dir``."""
    root = Path(root)
    x_train, y_train, classes = load_cifar10(root, train=True, download=download)
    x_test, y_test, _ = load_cifar10(root, train=False, download=False)
    sizes = {"train": None, "val": val_size} if val_size else {"train": None}
    split = split_indices(y_train, sizes, seed=seed, stratify="proportional", where=root / FOLDER)
    splits = {
        name: SplitRows(
            index=[f"train:{i}" for i in rows], labels=y_train[rows], images=x_train[rows]
        )
        for name, rows in split.items()
    }
    splits["test"] = SplitRows(
        index=[f"test:{i}" for i in range(len(y_test))], labels=y_test, images=x_test
    )
    meta = {
        "dataset": "cifar10",
        "source": {
            "root": str(root.resolve()), "kind": "torchvision CIFAR10", "downloaded": download
        },
        "classes": classes,
        "seed": seed,
        "split_rule": f"test = official test set; val = {val_size} of the official train set "
                      "(proportional to classes, by seed); train = the rest",
        "preprocessing": "none (native 32x32)",
        "index": "train:<i> / test:<i> = row of torchvision's official split",
    }
    return write_prepared(
        out_dir, splits, meta=meta, resolution=RESOLUTION, overwrite=overwrite, progress=progress
    )
