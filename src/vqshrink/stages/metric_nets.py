"""The networks behind the image metrics (paper Sec. 6.1-6.3: r-FID, g-FID, LPIPS) and their
stages: the FID feature network (clean-fid Inception, its architecture with random weights, or
the demo's substitute classifier, which ``train_fid_classifier`` trains), the evaluation LPIPS
(a random trunk seeded by :data:`RANDOM_TRUNK_SEED`), the labels that name them in every
result, the real-image FID statistics of a split (``fid_reference``) and the download of the
pretrained weights (``fetch_metric_weights``).
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from vqshrink.io import run_record, save_json
from vqshrink.metrics import fid as fidm
from vqshrink.stages import stage
from vqshrink.stages.data import _images
from vqshrink.training import pick_device
from vqshrink.weights import load_lpips

log = logging.getLogger(__name__)

RANDOM_TRUNK_SEED = 0  # seeds LPIPS's randomly initialised trunk (offline substitute)


def classifier_label(dataset: str) -> str:
    return (f"substitute: SmallClassifier trained on {dataset}/train (DAG stage), "
            "not comparable to paper FID")


def make_extractor(fid: dict, *, classifier: str | None, weights_dir: str | None,
                   device: torch.device) -> fidm.FeatureExtractor:
    """The FID feature network of ``fid`` settings: clean-fid Inception, its architecture with
    random weights, or the substitute classifier."""
    if fid["feature_net"] in ("inception", "inception_random"):
        return fidm.build_extractor(fid["feature_net"], cache_dir=weights_dir, device=device)
    if fid["feature_net"] == "classifier":
        if classifier is None:
            raise ValueError("substitute FID needs the trained classifier (input 'classifier')")
        net = fidm.load_classifier(classifier, device)
        return fidm.substitute_extractor(f"classifier-{fid['dataset']}", net, device=device,
                                         feature_net=classifier_label(fid["dataset"]))
    raise ValueError(f"unknown FID feature net {fid['feature_net']!r}")


def make_lpips(lp: dict, *, weights_dir: str | None, device: torch.device) -> nn.Module:
    """The evaluation LPIPS of ``lp`` settings (net, pretrained); a random trunk is seeded, so
    it is the same network in every run and stage."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_TRUNK_SEED)
        return load_lpips(lp["net"], cache_dir=weights_dir, pnet_rand=not lp["pretrained"],
                          device=device)


def lpips_label(net: str, pretrained: bool) -> str:
    if pretrained:
        return f"lpips v0.1 {net} (ImageNet backbone)"
    return (f"lpips v0.1 {net}, RANDOM backbone (pnet_rand=True, seed {RANDOM_TRUNK_SEED}), "
            "not comparable to paper LPIPS")


@stage
def train_fid_classifier(*, data: str, classifier: str, record: str, settings: dict,
                         preset: str) -> None:
    """The demo's FID feature network: a small classifier trained on the dataset's train split."""
    train, val = _images(data, "train"), _images(data, "val")
    net = fidm.train_classifier(np.asarray(train.images), train.labels, epochs=settings["epochs"],
                                seed=settings["seed"], batch_size=settings["batch_size"],
                                lr=settings["lr"])
    acc = fidm.classifier_accuracy(net, np.asarray(val.images), val.labels)
    fidm.save_classifier(net, classifier)
    log.info("FID substitute classifier: val accuracy %.3f", acc)
    save_json(run_record(preset, settings, val_accuracy=acc,
                         feature_net=classifier_label(settings["dataset"])), record)


@stage
def fid_reference(*, data: str, stats: str, settings: dict, preset: str,
                  classifier: str | None = None, weights_dir: str | None = None) -> None:
    """Real-image FID statistics of one split: computed once, reused by every FID against it."""
    device = pick_device(settings["device"])
    extractor = make_extractor(settings["fid"], classifier=classifier, weights_dir=weights_dir,
                               device=device)
    images = _images(data, settings["split"]).images
    ref = fidm.reference_statistics(images, extractor, batch_size=settings["fid"]["batch_size"])
    fidm.save_statistics(stats, ref)
    log.info("FID reference of %s/%s: %d images, %s", settings["fid"]["dataset"],
             settings["split"], ref.n, ref.feature_net)


@stage
def fetch_metric_weights(*, record: str, settings: dict, preset: str,
                         weights_dir: str | None = None) -> None:
    """Download the pretrained FID / LPIPS weights the config uses into the weight cache
    (``metrics.weights_dir``); meant for a machine with internet (a login node)."""
    from vqshrink.weights import fetch_weights

    nets = settings["lpips_nets"] or [None]
    paths = []
    for i, net in enumerate(nets):
        paths += fetch_weights(weights_dir, fid=settings["fid"] and i == 0, lpips_net=net)
    save_json(run_record(preset, settings, weights_dir=weights_dir,
                         files=sorted({str(p) for p in paths})), record)
