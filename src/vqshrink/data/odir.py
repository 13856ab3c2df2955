"""ODIR-5K (Ocular Disease Intelligent Recognition) fundus photographs.

The paper (Sec. 6.1) uses "6,716 fundus images labeled across 8 diagnostic
categories" with a 70% / 20% / 10% train / test / validation split, at 128 x 128.
The eight categories, in label order: N normal, D diabetes, G glaucoma, C cataract,
A age-related macular degeneration, H hypertension, M pathological myopia, O other.

Two annotation layouts exist and both are read (CSV, or XLSX when openpyxl is
installed):

``per_image`` (default) -- one row per image, e.g. Kaggle's ``full_df.csv``
(andrewmvd/ocular-disease-recognition-odir5k, 6,392 rows whose images are in
``preprocessed_images/``): a file-name column (``filename``, e.g. ``0_right.jpg``) and
a label column (``labels``, e.g. ``['N']``). The label cell may be a list literal of
letters (``['N']``), a one-hot list (``[1, 0, 0, 0, 0, 0, 0, 0]``, as in Kaggle's
``target`` column), a bare letter, a category name or an integer 0-7. Kaggle's cells
hold exactly one letter; should a cell list several, the FIRST one listed is taken
(``multi_label="first"``) or the row is refused (``multi_label="error"``).

``per_patient`` -- the official challenge sheet (``ODIR-5K_Training_Annotations``,
Kaggle's ``data.xlsx``): one row per patient with ``Left-Fundus``/``Right-Fundus``
file names and ``Left-Diagnostic Keywords``/``Right-Diagnostic Keywords``. Its N..O
flags describe the PATIENT (both eyes), so each eye's label is derived from that eye's
own keywords instead: keywords are split on commas (ASCII or full-width), keywords that
only describe image quality (lens dust, low image quality, image offset, optic disk
photographically invisible, no fundus image, anterior segment image) are ignored, each
remaining keyword maps to a category (``normal fundus`` -> N, ``...retinopathy`` of
diabetic kind -> D, ``glaucoma`` -> G, ``cataract`` -> C, ``macular degeneration`` -> A,
``hypertensive`` -> H, ``myopi...`` -> M, anything else -> O) and the first listed
keyword decides. An eye with quality keywords only is left out (counted in meta.json).

Where 6,716 comes from was not found: the ODIR-5K training release has 3,500 patients
x 2 eyes = 7,000 images, Kaggle's ``full_df.csv`` has 6,392; 20% of 6,392 (1,278) fits
the paper's "about 1,200" test images better than 20% of 6,716 (1,343). The count
actually used is recorded in meta.json.
"""

from __future__ import annotations

import ast
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from vqshrink.data.prepared import (
    DatasetError,
    SplitRows,
    decode_square,
    fraction_sizes,
    split_indices,
    write_prepared,
)

CATEGORIES = ("N", "D", "G", "C", "A", "H", "M", "O")
CATEGORY_NAMES = {
    "N": "normal",
    "D": "diabetes",
    "G": "glaucoma",
    "C": "cataract",
    "A": "age-related macular degeneration",
    "H": "hypertension",
    "M": "pathological myopia",
    "O": "other diseases/abnormalities",
}
FRACTIONS = {"train": 0.7, "test": 0.2, "val": 0.1}  # paper Sec. 6.1
RESOLUTION = 128
QUALITY_KEYWORDS = (
    "lens dust",
    "low image quality",
    "image offset",
    "optic disk photographically invisible",
    "no fundus image",
    "anterior segment image",
)
# (substring of a lower-cased keyword, category); the first match wins, else "O".
KEYWORD_RULES = (
    ("normal fundus", "N"),
    ("diabetic retinopathy", "D"),
    ("proliferative retinopathy", "D"),  # also matches "nonproliferative retinopathy"
    ("glaucoma", "G"),
    ("cataract", "C"),
    ("macular degeneration", "A"),
    ("hypertensive", "H"),
    ("myopi", "M"),
)
PATIENT_COLUMNS = {
    "left": ("Left-Fundus", "Left-Diagnostic Keywords"),
    "right": ("Right-Fundus", "Right-Diagnostic Keywords"),
}


# --------------------------------------------------------------------------- annotations


def read_annotation(path: str | Path) -> Any:
    """Load the annotation table (CSV, or XLSX via openpyxl) as a pandas DataFrame."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"ODIR annotation file {path} does not exist")
    if path.suffix.lower() in (".xlsx", ".xls"):
        try:
            return pd.read_excel(path)
        except ImportError as err:
            raise DatasetError(
                f"{path}: reading spreadsheets needs openpyxl ({err}); install it or "
                "export the sheet to CSV"
            ) from None
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise DatasetError(f"{path}: cannot read as CSV: {err}") from None


def _require_columns(df: Any, columns: Sequence[str], path: Path) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DatasetError(
            f"{path}: annotation has no column {', '.join(map(repr, missing))}; "
            f"its columns are {list(df.columns)}"
        )


def parse_label_cell(value: Any, where: str) -> list[str]:
    """The category letters a label cell names, in the order it names them."""
    names = {v: k for k, v in CATEGORY_NAMES.items()}
    if isinstance(value, (int, np.integer)) and 0 <= int(value) < len(CATEGORIES):
        return [CATEGORIES[int(value)]]
    text = str(value).strip()
    if text.startswith("["):
        try:
            items = list(ast.literal_eval(text))
        except (ValueError, SyntaxError):
            raise DatasetError(f"{where}: cannot parse label {text!r}") from None
        if len(items) == len(CATEGORIES) and all(i in (0, 1) for i in items) and not any(
            isinstance(i, str) for i in items
        ):
            return [c for c, flag in zip(CATEGORIES, items) if flag]
    else:
        items = [text]
    letters = []
    for item in items:
        key = str(item).strip()
        if key.upper() in CATEGORIES:
            letters.append(key.upper())
        elif key.lower() in names:
            letters.append(names[key.lower()])
        elif key.isdigit() and int(key) < len(CATEGORIES):
            letters.append(CATEGORIES[int(key)])
        else:
            raise DatasetError(
                f"{where}: label {item!r} is none of the ODIR categories {', '.join(CATEGORIES)}"
            )
    return letters


def choose_label(letters: Sequence[str], multi_label: str, where: str) -> str:
    """One category for one image (see the module docstring for the rule)."""
    if not letters:
        raise DatasetError(f"{where}: the label names no category")
    if len(letters) > 1 and multi_label == "error":
        raise DatasetError(f"{where}: several labels {list(letters)} for one image")
    if multi_label not in ("first", "error"):
        raise ValueError(f"multi_label must be 'first' or 'error', got {multi_label!r}")
    return letters[0]


def keyword_categories(keywords: str) -> list[str]:
    """Categories of one eye's diagnostic keywords, in listed order, quality notes dropped."""
    out = []
    for word in re.split(r"[,，;；]", str(keywords)):
        word = word.strip().lower()
        if not word or word == "nan" or any(q in word for q in QUALITY_KEYWORDS):
            continue
        out.append(next((cat for key, cat in KEYWORD_RULES if key in word), "O"))
    return out


def per_image_rows(
    df: Any, path: Path, filename_column: str, label_column: str, multi_label: str
) -> list[tuple[str, str]]:
    """(file name, category) for every row of a one-row-per-image table."""
    _require_columns(df, [filename_column, label_column], path)
    rows = []
    for i, (name, cell) in enumerate(zip(df[filename_column], df[label_column])):
        where = f"{path} row {i + 2} ({name})"
        label = choose_label(parse_label_cell(cell, where), multi_label, where)
        rows.append((str(name).strip(), label))
    return rows


def per_patient_rows(df: Any, path: Path, multi_label: str) -> tuple[list[tuple[str, str]], int]:
    """(file name, category) for both eyes of every patient row, and how many eyes were left out."""
    _require_columns(df, [c for pair in PATIENT_COLUMNS.values() for c in pair], path)
    rows, dropped = [], 0
    for i in range(len(df)):
        for file_col, kw_col in PATIENT_COLUMNS.values():
            name, kws = str(df[file_col].iloc[i]).strip(), df[kw_col].iloc[i]
            cats = keyword_categories(kws)
            if not cats:
                dropped += 1
                continue
            rows.append((name, choose_label(cats, multi_label, f"{path} row {i + 2} ({name})")))
    return rows, dropped


# --------------------------------------------------------------------------- preparation


def _check_images(image_dir: Path, names: Sequence[str], skip_missing: bool) -> list[bool]:
    if not image_dir.is_dir():
        raise DatasetError(f"ODIR image directory {image_dir} does not exist or is not a directory")
    present = {p.name for p in image_dir.iterdir() if p.is_file()}
    found = [n in present for n in names]
    missing = [n for n, ok in zip(names, found) if not ok]
    if missing and not skip_missing:
        shown = ", ".join(missing[:5])
        shown += f", ... ({len(missing)} in all)" if len(missing) > 5 else ""
        raise DatasetError(
            f"{image_dir}: {len(missing)} annotated images are not in the directory ({shown}); "
            "pass skip_missing=True to leave them out"
        )
    return found


def prepare_odir(
    image_dir: str | Path,
    annotation: str | Path,
    out_dir: str | Path,
    *,
    annotation_format: str = "per_image",
    filename_column: str = "filename",
    label_column: str = "labels",
    multi_label: str = "first",
    fractions: Mapping[str, float] | None = None,
    stratify: str | None = "proportional",
    resolution: int = RESOLUTION,
    skip_missing: bool = False,
    seed: int = 0,
    workers: int = 8,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Prepare ODIR-5K images from ``image_dir`` labelled by ``annotation`` into ``out_dir``.

    ``annotation_format`` is ``"per_image"`` (with ``filename_column``/``label_column``)
    or ``"per_patient"``. Splits default to 70/20/10 train/test/val, stratified in
    proportion to the categories; each image is resized (shorter side, bicubic) and
    centre-cropped to ``resolution``.
    """
    image_dir, annotation = Path(image_dir), Path(annotation)
    if not image_dir.is_dir():
        raise DatasetError(f"ODIR image directory {image_dir} does not exist or is not a directory")
    df = read_annotation(annotation)
    dropped = 0
    if annotation_format == "per_image":
        rows = per_image_rows(df, annotation, filename_column, label_column, multi_label)
    elif annotation_format == "per_patient":
        rows, dropped = per_patient_rows(df, annotation, multi_label)
    else:
        raise ValueError(
            f"annotation_format must be 'per_image' or 'per_patient', got {annotation_format!r}"
        )
    names = [name for name, _ in rows]
    dupes = sorted(n for n, k in Counter(names).items() if k > 1)
    if dupes:
        raise DatasetError(f"{annotation}: images annotated twice: {', '.join(dupes[:5])}")
    found = _check_images(image_dir, names, skip_missing)
    rows = [r for r, ok in zip(rows, found) if ok]
    if not rows:
        raise DatasetError(f"{annotation}: no annotated image found in {image_dir}")
    names = [name for name, _ in rows]
    labels = np.asarray([CATEGORIES.index(cat) for _, cat in rows], dtype=np.int64)
    fractions = dict(fractions or FRACTIONS)
    split = split_indices(
        labels, fraction_sizes(len(rows), fractions, rest="train"),
        seed=seed, stratify=stratify, where=annotation,
    )
    splits = {}
    for name, idx in split.items():
        rel = [names[i] for i in idx]
        splits[name] = SplitRows(index=rel, labels=labels[idx], items=rel)
    meta = {
        "dataset": "odir",
        "source": {
            "image_dir": str(image_dir.resolve()),
            "annotation": str(annotation.resolve()),
            "annotation_format": annotation_format,
            "filename_column": filename_column if annotation_format == "per_image" else None,
            "label_column": label_column if annotation_format == "per_image" else None,
            "images_annotated": len(found) + dropped,
            "images_used": len(rows),
            "left_out_missing_file": int(len(found) - sum(found)),
            "left_out_quality_only": dropped,
        },
        "classes": list(CATEGORIES),
        "class_names": CATEGORY_NAMES,
        "class_counts": {c: int((labels == i).sum()) for i, c in enumerate(CATEGORIES)},
        "seed": seed,
        "split_rule": f"fractions {fractions}, stratify={stratify} (paper Sec. 6.1: 70/20/10)",
        "label_rule": f"one category per image, multi_label={multi_label!r} "
                      "(see vqshrink.data.odir)",
        "preprocessing": f"PIL RGB, shorter side -> {resolution} bicubic, centre crop "
                         f"{resolution}x{resolution}",
        "index": "image file name in image_dir",
    }
    decode = partial(_decode_in, image_dir=str(image_dir), size=resolution)
    return write_prepared(
        out_dir, splits, meta=meta, resolution=resolution, decode=decode,
        workers=workers, overwrite=overwrite, progress=progress,
    )


def _decode_in(name: str, *, image_dir: str, size: int) -> np.ndarray:
    return decode_square(str(Path(image_dir) / name), size)
