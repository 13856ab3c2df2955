"""Image data of the tokenizer and generator experiments (paper Sec. 6.1; the CIFAR-10
codebook-size sweep of Fig. 4, older version Sec. 5.2): the ``prepare_data`` stage, which
decodes, resizes and splits one image dataset into a prepared dataset
(:mod:`vqshrink.data.prepared`); :func:`_images`, one split of it; and :func:`to_uint8`, model
outputs in [-1, 1] back to uint8 images.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import Tensor

from vqshrink.data import PREPARERS
from vqshrink.data.prepared import PreparedImages
from vqshrink.stages import stage

log = logging.getLogger(__name__)


@stage
def prepare_data(*, data: str, settings: dict, preset: str, root: str | None = None,
                 class_list: str | None = None, image_dir: str | None = None,
                 annotation: str | None = None) -> None:
    """Decode, resize and split one image dataset into ``data`` (vqshrink.data.prepared)."""
    name = settings["name"]
    common = {"overwrite": True, "progress": True, "seed": settings["seed"]}
    if name == "imagenet100":
        PREPARERS[name](root, data, class_list=class_list, resolution=settings["resolution"],
                        test_size=settings["test_size"], val_size=settings["val_size"],
                        workers=settings["workers"], **common)
    elif name == "odir":
        PREPARERS[name](image_dir, annotation, data,
                        annotation_format=settings["annotation_format"],
                        filename_column=settings["filename_column"],
                        label_column=settings["label_column"],
                        multi_label=settings["multi_label"], fractions=settings["fractions"],
                        resolution=settings["resolution"], workers=settings["workers"], **common)
    elif name == "cifar10":
        PREPARERS[name](settings["root"], data, download=settings["download"],
                        val_size=settings["val_size"], **common)
    elif name == "digits":
        PREPARERS[name](data, resolution=settings["resolution"], **common)
    else:
        raise ValueError(f"unknown image dataset {name!r}; known: {sorted(PREPARERS)}")
    meta = PreparedImages(data, "train").meta
    log.info("prepared %s: %s at %d px", name, meta["split_sizes"], meta["resolution"])


def _images(data: str, split: str) -> PreparedImages:
    return PreparedImages(data, split)


def to_uint8(x: Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3), rounded."""
    y = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return y.permute(0, 2, 3, 1).cpu().numpy()
