"""Images/s: the prepared memmap batch reader vs torchvision ImageFolder + DataLoader.

Writes ``--images`` random-texture JPEGs (``--res`` square, ImageFolder layout, 10
classes) to a temporary directory, prepares them once with the ImageNet-100 preparer,
then times full shuffled epochs of

- ``memmap``: ``PreparedImages.batches`` in the main process (sorted fancy index per batch);
- ``memmap+DL``: the same batches fetched through a DataLoader with ``--workers`` workers;
- ``ImageFolder``: ImageFolder + Resize + CenterCrop + ToTensor + Normalize to [-1, 1],
  DataLoader with 0 and with ``--workers`` workers.

Every path yields float B x 3 x H x W in [-1, 1] plus labels. DataLoaders keep their
workers between epochs (persistent_workers), so worker start-up falls in the first
epoch only; the best epoch of ``--epochs`` counts (page cache warm for both: the JPEGs
were just written). Run::

    python benchmarks/bench_dataloading.py --images 2000 --workers 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler

from vqshrink.data.imagenet100 import prepare_imagenet100
from vqshrink.data.prepared import PreparedImages


def write_jpegs(root: Path, n: int, res: int, classes: list[str], seed: int = 0) -> None:
    """``n`` smooth-plus-noise RGB JPEGs (quality 90), spread over ``classes`` folders."""
    rng = np.random.default_rng(seed)
    for wnid in classes:
        (root / wnid).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        img = Image.fromarray(coarse).resize((res, res), Image.Resampling.BICUBIC)
        arr = np.asarray(img, dtype=np.int16) + rng.integers(-12, 13, (res, res, 3))
        out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
        out.save(root / classes[i % len(classes)] / f"img_{i:05d}.JPEG", quality=90)


class _BatchView(Dataset):
    """Lets a DataLoader fetch whole memmap batches: index = a list of rows."""

    def __init__(self, ds: PreparedImages) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.ds.get_batch(rows)


def time_epochs(make_iter: Callable[[int], Iterable], n: int, epochs: int) -> float:
    """Best images/s over ``epochs`` full passes (each pass must yield all ``n`` images)."""
    best = 0.0
    for epoch in range(epochs):
        start = time.perf_counter()
        seen = 0
        for x, y in make_iter(epoch):
            assert x.dtype == torch.float32 and x.shape[1] == 3
            seen += len(y)
        elapsed = time.perf_counter() - start
        assert seen == n, (seen, n)
        best = max(best, n / elapsed)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--res", type=int, default=128)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()

    from torchvision import datasets, transforms

    torch.set_num_threads(1)
    classes = [f"n{k:08d}" for k in range(10)]
    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "jpeg", Path(tmp) / "prepared"
        write_jpegs(src, args.images, args.res, classes)
        start = time.perf_counter()
        prepare_imagenet100(src, out, classes=classes, resolution=args.res, test_size=0,
                            val_size=0, workers=args.workers, progress=False)
        prep_s = time.perf_counter() - start
        ds = PreparedImages(out, "train")
        n = len(ds)

        def memmap(epoch: int) -> Iterable:
            return ds.batches(args.batch, shuffle=True, seed=epoch)

        sampler = BatchSampler(
            RandomSampler(range(n), generator=torch.Generator().manual_seed(0)), args.batch, False
        )
        mm_loader = DataLoader(_BatchView(ds), batch_size=None, sampler=sampler,
                               num_workers=args.workers, persistent_workers=args.workers > 0)

        tf = transforms.Compose([
            transforms.Resize(args.res, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(args.res),
            transforms.ToTensor(),
            transforms.Normalize([0.5] * 3, [0.5] * 3),
        ])
        folder = datasets.ImageFolder(str(src), transform=tf)

        def image_folder(workers: int) -> Callable[[int], Iterable]:
            loader = DataLoader(folder, batch_size=args.batch, shuffle=True,
                                num_workers=workers, persistent_workers=workers > 0)
            return lambda epoch: loader

        rates = {
            "memmap (main process)": time_epochs(memmap, n, args.epochs),
            f"memmap+DL ({args.workers} workers)": time_epochs(lambda e: mm_loader, n, args.epochs),
            "ImageFolder+DL (0 workers)": time_epochs(image_folder(0), n, args.epochs),
            f"ImageFolder+DL ({args.workers} workers)":
                time_epochs(image_folder(args.workers), n, args.epochs),
        }
    print(f"{n} JPEGs {args.res}x{args.res}, batch {args.batch}, best of {args.epochs} epochs, "
          f"torch threads 1, {args.workers} workers")
    print(f"one-time preparation ({args.workers} workers): {prep_s:.2f} s "
          f"({n / prep_s:.0f} images/s)")
    for name, rate in rates.items():
        print(f"  {name:32s} {rate:10.0f} images/s")
    mm, mm_dl = rates["memmap (main process)"], rates[f"memmap+DL ({args.workers} workers)"]
    f0 = rates["ImageFolder+DL (0 workers)"]
    fw = rates[f"ImageFolder+DL ({args.workers} workers)"]
    print(f"ratio memmap / ImageFolder, 0 workers each: {mm / f0:.1f}x")
    print(f"ratio memmap+DL / ImageFolder, {args.workers} workers each: {mm_dl / fw:.1f}x")
    print(f"ratio memmap (main process) / ImageFolder ({args.workers} workers): {mm / fw:.1f}x")


if __name__ == "__main__":
    main()
