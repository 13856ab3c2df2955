"""The demo stand-in for the image datasets: scikit-learn's bundled digits.

1,797 grayscale 8 x 8 handwritten digits in 10 classes ship with scikit-learn, so this
works offline. Pixels (0..16) are scaled to 0..255, upsampled with PIL bicubic to
``resolution`` (default 32) and copied into three channels, so the result has the same
form as every other prepared dataset. Splits are drawn by seed in proportion to the
classes (default 70 / 10 / 20 train / val / test).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from vqshrink.data.prepared import SplitRows, fraction_sizes, split_indices, write_prepared

RESOLUTION = 32
FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


def digits_images(resolution: int = RESOLUTION) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 N x R x R x 3 images, int64 labels) of all 1,797 digits."""
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    gray = np.clip(np.rint(bunch.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    out = np.empty((len(gray), resolution, resolution, 3), dtype=np.uint8)
    for i, img in enumerate(gray):
        big = Image.fromarray(img).resize((resolution, resolution), Image.Resampling.BICUBIC)
        out[i] = np.asarray(big)[:, :, None]
    return out, bunch.target.astype(np.int64)


def prepare_digits(
    out_dir: str | Path,
    *,
    resolution: int = RESOLUTION,
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Prepare the upsampled digits into ``out_dir`` (offline, about a second)."""
    images, labels = digits_images(resolution)
    fractions = dict(fractions or FRACTIONS)
    split = split_indices(
        labels, fraction_sizes(len(labels), fractions, rest="train"),
        seed=seed, stratify="proportional", where="sklearn.datasets.load_digits",
    )
    splits = {
        name: SplitRows(index=[str(i) for i in rows], labels=labels[rows], images=images[rows])
        for name, rows in split.items()
    }
    meta = {
        "dataset": "digits",
        "source": {"kind": "sklearn.datasets.load_digits", "images": len(labels)},
        "classes": [str(d) for d in range(10)],
        "seed": seed,
        "split_rule": f"fractions {fractions}, proportional to classes, by seed",
        "preprocessing": f"0..16 -> 0..255, PIL bicubic 8x8 -> {resolution}x{resolution}, "
                         "gray copied to 3 channels",
        "index": "row of load_digits()",
        "stand_in": "demo preset only; not a dataset of the paper",
    }
    return write_prepared(
        out_dir, splits, meta=meta, resolution=resolution, overwrite=overwrite, progress=progress
    )
