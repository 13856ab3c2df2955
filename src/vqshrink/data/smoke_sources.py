"""Source data in the real on-disk layouts, generated for the smoke preset.

The smoke preset runs the paper's DAG at paper shapes without the real datasets. Its
sources are made here, deterministically from a seed, in the layouts the preparation code
reads from a user's disk (so ``vqshrink.data.{imagenet100,odir,cifar10}`` run unchanged):

- ImageNet-100: an ILSVRC-2012 train tree ``<root>/<wnid>/<wnid>_<n>.JPEG`` covering the
  given wnids, JPEGs of varied non-square sizes (the real shorter-side resize and centre
  crop run);
- ODIR-5K: an image folder of ``<id>_<left|right>.jpg`` (Kaggle's ``preprocessed_images``)
  and a Kaggle-style ``full_df.csv`` (the columns of andrewmvd/ocular-disease-recognition-odir5k's file;
  ``labels`` like ``['N']``, ``target`` one-hot), every category present;
- CIFAR-10: ``<root>/cifar-10-batches-py/`` with ``data_batch_1..5``, ``test_batch`` and
  ``batches.meta``, pickled dicts in the format of the official release.

Images depend on their class (a class colour, stripe frequency and orientation) plus noise,
so class-conditional metrics are not degenerate. Each source is written into a temporary
directory beside its target and renamed into place when complete.
"""

from __future__ import annotations

import csv
import os
import pickle
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vqshrink.io import atomic_path, make_temporary_dir

ODIR_CATEGORIES = ("N", "D", "G", "C", "A", "H", "M", "O")
ODIR_KEYWORDS = {"N": "normal fundus", "D": "moderate non proliferative retinopathy",
                 "G": "glaucoma", "C": "cataract", "A": "dry age-related macular degeneration",
                 "H": "hypertensive retinopathy", "M": "pathological myopia",
                 "O": "epiretinal membrane"}
# Kaggle full_df.csv (andrewmvd/ocular-disease-recognition-odir5k), in its column order
ODIR_COLUMNS = ("ID", "Patient Age", "Patient Sex", "Left-Fundus", "Right-Fundus",
                "Left-Diagnostic Keywords", "Right-Diagnostic Keywords", *ODIR_CATEGORIES,
                "filepath", "labels", "target", "filename")
ODIR_FILEPATH = "../input/ocular-disease-recognition-odir5k/ODIR-5K/ODIR-5K/Training Images/"
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck")
CIFAR_FOLDER = "cifar-10-batches-py"


def class_image(label: int, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 ``height x width x 3``: stripes whose colour, frequency and angle follow ``label``
    (a class-seeded draw), under a little per-image noise and phase."""
    crng = np.random.default_rng(1_000_003 + label)
    colour = crng.uniform(40, 215, size=3)
    other = 0.35 * colour   # stripes of the class colour and a darker shade of it
    freq = crng.uniform(2.0, 9.0)
    angle = crng.uniform(0, np.pi)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    wave = np.sin(2 * np.pi * freq * (x * np.cos(angle) + y * np.sin(angle))
                  + rng.uniform(0, 2 * np.pi))
    mix = (wave[..., None] + 1) / 2
    img = mix * colour + (1 - mix) * other + rng.normal(0, 12, size=(height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _jpeg(img: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(img).save(path, format="JPEG", quality=90)


def _sizes(rng: np.random.Generator, lo: int, hi: int) -> tuple[int, int]:
    """(height, width) of a non-square image with sides in [lo, hi)."""
    h, w = (int(v) for v in rng.integers(lo, hi, size=2))
    return (h, w + 7) if h == w else (h, w)


def _publish(tmp: Path, out: Path) -> Path:
    """Rename the finished ``tmp`` into ``out`` (replacing an old one)."""
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def _building(out: str | Path) -> tuple[Path, Path]:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return out, make_temporary_dir(out.parent, out.name)


def make_imagenet_tree(root: str | Path, wnids: Sequence[str], *, per_class: int,
                       seed: int = 0, sides: tuple[int, int] = (96, 200)) -> Path:
    """``<root>/<wnid>/<wnid>_<n>.JPEG``: ``per_class`` images of each wnid (label = its
    position in ``wnids``), sides drawn in ``sides`` so the 128-px resize both up- and
    down-samples."""
    root, tmp = _building(root)
    try:
        rng = np.random.default_rng(seed)
        for label, wnid in enumerate(wnids):
            (tmp / wnid).mkdir()
            for n in range(per_class):
                h, w = _sizes(rng, *sides)
                _jpeg(class_image(label, h, w, rng), tmp / wnid / f"{wnid}_{n + 1}.JPEG")
        return _publish(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def odir_counts(images: int) -> list[int]:
    """Images per ODIR category: as even as possible, normal (N) taking the remainder, as
    normal fundi are the most common in ODIR-5K."""
    base = images // len(ODIR_CATEGORIES)
    return [base + images % len(ODIR_CATEGORIES)] + [base] * (len(ODIR_CATEGORIES) - 1)


def make_odir(image_dir: str | Path, annotation: str | Path, *, images: int, seed: int = 0,
              sides: tuple[int, int] = (120, 220)) -> tuple[Path, Path]:
    """``image_dir/*.jpg`` (Kaggle's ``preprocessed_images``) and ``annotation`` (its
    ``full_df.csv`` columns): one row per image, two eyes per patient, category counts
    :func:`odir_counts`. Both are written beside their targets and renamed into place."""
    image_dir, tmp = _building(image_dir)
    try:
        rng = np.random.default_rng(seed)
        labels = np.repeat(np.arange(len(ODIR_CATEGORIES)), odir_counts(images))
        labels = labels[rng.permutation(len(labels))]
        rows = []
        for i, label in enumerate(labels):
            patient, eye = divmod(i, 2)
            cat = ODIR_CATEGORIES[label]
            name = f"{patient}_{('left', 'right')[eye]}.jpg"
            h, w = _sizes(rng, *sides)
            _jpeg(class_image(label, h, w, rng), tmp / name)
            flags = [int(c == cat) for c in ODIR_CATEGORIES]
            rows.append({
                "ID": patient, "Patient Age": int(rng.integers(20, 90)),
                "Patient Sex": ("Male", "Female")[int(rng.integers(2))],
                "Left-Fundus": f"{patient}_left.jpg", "Right-Fundus": f"{patient}_right.jpg",
                "Left-Diagnostic Keywords": ODIR_KEYWORDS[cat],
                "Right-Diagnostic Keywords": ODIR_KEYWORDS[cat],
                **dict(zip(ODIR_CATEGORIES, flags)),
                "filepath": ODIR_FILEPATH + name, "labels": str([cat]), "target": str(flags),
                "filename": name,
            })
        with atomic_path(annotation) as csv_tmp:
            with open(csv_tmp, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=ODIR_COLUMNS)
                writer.writeheader()
                writer.writerows(rows)
        return _publish(tmp, image_dir), Path(annotation)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _cifar_batch(label_name: str, labels: np.ndarray, rng: np.random.Generator,
                 first: int) -> dict:
    """One pickled batch dict of the official release: ``data`` uint8 N x 3072 (channel-major
    rows: R plane, G plane, B plane), ``labels``, ``filenames``, ``batch_label``."""
    images = np.stack([class_image(int(y), 32, 32, rng) for y in labels])
    return {"batch_label": label_name, "labels": [int(y) for y in labels],
            "data": images.transpose(0, 3, 1, 2).reshape(len(labels), -1),
            "filenames": [f"smoke_{first + i:06d}.png" for i in range(len(labels))]}


def make_cifar10(root: str | Path, *, per_batch: int, test_images: int, seed: int = 0) -> Path:
    """``<root>/cifar-10-batches-py/``: five train batches of ``per_batch`` images and a test
    batch of ``test_images``, classes cycling so every batch holds all ten."""
    root, tmp = _building(root)
    try:
        rng = np.random.default_rng(seed)
        folder = tmp / CIFAR_FOLDER
        folder.mkdir()
        batches = [(f"data_batch_{b}", f"training batch {b} of 5", per_batch) for b in range(1, 6)]
        batches.append(("test_batch", "testing batch 1 of 1", test_images))
        first = 0
        for name, label_name, n in batches:
            labels = rng.permutation(np.arange(n) % len(CIFAR_CLASSES))
            blob = _cifar_batch(label_name, labels, rng, first)
            first += n
            (folder / name).write_bytes(pickle.dumps(blob, protocol=2))
        meta = {"num_cases_per_batch": per_batch, "label_names": list(CIFAR_CLASSES),
                "num_vis": 3072}
        (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
        return _publish(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
