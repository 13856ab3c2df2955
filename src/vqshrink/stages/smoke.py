"""The smoke preset's source data (:mod:`vqshrink.data.smoke_sources`): generated, never
downloaded or checked in, in the layouts the real preparation reads."""

from __future__ import annotations

import logging

from vqshrink.data import smoke_sources as ss
from vqshrink.data.imagenet100 import read_class_list
from vqshrink.stages import stage

log = logging.getLogger(__name__)


@stage
def smoke_sources(*, class_list: str, imagenet100: str, odir_images: str, odir_annotation: str,
                  cifar10: str, settings: dict, preset: str) -> None:
    """An ILSVRC-style train tree of the class list's wnids, ODIR images with a Kaggle-style
    full_df.csv, and CIFAR-10 python batches, each seeded by ``settings["seed"]``."""
    seed = settings["seed"]
    wnids = read_class_list(class_list)
    ss.make_imagenet_tree(imagenet100, wnids, per_class=settings["imagenet100_per_class"],
                          seed=seed)
    ss.make_odir(odir_images, odir_annotation, images=settings["odir_images"], seed=seed + 1)
    ss.make_cifar10(cifar10, per_batch=settings["cifar10_per_batch"],
                    test_images=settings["cifar10_test_images"], seed=seed + 2)
    log.info("smoke sources (preset %s): %d wnids x %d JPEGs, %d ODIR images, CIFAR-10 5 x %d "
             "train + %d test", preset, len(wnids), settings["imagenet100_per_class"],
             settings["odir_images"], settings["cifar10_per_batch"],
             settings["cifar10_test_images"])
