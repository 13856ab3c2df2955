"""Prepared image datasets: the on-disk format, its writer and its memory-mapped reader.

Every image dataset is decoded, resized and split ONCE into a directory::

    <out>/meta.json              dataset, source, resolution, classes, split sizes, seed, producer
    <out>/{split}_images.npy     uint8, N x H x W x 3 (written through np.lib.format.open_memmap)
    <out>/{split}_labels.npy     int64, N
    <out>/{split}_index.txt      one line per row: the source file (relative to the source root)
                                 or the source index, so every split is recorded

The directory is built under a hidden temporary name beside ``<out>`` and renamed into
place only when every file is complete: a killed or failed preparation leaves no
half-written dataset behind. Training reads the ``.npy`` files memory-mapped, so a
dataset larger than RAM is never loaded whole, and reads whole batches by
fancy-indexing the memmap with sorted row numbers (:meth:`PreparedImages.batches`).
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vqshrink.io import git_revision, load_json, make_temporary_dir, save_json

FORMAT = "vqshrink-prepared-images"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class DatasetError(ValueError):
    """Input data is missing or not in the expected form; the message names the path."""


@dataclass
class SplitRows:
    """What one split holds before it is written.

    Either ``images`` (an in-memory or memory-mapped uint8 N x H x W x 3 array) or
    ``items`` plus the writer's ``decode`` function (one item -> one uint8 H x W x 3 image)
    supplies the pixels; ``index`` is what ``{split}_index.txt`` records for each row.
    """

    index: Sequence[str]
    labels: np.ndarray
    images: np.ndarray | None = None
    items: Sequence[Any] | None = None

    def __len__(self) -> int:
        return len(self.index)


# --------------------------------------------------------------------------- splitting


def split_indices(
    labels: np.ndarray,
    sizes: Mapping[str, int | None],
    *,
    seed: int,
    stratify: str | None = "proportional",
    where: str | Path = "",
) -> dict[str, np.ndarray]:
    """Deterministically split row numbers ``0..len(labels)-1`` into named splits.

    ``sizes`` maps split name -> number of rows; exactly one split may be ``None`` and
    takes every row left over. Fixed-size splits are drawn in the order given:

    - ``stratify="equal"``: an equal share from every class (remainder to classes
      picked by the seed) -- "N images sampled uniformly from all classes";
    - ``stratify="proportional"``: each class contributes in proportion to its size
      (largest-remainder rounding, ties broken by the seed);
    - ``stratify=None``: rows drawn uniformly from the whole set.

    Each split's rows come back sorted, so writing them keeps the source order. Raises
    :class:`DatasetError` (naming ``where``) when the sizes do not fit the data.
    """
    labels = np.asarray(labels)
    n = len(labels)
    if stratify not in ("equal", "proportional", None):
        raise ValueError(f"stratify must be 'equal', 'proportional' or None, got {stratify!r}")
    rest = [k for k, v in sizes.items() if v is None]
    if len(rest) > 1:
        raise ValueError(f"at most one split may take the rest, got {rest}")
    fixed = {k: int(v) for k, v in sizes.items() if v is not None}
    if any(v < 0 for v in fixed.values()):
        raise ValueError(f"split sizes must be non-negative, got {dict(sizes)}")
    wanted = sum(fixed.values())
    if wanted > n or (not rest and wanted != n):
        raise DatasetError(
            f"{where}: split sizes {dict(sizes)} ask for {wanted} rows but the data has {n}"
            + ("" if rest else " (with no split taking the rest they must add up exactly)")
        )
    rng = np.random.default_rng(seed)
    taken: dict[str, np.ndarray] = {}
    if stratify is None:
        perm = rng.permutation(n)
        start = 0
        for name, size in fixed.items():
            taken[name] = perm[start : start + size]
            start += size
        leftover = perm[start:]
    else:
        classes, counts = np.unique(labels, return_counts=True)
        pools = [list(rng.permutation(np.flatnonzero(labels == c))) for c in classes]
        if stratify == "proportional":
            weights = counts / n
        else:
            weights = np.full(len(classes), 1 / len(classes))
        for name, size in fixed.items():
            quota = largest_remainder(size * weights, size, rng)
            rows = []
            for c, k, pool in zip(classes, quota, pools):
                if k > len(pool):
                    raise DatasetError(
                        f"{where}: split {name!r} needs {k} rows of class {c.item()} but only "
                        f"{len(pool)} are left; lower the split sizes or change stratify"
                    )
                rows.extend(pool[:k])
                del pool[:k]
            taken[name] = np.asarray(rows, dtype=np.int64)
        leftover = np.asarray([r for pool in pools for r in pool], dtype=np.int64)
    if rest:
        taken[rest[0]] = leftover
    return {name: np.sort(taken[name]).astype(np.int64) for name in sizes}


def largest_remainder(exact: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Integer quotas summing to ``total`` closest to ``exact`` (ties broken at random)."""
    base = np.floor(exact).astype(np.int64)
    short = total - int(base.sum())
    if short > 0:
        frac = exact - base
        order = np.lexsort((rng.random(len(exact)), -frac))
        base[order[:short]] += 1
    return base


def fraction_sizes(n: int, fractions: Mapping[str, float], rest: str) -> dict[str, int | None]:
    """Turn split fractions into row counts (rounded), the ``rest`` split taking what is left."""
    if abs(sum(fractions.values()) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must add up to 1, got {dict(fractions)}")
    if rest not in fractions:
        raise ValueError(f"the rest split {rest!r} is not among {list(fractions)}")
    return {k: (None if k == rest else int(round(v * n))) for k, v in fractions.items()}


# --------------------------------------------------------------------------- decoding


def resize_center_crop(img: Any, size: int) -> Any:
    """Resize a PIL image so its shorter side is ``size`` (bicubic), then crop the centre square."""
    from PIL import Image

    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def decode_square(path: str, size: int) -> np.ndarray:
    """Decode one image file to uint8 ``size x size x 3`` RGB (shorter side + centre crop).

    Any failure to read or decode raises :class:`DatasetError` naming the file.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            rgb = img.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as err:
        raise DatasetError(f"cannot decode image {path}: {type(err).__name__}: {err}") from None
    return np.asarray(resize_center_crop(rgb, size), dtype=np.uint8)


# --------------------------------------------------------------------------- writing


def _producer() -> dict[str, Any]:
    import PIL

    return {
        "package": "vqshrink",
        "git": git_revision(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "pillow": PIL.__version__,
    }


def _rows(
    split: str,
    rows: SplitRows,
    decode: Callable[[Any], np.ndarray] | None,
    pool: Any,
    chunksize: int,
) -> Iterator[np.ndarray]:
    if rows.images is not None:
        for start in range(0, len(rows), 1024):
            yield from rows.images[start : start + 1024]
        return
    if rows.items is None or decode is None:
        raise ValueError(f"split {split!r} has neither images nor items plus a decode function")
    if pool is None:
        yield from map(decode, rows.items)
    else:
        yield from pool.imap(decode, rows.items, chunksize=chunksize)


def write_prepared(
    out_dir: str | Path,
    splits: Mapping[str, SplitRows],
    *,
    meta: Mapping[str, Any],
    resolution: int,
    decode: Callable[[Any], np.ndarray] | None = None,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
    chunksize: int = 32,
) -> Path:
    """Write a prepared dataset to ``out_dir`` atomically and return its path.

    ``meta`` must name at least ``dataset`` and ``classes``; the writer adds the format,
    resolution, split sizes and who made it. ``decode`` (a picklable function) turns one
    item into a uint8 ``resolution x resolution x 3`` image; with ``workers > 1`` items
    are decoded in that many worker processes, in order. Nothing appears at ``out_dir``
    unless every split was written; an existing dataset there is kept unless
    ``overwrite``.
    """
    from tqdm import tqdm

    out_dir = Path(out_dir)
    for key in ("dataset", "classes"):
        if key not in meta:
            raise ValueError(f"meta must name {key!r}")
    if out_dir.exists() and not overwrite:
        raise DatasetError(
            f"{out_dir} already exists; delete it or prepare with overwrite=True"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temporary_dir(out_dir.parent, out_dir.name)  # mode per umask, unlike mkdtemp
    pool = None
    try:
        if workers > 1 and decode is not None and any(r.images is None for r in splits.values()):
            pool = multiprocessing.get_context().Pool(workers)
        shape = (resolution, resolution, 3)
        for split, rows in splits.items():
            n = len(rows)
            if len(rows.labels) != n or (rows.items is not None and len(rows.items) != n):
                raise ValueError(f"split {split!r}: index, labels and items differ in length")
            images = np.lib.format.open_memmap(
                tmp / f"{split}_images.npy", mode="w+", dtype=np.uint8, shape=(n, *shape)
            )
            bar = tqdm(total=n, desc=f"{meta['dataset']}/{split}", unit="img", disable=not progress)
            for i, img in enumerate(_rows(split, rows, decode, pool, chunksize)):
                if img.shape != shape or img.dtype != np.uint8:
                    raise DatasetError(
                        f"{rows.index[i]}: decoded to {img.dtype} {img.shape}, "
                        f"expected uint8 {shape}"
                    )
                images[i] = img
                bar.update(1)
            bar.close()
            images.flush()
            del images
            np.save(tmp / f"{split}_labels.npy", np.asarray(rows.labels, dtype=np.int64))
            (tmp / f"{split}_index.txt").write_text("".join(f"{s}\n" for s in rows.index))
        record = {
            **dict(meta),
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "resolution": resolution,
            "channels": 3,
            "layout": "N x H x W x C uint8",
            "num_classes": len(meta["classes"]),
            "split_sizes": {s: len(r) for s, r in splits.items()},
            "produced_by": _producer(),
        }
        save_json(record, tmp / "meta.json")
        if pool is not None:
            pool.close()
            pool.join()
            pool = None
        _move_into_place(tmp, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if pool is not None:
            pool.terminate()
    return out_dir


def _move_into_place(tmp: Path, out_dir: Path, overwrite: bool) -> None:
    if not out_dir.exists():
        os.replace(tmp, out_dir)
        return
    if not overwrite:
        raise DatasetError(f"{out_dir} appeared while preparing; not replacing it")
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- reading


def read_meta(root: str | Path) -> dict[str, Any]:
    """The ``meta.json`` of a prepared dataset, checked to be one."""
    root = Path(root)
    path = root / "meta.json"
    if not path.is_file():
        raise DatasetError(f"{root} is not a prepared dataset: it has no meta.json")
    meta = load_json(path)
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise DatasetError(
            f"{path}: format {meta.get('format')!r} v{meta.get('format_version')}, "
            f"expected {FORMAT!r} v{FORMAT_VERSION}; prepare the dataset again"
        )
    return meta


def to_float(images: np.ndarray) -> torch.Tensor:
    """uint8 (N) x H x W x C -> float32 (N) x C x H x W in [-1, 1]."""
    arr = np.ascontiguousarray(images)
    if not arr.flags.writeable:  # a view into the read-only memmap: copy (one image, cheap)
        arr = arr.copy()
    x = torch.from_numpy(arr)
    x = x.permute(0, 3, 1, 2) if x.ndim == 4 else x.permute(2, 0, 1)
    return x.float().div_(127.5).sub_(1.0)


class PreparedImages(Dataset):
    """One split of a prepared dataset, read through a memory map.

    ``ds[i]`` gives ``(float tensor C x H x W in [-1, 1], int label)``. For training,
    :meth:`batches` is much faster: it reads each batch with one fancy index into the
    memmap instead of one read per image. The memmap is opened lazily and dropped on
    pickling, so the dataset can be handed to DataLoader worker processes cheaply.
    """

    def __init__(self, root: str | Path, split: str) -> None:
        self.root = Path(root)
        self.split = split
        self.meta = read_meta(self.root)
        sizes = self.meta["split_sizes"]
        if split not in sizes:
            raise DatasetError(f"{self.root} has no split {split!r}; it has {sorted(sizes)}")
        self.labels = np.load(self.root / f"{split}_labels.npy")
        self.classes: list[str] = list(self.meta["classes"])
        self._images: np.ndarray | None = None
        if len(self.labels) != sizes[split]:
            raise DatasetError(
                f"{self.root / f'{split}_labels.npy'}: {len(self.labels)} rows, "
                f"meta.json says {sizes[split]}"
            )

    @property
    def images(self) -> np.ndarray:
        """The uint8 N x H x W x 3 memmap of this split."""
        if self._images is None:
            self._images = np.load(self.root / f"{self.split}_images.npy", mmap_mode="r")
        return self._images

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_images"] = None
        return state

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return to_float(self.images[i]), int(self.labels[i])

    def index(self) -> list[str]:
        """The recorded source of every row (``{split}_index.txt``)."""
        return (self.root / f"{self.split}_index.txt").read_text().splitlines()

    def get_batch(self, indices: Sequence[int] | np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``indices`` as ``(float B x C x H x W in [-1, 1], int64 B)``, sorted by row."""
        idx = np.sort(np.asarray(indices, dtype=np.int64))
        return to_float(self.images[idx]), torch.from_numpy(self.labels[idx])

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int | None = None,
        drop_last: bool = False,
        indices: Sequence[int] | np.ndarray | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield whole batches over ``indices`` (default: every row).

        With ``shuffle`` the rows are permuted by ``seed`` first, so batches are random
        subsets; inside a batch rows come in sorted order, which is what makes the memmap
        read fast.
        """
        rows = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        if shuffle:
            rows = np.random.default_rng(seed).permutation(rows)
        stop = len(rows) - (len(rows) % batch_size if drop_last else 0)
        for start in range(0, stop, batch_size):
            yield self.get_batch(rows[start : start + batch_size])
