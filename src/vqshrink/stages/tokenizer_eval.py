"""Evaluation of a trained image tokenizer and export of its tokens (paper Sec. 6.1-6.3, Fig. 4):
``evaluate`` measures r-FID, MSE and LPIPS of the reconstructions of one split and the
codebook's distance, perplexity, usage and dead codes; ``extract_tokens`` writes the token
maps of every split, the generators' input.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from vqshrink.io import atomic_path, save_json
from vqshrink.metrics import codebook as cbm
from vqshrink.metrics import fid as fidm
from vqshrink.models.registry import load_model
from vqshrink.stages import stage
from vqshrink.stages.data import _images, to_uint8
from vqshrink.stages.metric_nets import lpips_label, make_extractor, make_lpips
from vqshrink.training import pick_device

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


def _save_grid(path: str, originals: np.ndarray, recons: np.ndarray) -> None:
    """Originals (top row) over reconstructions (bottom row), uint8 NHWC, as one PNG."""
    from PIL import Image

    top, bottom = np.concatenate(list(originals), 1), np.concatenate(list(recons), 1)
    with atomic_path(path) as tmp:
        Image.fromarray(np.concatenate([top, bottom], 0)).save(tmp, format="PNG")


@stage
def evaluate(*, data: str, model: str, metrics: str, reconstructions: str, settings: dict,
             preset: str, ref: str | None = None, classifier: str | None = None,
             weights_dir: str | None = None) -> None:
    """Tokenizer metrics on one split: r-FID (against the split's reference statistics), MSE
    and LPIPS of the reconstructions, and the codebook's mean pairwise Euclidean distance,
    perplexity, usage and dead-code fraction over every token of the split (VAR: all scales
    pooled). MSE is on images in [-1, 1], as trained."""
    device = pick_device(settings["device"])
    net, blob = load_model(model, device)
    net.eval()
    ds = _images(data, settings["split"])
    fid, lp = settings["fid"], settings["lpips"]
    extractor = ref_stats = lpips_model = None
    if fid:
        extractor = make_extractor(fid, classifier=classifier, weights_dir=weights_dir,
                                   device=device)
        ref_stats = fidm.load_statistics(ref)
    if lp:
        lpips_model = make_lpips(lp, weights_dir=weights_dir, device=device)
    k = blob["config"]["codebook_size"]
    layout = net.token_layout
    counts = torch.zeros(k, dtype=torch.long)
    sums = np.zeros(3)  # squared error sum, lpips sum, images
    n_pixels = 0
    grid: list[np.ndarray] = []

    def recon_batches() -> Iterator[np.ndarray]:
        nonlocal n_pixels
        with torch.no_grad():
            for x, _ in ds.batches(settings["batch_size"]):
                x = x.to(device)
                out = net(x, quantize=True)
                x_hat = out.x_hat.float()
                sums[0] += (x_hat - x).pow(2).sum().item()
                n_pixels += x.numel()
                if lpips_model is not None:
                    sums[1] += lpips_model(x_hat.clamp(-1, 1), x).sum().item()
                sums[2] += len(x)
                counts.add_(torch.bincount(layout.flat(out.indices).reshape(-1).cpu(),
                                           minlength=k))
                r = to_uint8(x_hat)
                if not grid:
                    grid.extend([to_uint8(x[:8]), r[:8]])
                yield r

    values: dict = {}
    if extractor is not None:
        stats = fidm.feature_statistics(recon_batches(), extractor,
                                        batch_size=settings["batch_size"])
        res = fidm.fid_from_stats(stats, ref_stats)
        values.update(rfid=res["fid"], fid_feature_net=res["feature_net"],
                      fid_substitute=res["substitute"], fid_reference_images=res["n_ref"])
    else:
        for _ in recon_batches():
            pass
        values.update(rfid=None, fid_feature_net=None, fid_substitute=None,
                      fid_reference_images=None)
    codebook = net.quantizer.codebook.detach().float().cpu()
    values.update(
        mse=float(sums[0] / n_pixels),
        lpips=float(sums[1] / sums[2]) if lpips_model is not None else None,
        lpips_backbone=lpips_label(lp["net"], lp["pretrained"]) if lp else None,
        euclidean=cbm.mean_pairwise_distance(codebook),
        perplexity=cbm.perplexity(counts),
        usage=cbm.usage_fraction(counts),
        dead_fraction=cbm.dead_code_fraction(counts),
        codebook_size=k,
        tokens_per_image=int(counts.sum().item() // sums[2]),
        training_loss=blob.get("training_loss"),
        images=int(sums[2]),
        split=settings["split"],
        mse_pixel_range="[-1, 1]",
    )
    _save_grid(reconstructions, grid[0], grid[1])
    save_json({"settings": settings, "preset": preset, "metrics": values,
               "model_record": str(Path(model).with_name("run.json"))}, metrics)
    log.info("eval %s: %s", model, {k: v for k, v in values.items() if isinstance(v, float)})


@stage
def extract_tokens(*, data: str, model: str, tokens_train: str, tokens_val: str,
                   tokens_test: str, meta: str, settings: dict, preset: str) -> None:
    """The token maps of every split, the generators' input: ``(N, h, w)`` for single-scale
    tokenizers, ``(N, L)`` for VAR (its scales small to large, each row-major, concatenated);
    uint16 when the codebook fits, else int32. Labels stay in the prepared dataset; with
    ``settings["max_images"]`` (a budget cap) a split's first rows only, which are the rows
    the generators' caps take."""
    device = pick_device(settings["device"])
    net, blob = load_model(model, device)
    net.eval()
    k = blob["config"]["codebook_size"]
    layout = net.token_layout
    dtype = np.uint16 if k <= 2**16 else np.int32
    shapes = {}
    for split, out in zip(SPLITS, (tokens_train, tokens_val, tokens_test)):
        ds = _images(data, split)
        rows = np.arange(min(len(ds), settings.get("max_images") or len(ds)))
        with atomic_path(out) as tmp:
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype,
                                            shape=(len(rows), *layout.file_shape))
            start = 0
            for x, _ in ds.batches(settings["batch_size"], indices=rows):
                idx = net.encode_tokens(x.to(device)).reshape(len(x), *layout.file_shape)
                arr[start:start + len(idx)] = idx.cpu().numpy().astype(dtype)
                start += len(idx)
            arr.flush()
            shapes[split] = list(arr.shape)
            del arr
    save_json({
        "preset": preset, "settings": settings, "data": data, "model": model,
        "codebook_size": k, "dtype": np.dtype(dtype).name, "shapes": shapes,
        "layout": layout.describe(),
        "patch_nums": list(layout.patch_nums) if layout.patch_nums else None,
        "labels": {s: f"{data}/{s}_labels.npy" for s in SPLITS},
    }, meta)
