"""Image-dataset preparation on tiny fake datasets built here: format, splits, errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqshrink.data import PREPARERS, DatasetError, PreparedImages
from vqshrink.data.cifar10 import prepare_cifar10
from vqshrink.data.digits import prepare_digits
from vqshrink.data.imagenet100 import (
    default_class_list,
    prepare_imagenet100,
    read_class_list,
)
from vqshrink.data.odir import CATEGORIES, keyword_categories, parse_label_cell, prepare_odir
from vqshrink.data.prepared import split_indices

WNIDS = ["n01440764", "n01443537", "n01484850"]
PER_CLASS = 10
RES = 16


def colour(label: int, i: int) -> tuple[int, int, int]:
    """A distinct solid colour for image ``i`` of class ``label``."""
    return (40 + 60 * label, 10 + 20 * i, 200 - 15 * i)


def solid(path: Path, rgb: tuple[int, int, int], size: tuple[int, int] = (24, 20)) -> None:
    Image.new("RGB", size, rgb).save(path)


def dataset_dirs(parent: Path) -> list[str]:
    """Everything left in ``parent`` (prepared sets and any temporary leftovers)."""
    return sorted(p.name for p in parent.iterdir())


@pytest.fixture()
def imagenet(tmp_path):
    """A fake ILSVRC train tree: 3 wnids x 10 solid-colour PNGs, plus one unused class."""
    root = tmp_path / "ilsvrc" / "train"
    for label, wnid in enumerate(WNIDS + ["n09999999"]):
        (root / wnid).mkdir(parents=True)
        for i in range(PER_CLASS):
            solid(root / wnid / f"{wnid}_{i}.PNG", colour(label, i), size=(24 + i, 20))
    return root


def prep_in(root: Path, out: Path, **kw) -> Path:
    kw = {"classes": WNIDS, "resolution": RES, "test_size": 6, "val_size": 3,
          "workers": 1, "progress": False, "seed": 0, **kw}
    return prepare_imagenet100(root, out, **kw)


# ----------------------------------------------------------------------------- ImageNet-100


def test_shipped_class_list_is_the_cmc_list():
    path = default_class_list()
    wnids = read_class_list(path)
    assert len(wnids) == 100 == len(set(wnids))
    assert wnids[0] == "n02869837" and wnids[-1] == "n02090622"
    assert "CMC" in path.read_text().splitlines()[0] or "Contrastive" in path.read_text()


def test_imagenet_splits_labels_pixels(imagenet, tmp_path):
    out = prep_in(imagenet, tmp_path / "prep" / "in100", workers=2)
    sizes = {s: len(PreparedImages(out, s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 21, "val": 3, "test": 6}
    test = PreparedImages(out, "test")
    assert np.bincount(test.labels, minlength=3).tolist() == [2, 2, 2]  # equal shares
    seen = []
    for split in ("train", "val", "test"):
        ds = PreparedImages(out, split)
        assert ds.images.dtype == np.uint8 and ds.images.shape[1:] == (RES, RES, 3)
        for row, src in enumerate(ds.index()):
            wnid, name = src.split("/")
            label = int(ds.labels[row])
            assert WNIDS[label] == wnid  # label matches the source folder
            i = int(name.split("_")[1].split(".")[0])
            assert (ds.images[row] == np.array(colour(label, i), np.uint8)).all()
            seen.append(src)
    assert len(seen) == len(set(seen)) == 30 and not any("n09999999" in s for s in seen)
    meta = test.meta
    assert meta["classes"] == WNIDS and meta["seed"] == 0 and meta["resolution"] == RES


def test_imagenet_split_is_deterministic(imagenet, tmp_path):
    a = prep_in(imagenet, tmp_path / "a", seed=3)
    b = prep_in(imagenet, tmp_path / "b", seed=3)
    c = prep_in(imagenet, tmp_path / "c", seed=4)
    for split in ("train", "val", "test"):
        name = f"{split}_index.txt"
        assert (a / name).read_text() == (b / name).read_text()
        name = f"{split}_images.npy"
        assert np.array_equal(np.load(a / name), np.load(b / name))
    assert (a / "test_index.txt").read_text() != (c / "test_index.txt").read_text()


def test_reader_memmap_items_and_batches(imagenet, tmp_path):
    ds = PreparedImages(prep_in(imagenet, tmp_path / "p"), "train")
    assert isinstance(ds.images, np.memmap)
    x, y = ds[4]
    assert x.shape == (3, RES, RES) and x.dtype == torch.float32 and isinstance(y, int)
    assert -1.0 <= x.min() and x.max() <= 1.0
    expect = torch.from_numpy(ds.images[4].astype(np.float32)).permute(2, 0, 1) / 127.5 - 1
    assert torch.allclose(x, expect)
    rows = []
    for xb, yb in ds.batches(8, shuffle=True, seed=1):
        assert xb.shape[1:] == (3, RES, RES) and len(xb) == len(yb) <= 8
        rows.append(yb)
    assert sum(len(r) for r in rows) == len(ds)
    assert sorted(torch.cat(rows).tolist()) == sorted(ds.labels.tolist())
    assert len(list(ds.batches(8, drop_last=True))) == len(ds) // 8
    xb, yb = ds.get_batch([5, 1, 3])
    assert torch.equal(xb, torch.stack([ds[i][0] for i in (1, 3, 5)]))
    clone = pickle.loads(pickle.dumps(ds))  # memmap is reopened, not copied
    assert clone._images is None and torch.equal(clone[2][0], ds[2][0])


def test_jpeg_decodes_close_to_source(tmp_path):
    root = tmp_path / "train"
    (root / WNIDS[0]).mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (40, 30), (200, 30, 90)).save(root / WNIDS[0] / f"{i}.JPEG", quality=95)
    out = prepare_imagenet100(root, tmp_path / "p", classes=WNIDS[:1], resolution=8,
                              test_size=1, val_size=1, workers=1, progress=False)
    img = np.load(out / "train_images.npy").astype(int)
    assert np.abs(img - np.array([200, 30, 90])).max() <= 3


# ----------------------------------------------------------------------------- errors


def test_missing_root(tmp_path):
    with pytest.raises(DatasetError, match=str(tmp_path / "nowhere")):
        prep_in(tmp_path / "nowhere", tmp_path / "p")
    assert dataset_dirs(tmp_path) == []


def test_images_at_top_level(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    solid(root / "a.JPEG", (1, 2, 3))
    with pytest.raises(DatasetError, match=r"no class folders.*<wnid>.*top level") as err:
        prep_in(root, tmp_path / "p")
    assert str(root) in str(err.value)
    assert not (tmp_path / "p").exists()


def test_class_list_not_matching_folders(imagenet, tmp_path):
    wanted = WNIDS + ["n01111111", "n02222222"]
    with pytest.raises(DatasetError) as err:
        prep_in(imagenet, tmp_path / "p", classes=wanted)
    msg = str(err.value)
    assert str(imagenet) in msg and "n01111111" in msg and "n02222222" in msg
    assert "n09999999" in msg  # the folder that is not in the list is named too
    bad = tmp_path / "list.txt"
    bad.write_text("# header\nn01440764\nnotawnid\n")
    with pytest.raises(DatasetError, match=rf"{bad}:3"):
        prep_in(imagenet, tmp_path / "p", classes=None, class_list=bad)
    assert not (tmp_path / "p").exists()


def test_undecodable_image_is_named_and_nothing_is_left(imagenet, tmp_path):
    broken = imagenet / WNIDS[1] / "zz_broken.JPEG"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    parent = tmp_path / "prep"
    parent.mkdir()
    for workers in (1, 2):
        with pytest.raises(DatasetError, match="zz_broken.JPEG"):
            prep_in(imagenet, parent / "in100", workers=workers)
        assert dataset_dirs(parent) == []  # neither the dataset nor its temporary dir


def test_split_sizes_larger_than_data(imagenet, tmp_path):
    with pytest.raises(DatasetError, match=str(imagenet)):
        prep_in(imagenet, tmp_path / "p", test_size=25, val_size=10)
    for f in sorted((imagenet / WNIDS[0]).iterdir())[:5]:
        f.unlink()
    with pytest.raises(DatasetError, match="needs 6 rows of class 0"):  # 5 are there
        prep_in(imagenet, tmp_path / "p", test_size=18, val_size=0)
    assert not (tmp_path / "p").exists()


def test_existing_output_kept_unless_overwrite(imagenet, tmp_path):
    out = prep_in(imagenet, tmp_path / "p", seed=0)
    before = (out / "test_index.txt").read_text()
    with pytest.raises(DatasetError, match="already exists"):
        prep_in(imagenet, out, seed=1)
    assert (out / "test_index.txt").read_text() == before
    prep_in(imagenet, out, seed=1, overwrite=True)
    assert (out / "test_index.txt").read_text() != before
    assert dataset_dirs(tmp_path) == ["ilsvrc", "p"]


# ----------------------------------------------------------------------------- ODIR


@pytest.fixture()
def odir(tmp_path):
    """20 fundus stand-ins with a Kaggle-style per-image CSV (filename, labels, target)."""
    images = tmp_path / "preprocessed_images"
    images.mkdir()
    lines = ["ID,filename,labels,target"]
    for i in range(20):
        name = f"{i // 2}_{'left' if i % 2 else 'right'}.jpg"
        cat = i % 4  # N, D, G, C
        solid(images / name, (cat * 60, 100, 150), size=(30, 30))
        onehot = [0] * 8
        onehot[cat] = 1
        lines.append(f"{i // 2},{name},['{CATEGORIES[cat]}'],\"{onehot}\"")
    csv = tmp_path / "full_df.csv"
    csv.write_text("\n".join(lines) + "\n")
    return images, csv


def test_odir_per_image_csv(odir, tmp_path):
    images, csv = odir
    out = prepare_odir(images, csv, tmp_path / "odir", resolution=RES, workers=1, progress=False)
    sizes = {s: len(PreparedImages(out, s)) for s in ("train", "test", "val")}
    assert sizes == {"train": 14, "test": 4, "val": 2}
    for split in sizes:
        ds = PreparedImages(out, split)
        for row, name in enumerate(ds.index()):
            i = 2 * int(name.split("_")[0]) + (name.endswith("left.jpg"))
            assert ds.labels[row] == i % 4
            want = np.array([(i % 4) * 60, 100, 150])
            assert np.abs(ds.images[row].astype(int) - want).max() <= 3  # JPEG, solid colour
    meta = PreparedImages(out, "test").meta
    assert meta["classes"] == list(CATEGORIES) and meta["source"]["images_used"] == 20
    # the one-hot target column gives the same labels
    out2 = prepare_odir(images, csv, tmp_path / "odir2", label_column="target",
                        resolution=RES, workers=1, progress=False)
    for split in sizes:
        assert (out / f"{split}_index.txt").read_text() == (out2 / f"{split}_index.txt").read_text()
        name = f"{split}_labels.npy"
        assert np.array_equal(np.load(out / name), np.load(out2 / name))


def test_odir_errors(odir, tmp_path):
    images, csv = odir
    kw = {"resolution": RES, "workers": 1, "progress": False}
    with pytest.raises(DatasetError, match=rf"{csv}.*no column 'diagnosis'"):
        prepare_odir(images, csv, tmp_path / "o", label_column="diagnosis", **kw)
    with pytest.raises(DatasetError, match=str(tmp_path / "nope.csv")):
        prepare_odir(images, tmp_path / "nope.csv", tmp_path / "o", **kw)
    with pytest.raises(DatasetError, match=str(tmp_path / "no_images")):
        prepare_odir(tmp_path / "no_images", csv, tmp_path / "o", **kw)
    (images / "3_left.jpg").unlink()
    with pytest.raises(DatasetError, match=r"3_left\.jpg"):
        prepare_odir(images, csv, tmp_path / "o", **kw)
    out = prepare_odir(images, csv, tmp_path / "o", skip_missing=True, **kw)
    assert PreparedImages(out, "test").meta["source"]["images_used"] == 19
    (images / "4_left.jpg").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"4_left\.jpg"):
        prepare_odir(images, csv, tmp_path / "o2", skip_missing=True, **kw)
    bad = tmp_path / "bad.csv"
    bad.write_text("filename,labels\n0_right.jpg,['Z']\n")
    with pytest.raises(DatasetError, match=rf"{bad} row 2"):
        prepare_odir(images, bad, tmp_path / "o3", **kw)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".o", "o"))) == ["o"]


def test_odir_per_patient_keywords(tmp_path):
    images = tmp_path / "img"
    images.mkdir()
    rows = ["ID,Left-Fundus,Right-Fundus,Left-Diagnostic Keywords,Right-Diagnostic Keywords"]
    kws = [("normal fundus", "moderate non proliferative retinopathy"),
           ("glaucoma，lens dust", "cataract"),
           ("wet age-related macular degeneration", "hypertensive retinopathy"),
           ("pathological myopia", "drusen"),
           ("low image quality", "normal fundus")]
    for pid, (left, right) in enumerate(kws * 2):
        for side in ("left", "right"):
            solid(images / f"{pid}_{side}.jpg", (pid, 0, 0))
        rows.append(f'{pid},{pid}_left.jpg,{pid}_right.jpg,"{left}","{right}"')
    sheet = tmp_path / "odir_patients.csv"
    sheet.write_text("\n".join(rows) + "\n")
    out = prepare_odir(images, sheet, tmp_path / "o", annotation_format="per_patient",
                       stratify=None, resolution=RES, workers=1, progress=False)
    got = {}
    for split in ("train", "val", "test"):
        ds = PreparedImages(out, split)
        got.update({n: CATEGORIES[int(y)] for n, y in zip(ds.index(), ds.labels)})
    assert got["0_left.jpg"] == "N" and got["0_right.jpg"] == "D"
    assert got["1_left.jpg"] == "G" and got["1_right.jpg"] == "C"
    assert got["2_left.jpg"] == "A" and got["2_right.jpg"] == "H"
    assert got["3_left.jpg"] == "M" and got["3_right.jpg"] == "O"
    assert "4_left.jpg" not in got and got["4_right.jpg"] == "N"  # quality-only eye left out
    assert ds.meta["source"]["left_out_quality_only"] == 2 and len(got) == 18


def test_label_cells():
    assert parse_label_cell("['N']", "x") == ["N"]
    assert parse_label_cell("[0, 0, 1, 0, 0, 0, 0, 0]", "x") == ["G"]
    assert parse_label_cell("cataract", "x") == ["C"]
    assert parse_label_cell(7, "x") == ["O"]
    assert keyword_categories("lens dust，normal fundus") == ["N"]


# ------------------------------------------------------------------ splits, digits, CIFAR


def test_split_indices_modes():
    labels = np.repeat(np.arange(4), [40, 30, 20, 10])
    eq = split_indices(labels, {"train": None, "test": 20}, seed=0, stratify="equal")
    assert np.bincount(labels[eq["test"]]).tolist() == [5, 5, 5, 5]
    prop = split_indices(labels, {"train": None, "test": 20}, seed=0, stratify="proportional")
    assert np.bincount(labels[prop["test"]]).tolist() == [8, 6, 4, 2]
    flat = split_indices(labels, {"train": None, "val": 10, "test": 20}, seed=0, stratify=None)
    allrows = np.concatenate(list(flat.values()))
    assert sorted(allrows.tolist()) == list(range(100))
    with pytest.raises(DatasetError, match="ask for 120"):
        split_indices(labels, {"train": None, "test": 120}, seed=0, where="here")


def test_digits_offline(tmp_path):
    out = PREPARERS["digits"](tmp_path / "digits")
    sizes = {s: len(PreparedImages(out, s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 1258, "val": 180, "test": 359}
    ds = PreparedImages(out, "train")
    assert ds.images.shape[1:] == (32, 32, 3)
    assert (ds.images[..., 0] == ds.images[..., 2]).all()  # gray in three channels
    again = prepare_digits(tmp_path / "again")
    assert (out / "test_index.txt").read_text() == (again / "test_index.txt").read_text()
    other = prepare_digits(tmp_path / "other", seed=1, resolution=16)
    assert (out / "test_index.txt").read_text() != (other / "test_index.txt").read_text()
    assert PreparedImages(other, "val").images.shape[1:] == (16, 16, 3)


def test_cifar10_missing_root_without_download(tmp_path):
    with pytest.raises(DatasetError, match=rf"{tmp_path / 'cifar'}.*cifar-10-batches-py"):
        prepare_cifar10(tmp_path / "cifar", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cifar10_from_torchvision_layout(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # fake files, no md5
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    def batch(name, n, offset):
        labels = [(offset + k) % 10 for k in range(n)]
        data = np.stack([np.full(3072, 10 * l + 3, np.uint8) for l in labels])
        with open(folder / name, "wb") as fh:
            pickle.dump({"data": data, "labels": labels}, fh)

    for b in range(1, 6):
        batch(f"data_batch_{b}", 20, b)
    batch("test_batch", 30, 0)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{k}" for k in range(10)]}, fh)
    out = prepare_cifar10(tmp_path / "cifar", tmp_path / "out", val_size=10, progress=False)
    sizes = {s: len(PreparedImages(out, s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 90, "val": 10, "test": 30}
    for split in sizes:
        ds = PreparedImages(out, split)
        assert (ds.images == (10 * ds.labels + 3)[:, None, None, None]).all()
        assert all(s.startswith("test:" if split == "test" else "train:") for s in ds.index())
    assert ds.meta["classes"][0] == "c0"
