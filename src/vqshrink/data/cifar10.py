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


TRAIN_FILES = tuple(f"data_batch_{b}" for b in range(1, 6))
TEST_FILES = ("test_batch",)
META_FILE = "batches.meta"


def _unpickle(path: Path) -> dict:
    """One file of the release: a dict pickled by Python 2 (read with latin1, as torchvision)."""
    import pickle

    if not path.is_file():
        raise DatasetError(f"CIFAR-10 file {path} is missing")
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise DatasetError(f"CIFAR-10 file {path} cannot be read: {err}") from None


def official_files(root: str | Path) -> bool:
    """Whether every file under ``root``/cifar-10-batches-py has the official release's md5
    (the checksums torchvision's CIFAR10 holds)."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    folder = Path(root) / FOLDER
    files = CIFAR10.train_list + CIFAR10.test_list + [[META_FILE, CIFAR10.meta["md5"]]]
    return all(check_integrity(str(folder / name), md5) for name, md5 in files)


def load_cifar10(
    root: str | Path, *, train: bool, download: bool = False
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(uint8 N x 32 x 32 x 3 images, int64 labels, class names) of one official split.

    The pickled batches are read as torchvision's CIFAR10 reads them (``data`` rows of 3,072
    bytes, channel-major; ``labels``; ``batches.meta``'s ``label_names``), without its md5
    check, so a copy in the same format (the smoke preset's) is read too; whether the files
    are the official ones is :func:`official_files`."""
    root = Path(root)
    if download:
        from torchvision.datasets import CIFAR10

        CIFAR10(str(root), train=train, download=True)
    folder = root / FOLDER
    if not folder.is_dir():
        raise DatasetError(
            f"CIFAR-10 not found: {root} has no {FOLDER}/ folder; put torchvision's "
            "CIFAR-10 there or prepare with download=True"
        )
    images, labels = [], []
    for name in TRAIN_FILES if train else TEST_FILES:
        entry = _unpickle(folder / name)
        data = np.asarray(entry.get("data"), dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or "labels" not in entry:
            raise DatasetError(f"CIFAR-10 file {folder / name}: expected 'data' rows of 3072 "
                               f"bytes and 'labels', got data of shape {data.shape}")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.extend(entry["labels"])
    classes = list(_unpickle(folder / META_FILE)["label_names"])
    return np.concatenate(images), np.asarray(labels, dtype=np.int64), classes


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
            "root": str(root.resolve()), "kind": "CIFAR-10 python batches",
            "downloaded": download, "official_files": official_files(root),
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
