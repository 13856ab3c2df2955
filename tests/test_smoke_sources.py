"""The smoke preset's generated sources: the real preparation code reads them into the
expected splits, labels and shapes."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pytest

from vqshrink.data import smoke_sources as ss
from vqshrink.data.cifar10 import prepare_cifar10
from vqshrink.data.imagenet100 import default_class_list, prepare_imagenet100, read_class_list
from vqshrink.data.odir import CATEGORIES, prepare_odir
from vqshrink.data.prepared import PreparedImages


def test_imagenet_tree_prepares_into_equal_splits(tmp_path):
    wnids = read_class_list(default_class_list())
    assert len(wnids) == 100
    root = ss.make_imagenet_tree(tmp_path / "in100", wnids, per_class=3, seed=0)
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.JPEG"))
    assert len(files) == 300 and files[0] == f"{sorted(wnids)[0]}/{sorted(wnids)[0]}_1.JPEG"
    from PIL import Image

    sizes = {Image.open(root / f).size for f in files[:20]}
    assert all(w != h for w, h in sizes) and len(sizes) > 5   # varied, non-square
    out = prepare_imagenet100(root, tmp_path / "prep", test_size=100, val_size=100,
                              workers=1, progress=False)
    for split in ("train", "val", "test"):
        d = PreparedImages(out, split)
        assert len(d) == 100 and d.images.shape[1:] == (128, 128, 3)
        assert np.array_equal(np.bincount(d.labels, minlength=100), np.ones(100))
    # class-dependent content: images of one class are closer than of another
    train = PreparedImages(out, "train")
    means = np.asarray(train.images, dtype=np.float64).mean((1, 2))   # 100 x 3 colours
    assert np.std(means, 0).min() > 10      # classes differ in colour


def test_imagenet_tree_is_deterministic_and_atomic(tmp_path):
    a = ss.make_imagenet_tree(tmp_path / "a", ["n01440764", "n01443537"], per_class=2, seed=3)
    b = ss.make_imagenet_tree(tmp_path / "b", ["n01440764", "n01443537"], per_class=2, seed=3)
    for f in a.rglob("*.JPEG"):
        assert f.read_bytes() == (b / f.relative_to(a)).read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"]   # no temporaries left


def test_odir_csv_has_kaggle_columns_and_prepares_with_every_label_in_every_split(tmp_path):
    images, csv = ss.make_odir(tmp_path / "odir" / "preprocessed_images",
                               tmp_path / "odir" / "full_df.csv", images=100, seed=1)
    df = pd.read_csv(csv)
    assert list(df.columns) == list(ss.ODIR_COLUMNS)
    assert df["labels"].iloc[0].startswith("['") and df["target"].iloc[0].startswith("[")
    assert len(df) == 100 and set(df["filename"]) == {p.name for p in images.iterdir()}
    out = prepare_odir(images, csv, tmp_path / "prep",
                       workers=1, progress=False)
    sizes = {}
    for split in ("train", "val", "test"):
        d = PreparedImages(out, split)
        sizes[split] = len(d)
        assert d.images.shape[1:] == (128, 128, 3)
        assert set(d.labels.tolist()) == set(range(len(CATEGORIES))), split
    assert sizes == {"train": 70, "val": 10, "test": 20}
    # the one-hot target column names the same category as the labels column
    onehot = df["target"].map(lambda s: json.loads(s).index(1))
    assert (onehot == df["labels"].map(lambda s: CATEGORIES.index(s[2]))).all()


def test_cifar10_batches_prepare_into_splits(tmp_path):
    root = ss.make_cifar10(tmp_path / "cifar", per_batch=30, test_images=20, seed=2)
    folder = root / "cifar-10-batches-py"
    assert sorted(p.name for p in folder.iterdir()) == [
        "batches.meta", "data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
        "data_batch_5", "test_batch"]
    with open(folder / "data_batch_1", "rb") as fh:
        blob = pickle.load(fh, encoding="latin1")
    assert blob["data"].dtype == np.uint8 and blob["data"].shape == (30, 3072)
    out = prepare_cifar10(root, tmp_path / "prep", val_size=50, progress=False)
    train, val, test = (PreparedImages(out, s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (100, 50, 20)
    assert train.images.shape[1:] == (32, 32, 3)
    assert set(test.labels.tolist()) == set(range(10))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["classes"] == list(ss.CIFAR_CLASSES)
    assert meta["source"]["official_files"] is False   # not the official release: labelled
    # pixels round-trip: the first train-batch image as the pickle stores it (CHW rows)
    first = blob["data"][0].reshape(3, 32, 32).transpose(1, 2, 0)
    rows = [line for line in (out / "train_index.txt").read_text().split()]
    if "train:0" in rows:
        assert np.array_equal(train.images[rows.index("train:0")], first)


def test_cifar10_unreadable_batch_names_the_file(tmp_path):
    root = ss.make_cifar10(tmp_path / "cifar", per_batch=10, test_images=10, seed=2)
    (root / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    from vqshrink.data.prepared import DatasetError

    with pytest.raises(DatasetError, match="data_batch_3"):
        prepare_cifar10(root, tmp_path / "prep", val_size=5, progress=False)
