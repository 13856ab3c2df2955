"""ImageNet-100, prepared from a user's ILSVRC-2012 training directory.

Source layout: ``<root>/<wnid>/*.JPEG`` (the ILSVRC-2012 train set, 1,000 folders, or a
copy holding only the 100 needed). The 100 classes are the list of Tian et al. 2019
(Contrastive Multiview Coding), shipped as ``workflow/resources/imagenet100_classes.txt``;
a class's label is its line number in that list.

Only the ILSVRC *training* images are used. Following the paper (Sec. 6.1), 20,000 test
images are sampled uniformly from the 100 training classes (200 per class), 5,000 more
form a validation split (50 per class) and the rest (about 105,000) are for training;
all three are fixed by the seed and recorded in ``{split}_index.txt``.

Every image is decoded with Pillow, converted to RGB, resized so its shorter side is
128 pixels (bicubic) and centre-cropped to 128 x 128.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import numpy as np

from vqshrink.data.prepared import (
    IMAGE_SUFFIXES,
    DatasetError,
    SplitRows,
    decode_square,
    split_indices,
    write_prepared,
)

WNID = re.compile(r"^n\d{8}$")
RESOURCE = Path("workflow") / "resources" / "imagenet100_classes.txt"
TEST_SIZE = 20_000  # paper Sec. 6.1
VAL_SIZE = 5_000  # paper Sec. 6.1
RESOLUTION = 128  # paper Sec. 6.1


def default_class_list() -> Path:
    """The shipped class list, found from the repository checkout this package lives in."""
    for parent in Path(__file__).resolve().parents:
        candidate = parent / RESOURCE
        if candidate.is_file():
            return candidate
    raise DatasetError(
        f"cannot find {RESOURCE} above {Path(__file__).resolve().parent}; "
        "pass class_list= explicitly"
    )


def read_class_list(path: str | Path) -> list[str]:
    """Read a wnid list: one wnid per line, '#' comments and blank lines ignored."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"class list {path} does not exist")
    wnids = []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if not WNID.match(line):
            raise DatasetError(f"{path}:{lineno}: {line!r} is not a WordNet id like n01440764")
        wnids.append(line)
    dupes = sorted({w for w in wnids if wnids.count(w) > 1})
    if dupes:
        raise DatasetError(f"{path}: wnids listed twice: {', '.join(dupes[:5])}")
    if not wnids:
        raise DatasetError(f"{path}: no wnids in the class list")
    return wnids


def _few(names: Sequence[str], k: int = 5) -> str:
    shown = ", ".join(names[:k])
    return shown + (f", ... ({len(names)} in all)" if len(names) > k else "")


def scan_class_folders(root: str | Path, classes: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """List ``<root>/<wnid>/*`` image files of ``classes``: (paths relative to root, labels).

    Files are sorted within each class, classes follow the list order, so the result is
    the same on every machine holding the same files.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"ImageNet root {root} does not exist or is not a directory")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not folders:
        loose = [p.name for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        hint = f"; it has {len(loose)} images at top level" if loose else ""
        raise DatasetError(
            f"{root} has no class folders; expected the ILSVRC-2012 train layout "
            f"<root>/<wnid>/*.JPEG{hint}"
        )
    present = set(folders)
    missing = [c for c in classes if c not in present]
    if missing:
        extra = [f for f in folders if f not in set(classes)]
        raise DatasetError(
            f"{root}: the class list does not match the folders: {len(missing)} listed "
            f"wnids have no folder ({_few(missing)})"
            + (f"; folders not in the list: {_few(extra)}" if extra else "")
        )
    paths: list[str] = []
    labels: list[int] = []
    for label, wnid in enumerate(classes):
        files = sorted(
            p.name for p in (root / wnid).iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise DatasetError(f"{root / wnid} holds no image files (*.JPEG)")
        paths.extend(f"{wnid}/{name}" for name in files)
        labels.extend([label] * len(files))
    return paths, np.asarray(labels, dtype=np.int64)


def _decode_under(rel: str, *, root: str, size: int) -> np.ndarray:
    return decode_square(str(Path(root) / rel), size)


def prepare_imagenet100(
    root: str | Path,
    out_dir: str | Path,
    *,
    class_list: str | Path | None = None,
    classes: Sequence[str] | None = None,
    resolution: int = RESOLUTION,
    test_size: int = TEST_SIZE,
    val_size: int = VAL_SIZE,
    stratify: str | None = "equal",
    seed: int = 0,
    workers: int = 8,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Prepare ImageNet-100 from ``root`` (``<root>/<wnid>/*.JPEG``) into ``out_dir``.

    ``classes`` (a wnid sequence) overrides ``class_list`` (a file), which defaults to the
    shipped CMC list. ``test_size``/``val_size`` images are drawn per class in equal
    shares (``stratify="equal"``, the default), in proportion to class sizes
    (``"proportional"``) or uniformly over all images (``None``); the rest is train.
    Decoding runs in ``workers`` processes.
    """
    if classes is None:
        list_path = Path(class_list) if class_list is not None else default_class_list()
        classes = read_class_list(list_path)
        list_source = str(list_path)
    else:
        classes = list(classes)
        list_source = "given explicitly"
    root = Path(root)
    paths, labels = scan_class_folders(root, classes)
    split = split_indices(
        labels, {"train": None, "val": val_size, "test": test_size},
        seed=seed, stratify=stratify, where=root,
    )
    splits = {}
    for name, rows in split.items():
        rel = [paths[i] for i in rows]
        splits[name] = SplitRows(index=rel, labels=labels[rows], items=rel)
    meta = {
        "dataset": "imagenet100",
        "source": {"root": str(root.resolve()), "kind": "ILSVRC-2012 train folders",
                   "class_list": list_source, "images_found": len(paths)},
        "classes": list(classes),
        "seed": seed,
        "split_rule": (
            f"test {test_size} and val {val_size} drawn from the ILSVRC-2012 train images "
            + {"equal": "in equal shares per class", "proportional": "in proportion to class sizes",
               None: "uniformly over all images"}[stratify]
            + ", train = the rest (paper Sec. 6.1)"
        ),
        "preprocessing": f"PIL RGB, shorter side -> {resolution} bicubic, centre crop "
                         f"{resolution}x{resolution}",
        "index": "path relative to source root",
    }
    decode = partial(_decode_under, root=str(root), size=resolution)
    return write_prepared(
        out_dir, splits, meta=meta, resolution=resolution, decode=decode,
        workers=workers, overwrite=overwrite, progress=progress,
    )
