"""Stages of the token-based generators (paper Sec. 6.1, 6.3, App. A.1, A.3-A.5).

Per run ``results/generators/{dataset}/{generator}/{variant}/{schedule}/``::

    tokenizer tokens (train/val) -> train      (class-conditional MaskGIT | VAR | LlamaGen)
                                 -> sample     (a fixed, seeded number per class; uint8 images)
                                 -> evaluate   (g-FID vs the test split, pixel distance,
                                                LPIPS diversity)

The generator never sees images: it trains on the token maps that
``tokenizer_eval.extract_tokens`` wrote, and its samples are decoded by the same tokenizer. VAR
reads continuous teacher-forcing inputs from the tokenizer's multi-scale quantizer, which it
keeps as a frozen submodule.

Training (App. A.1: ReduceLROnPlateau and early stopping) is resumable at step granularity
like the tokenizers': the epoch's batch order is a function of (seed, epoch), and the global
torch RNG (masks, class dropout, dropout) is re-seeded from (seed, step, rank) before every
step, so a resumed run reproduces the uninterrupted one. Under DDP every rank draws the same
global batch and trains on its slice; validation runs on rank 0 and is broadcast. The weights
of the evaluation with the lowest validation loss go downstream (``checkpoint:
best_val_loss``; ``final`` keeps the last ones).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from vqshrink import distributed
from vqshrink.data.prepared import PreparedImages, largest_remainder, read_meta
from vqshrink.io import atomic_path, load_json, run_record, save_json
from vqshrink.metrics import diversity
from vqshrink.metrics import fid as fidm
from vqshrink.models.generator_registry import build_generator, load_generator, save_generator
from vqshrink.models.registry import load_model
from vqshrink.plan.schedule import epochs_to_steps
from vqshrink.stages import stage
from vqshrink.stages.data import to_uint8
from vqshrink.stages.metric_nets import lpips_label, make_extractor, make_lpips
from vqshrink.training import (
    Loop,
    ShuffledRows,
    fit,
    pick_device,
    progress,
    seed_everything,
)

log = logging.getLogger(__name__)


class TokenSet:
    """One split of a tokenizer's token maps with the dataset's labels, in memory.
    ``exported``: the cap the token maps were exported with (tokenizers.tokens.max_images;
    None: every image of the split), so the maps are the labels' first rows."""

    def __init__(self, tokens: str, labels: str, limit: int | None = None,
                 num_classes: int | None = None, exported: int | None = None) -> None:
        t = np.load(tokens, mmap_mode="r")
        y = np.load(labels)
        if len(t) != (len(y) if exported is None else min(exported, len(y))):
            cap = "" if exported is None else f" (exported with max_images {exported})"
            raise ValueError(f"{tokens}: {len(t)} token maps{cap} but {labels} has "
                             f"{len(y)} labels")
        y = y[:len(t)]
        # checked here once: the models check labels on an accelerator without a host read
        if num_classes is not None and len(y) and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{labels}: labels lie in [{y.min()}, {y.max()}], outside the "
                             f"dataset's {num_classes} classes [0, {num_classes})")
        n = len(t) if limit is None else min(limit, len(t))
        self.tokens = torch.from_numpy(np.asarray(t[:n]).astype(np.int64))
        self.labels = torch.from_numpy(y[:n].astype(np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, rows: np.ndarray, device: torch.device) -> tuple[Tensor, Tensor]:
        idx = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        return self.tokens[idx].to(device), self.labels[idx].to(device)


def step_seed(seed: int, step: int, rank: int) -> int:
    """The global-RNG seed of one training step (masks, class dropout, dropout)."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only, not on biases, norms and gains (nanoGPT, VAR), nor on
    the parameters a model names in ``NO_WEIGHT_DECAY`` (a parameter is exempt when one of
    the dot-separated parts of its name is listed; VAR: position / level embeddings and the
    attention scale, as VAR ``utils/lr_control.py`` ``filter_params``)."""
    exempt_names = set(getattr(model, "NO_WEIGHT_DECAY", ()))
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = p.ndim < 2 or name.endswith("bias") or exempt_names & set(name.split("."))
        (no_decay if exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


# =============================================================================== training


@torch.no_grad()
def _validate(model: nn.Module, val: TokenSet, *, batch_size: int, seed: int, device: torch.device,
              amp: bool) -> tuple[float, float]:
    """Mean loss and accuracy on the val tokens, the same masks / dropouts every time."""
    was_training = model.training
    model.eval()
    sums = np.zeros(3)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in range(0, len(val), batch_size):
            tokens, labels = val.batch(np.arange(start, min(start + batch_size, len(val))), device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = model(tokens, labels)
            sums += np.array([out["loss"].float().item(), out["acc"].float().item(), 1.0]) * len(tokens)
    model.train(was_training)
    return sums[0] / sums[2], sums[1] / sums[2]


@stage
def train(*, tokens_train: str, tokens_val: str, meta: str, tokenizer: str, model: str,
          curve: str, record: str, settings: dict, preset: str, state_dir: str,
          checkpoint_interval_s: float = 60.0) -> None:
    """Train a class-conditional generator on a tokenizer's token maps (module docstring)."""
    import pandas as pd

    tr, opt_cfg, family = settings["training"], settings["optimizer"], settings["family"]
    device = pick_device(tr["device"])
    info = distributed.setup(device)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    tok_meta = load_json(meta)
    data = tok_meta["data"]
    num_classes = len(read_meta(data)["classes"])
    tok, tok_blob = load_model(tokenizer, "cpu")
    seed_everything(tr["seed"])  # the initial weights are a function of the seed
    net, cfg = build_generator(family, settings["model"], tokenizer=tok, num_classes=num_classes,
                               token_shape=tok_meta["shapes"]["train"][1:],
                               vocab_size=tok_meta["codebook_size"])
    net.to(device)
    # training.train_images: a budget cap on the train token maps used (null: all; smoke)
    exported = tok_meta["settings"].get("max_images")
    train_set = TokenSet(tokens_train, tok_meta["labels"]["train"],
                         limit=tr.get("train_images"), num_classes=num_classes,
                         exported=exported)
    val_set = TokenSet(tokens_val, tok_meta["labels"]["val"], limit=tr["val_images"],
                       num_classes=num_classes, exported=exported)
    amp = tr["amp"] == "bf16" and device.type == "cuda"
    if tr["compile"] and device.type == "cuda":
        net.compile()
    ddp = DistributedDataParallel(net, broadcast_buffers=False) if info.enabled else net
    opt = torch.optim.AdamW(param_groups(net, opt_cfg["weight_decay"]), lr=opt_cfg["lr"],
                            betas=tuple(opt_cfg["betas"]))
    plateau = None
    if tr["scheduler"] == "plateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=tr["plateau_factor"], patience=tr["plateau_patience"],
            min_lr=tr["min_lr"])

    n, bs, epochs, seed = len(train_set), opt_cfg["batch_size"], tr["epochs"], tr["seed"]
    steps_per_epoch = n // bs
    if steps_per_epoch < 1:
        raise ValueError(f"generator {family}: config key generators.models.{family}.optimizer."
                         f"batch_size {bs} is larger than the training split ({n} token maps)")
    # warm-up in epochs of this training split (VAR utils/arg_util.py: wp = ep / 50 epochs)
    warmup = epochs_to_steps(opt_cfg["warmup_epochs"], steps_per_epoch)
    what = f"{family} on {Path(tokens_train).parent}"
    inputs = {"tokens_train": tokens_train, "tokens_val": tokens_val, "meta": meta,
              "tokenizer": tokenizer, "labels_train": tok_meta["labels"]["train"],
              "labels_val": tok_meta["labels"]["val"]}

    def train_step(rows: np.ndarray, local: np.ndarray, step: int, epoch: int) -> tuple:
        tokens, labels = train_set.batch(local, device)
        if step < warmup:  # linear warm-up, then the plateau schedule
            for g in opt.param_groups:
                g["lr"] = opt_cfg["lr"] * (step + 1) / warmup
        torch.manual_seed(step_seed(seed, step, info.rank))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = ddp(tokens, labels)
        loss = out["loss"].float()
        opt.zero_grad(set_to_none=True)
        (loss * (len(local) * info.world_size / len(rows))).backward()
        if opt_cfg["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(net.parameters(), opt_cfg["grad_clip"])
        opt.step()
        return loss, out["acc"].float()

    def validate() -> list[float]:
        return list(_validate(net, val_set, batch_size=bs, seed=seed, device=device, amp=amp))

    loop = Loop(what=what, model=net, optimizers={"adamw": opt}, plateau=plateau,
                order=ShuffledRows(n, bs, seed), epochs=epochs, step=train_step,
                names=("loss", "acc"), validate=validate, val_names=("val_loss", "val_acc"),
                eval_every=tr["eval_every_epochs"], monitor="val_loss",
                patience=tr["early_stopping_patience"], plateau_from=warmup,
                keep_best="improved")
    fitted = fit(loop, state_dir=state_dir, settings=settings, inputs=inputs,
                 checkpoint_interval_s=checkpoint_interval_s, device=device, info=info)

    if info.is_main:
        best, chosen = fitted.best, "final"
        if tr["checkpoint"] == "best_val_loss" and best is not None:
            net.load_state_dict(best["model"])
            chosen = f"best validation loss (epoch {best['epoch']}, {best['value']:.4g})"
        save_generator(net, family, cfg, model, tokenizer=tokenizer, checkpoint=chosen)
        with atomic_path(curve) as tmp:
            pd.DataFrame(fitted.curve).to_csv(tmp, index=False)
        save_json(run_record(preset, settings, epochs_run=len(fitted.curve), steps=fitted.steps,
                             stopped_early=fitted.stopped_early, checkpoint=chosen,
                             parameters=sum(p.numel() for p in net.parameters()
                                            if p.requires_grad),
                             num_classes=num_classes, tokenizer=tokenizer,
                             train_images=len(train_set),
                             codebook_size=tok_meta["codebook_size"],
                             tokens_per_image=int(np.prod(tok_meta["shapes"]["train"][1:])),
                             tokenizer_loss=tok_blob.get("training_loss")), record)
        fitted.state.path.unlink(missing_ok=True)
    distributed.teardown()


# =============================================================================== sampling


def sample_labels(test_labels: np.ndarray, num_classes: int, per_class: int, *,
                  seed: int) -> np.ndarray:
    """Class of every sample, sorted by class: ``num_classes x per_class`` labels in the test
    split's class proportions, so the samples' class mix is that of the FID reference (ODIR's
    test split is imbalanced; a balanced split gives exactly ``per_class`` of each class).
    Largest-remainder rounding; ties broken by ``seed``."""
    counts = np.bincount(np.asarray(test_labels, dtype=np.int64), minlength=num_classes)
    if len(counts) > num_classes or counts.sum() == 0:
        raise ValueError(f"test labels hold classes 0..{len(counts) - 1} ({counts.sum()} labels) "
                         f"but the generator has {num_classes} classes")
    total = num_classes * per_class
    quota = largest_remainder(total * counts / counts.sum(), total, np.random.default_rng(seed))
    return np.repeat(np.arange(num_classes, dtype=np.int64), quota)


def capped_labels(labels: np.ndarray, cap: int | None) -> np.ndarray:
    """At most ``cap`` of the class-sorted ``labels`` (null: all), evenly spaced over them so
    the classes stay spread (samples.max_images: a budget cap, null at paper scale)."""
    if cap is None or cap >= len(labels):
        return labels
    return labels[np.round(np.linspace(0, len(labels) - 1, cap)).astype(np.int64)]


def class_grid(images: np.ndarray, labels: np.ndarray, classes: int, per_class: int
               ) -> np.ndarray:
    """One uint8 image of the first ``per_class`` samples of each of the first ``classes``
    classes, a row per class (short rows padded with black)."""
    rows = []
    for c in np.unique(labels)[:classes]:
        rows.append(np.concatenate(list(images[np.flatnonzero(labels == c)[:per_class]]), 1))
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows])


def save_grid(path: str, images: np.ndarray, labels: np.ndarray, classes: int,
              per_class: int) -> None:
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(class_grid(images, labels, classes, per_class)).save(tmp, format="PNG")


@stage
def sample(*, model: str, tokenizer: str, data: str, images: str, labels: str, tokens: str,
           grid: str, record: str, settings: dict, preset: str) -> None:
    """Seeded samples, ``per_class`` x classes in the class proportions of ``data``'s test
    split (:func:`sample_labels`), decoded by the tokenizer: uint8 (N, H, W, 3) images, their
    labels and tokens, and a grid PNG. Batch b draws from a generator seeded by (seed, b):
    the same settings give the same images."""
    device = pick_device(settings["device"])
    gen, tok, blob = load_generator(model, tokenizer, device)
    gen.eval()
    tok.eval()
    num_classes = blob["config"]["num_classes"]
    ys = sample_labels(PreparedImages(data, "test").labels, num_classes, settings["per_class"],
                       seed=settings["seed"])
    ys = capped_labels(ys, settings.get("max_images"))
    bs = settings["batch_size"]
    img_arr = tok_arr = None
    with atomic_path(images) as img_tmp, atomic_path(tokens) as tok_tmp:
        for b, start in enumerate(progress(range(0, len(ys), bs), desc="sample", unit="batch")):
            y = torch.from_numpy(ys[start:start + bs]).to(device)
            g = torch.Generator(device).manual_seed(step_seed(settings["seed"], b, 0))
            t = gen.sample(y, generator=g, **settings["sampling"])
            x = to_uint8(tok.decode_tokens(t))
            t = t.cpu().numpy()
            if img_arr is None:
                img_arr = np.lib.format.open_memmap(img_tmp, mode="w+", dtype=np.uint8,
                                                    shape=(len(ys), *x.shape[1:]))
                tok_arr = np.lib.format.open_memmap(tok_tmp, mode="w+", dtype=np.int32,
                                                    shape=(len(ys), *t.shape[1:]))
            img_arr[start:start + len(x)] = x
            tok_arr[start:start + len(t)] = t
        img_arr.flush()
        tok_arr.flush()
        out = np.asarray(img_arr)
        del img_arr, tok_arr
    with atomic_path(labels) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, ys)
    save_grid(grid, out, ys, settings["grid"]["classes"], settings["grid"]["per_class"])
    save_json(run_record(preset, settings, samples=len(ys), num_classes=num_classes,
                         class_counts=np.bincount(ys, minlength=num_classes).tolist(),
                         generator=model, tokenizer=tokenizer,
                         generator_checkpoint=blob.get("checkpoint")), record)
    log.info("sampled %d images (%d classes, per class %s, the test split's proportions) of "
             "shape %s", len(ys), num_classes, np.bincount(ys, minlength=num_classes).tolist(),
             out.shape[1:])


# =============================================================================== evaluation


@stage
def evaluate(*, images: str, labels: str, ref: str, metrics: str, settings: dict, preset: str,
             classifier: str | None = None, weights_dir: str | None = None) -> None:
    """Generation metrics: g-FID against the test split's reference statistics, mean pairwise
    pixel distance (all samples) and LPIPS diversity (a seeded subset of ``lpips_images``, or
    all), both exact over every pair (:mod:`vqshrink.metrics.diversity`)."""
    device = pick_device(settings["device"])
    imgs = np.load(images, mmap_mode="r")
    n = len(imgs)
    extractor = make_extractor(settings["fid"], classifier=classifier, weights_dir=weights_dir,
                               device=device)
    stats = fidm.feature_statistics(imgs, extractor, batch_size=settings["batch_size"])
    res = fidm.fid_from_stats(stats, fidm.load_statistics(ref))
    pixel = diversity.mean_pairwise_pixel_distance(
        np.asarray(imgs), norm=settings["pixel_norm"], scale=settings["pixel_scale"],
        device=device)
    k = settings["lpips_images"]
    subset = np.arange(n) if k is None or k >= n else \
        np.sort(np.random.default_rng(settings["seed"]).choice(n, size=k, replace=False))
    lp = settings["lpips"]
    lpips_model = make_lpips(lp, weights_dir=weights_dir, device=device)
    lpips_div = diversity.mean_pairwise_lpips(np.asarray(imgs[subset]), lpips_model,
                                              batch_size=settings["batch_size"])
    values = {
        "gfid": res["fid"], "fid_feature_net": res["feature_net"],
        "fid_substitute": res["substitute"], "fid_reference_images": res["n_ref"],
        "pixel_distance": pixel, "pixel_norm": settings["pixel_norm"],
        "pixel_scale": settings["pixel_scale"],
        "lpips_diversity": lpips_div, "lpips_backbone": lpips_label(lp["net"], lp["pretrained"]),
        "lpips_images": int(len(subset)), "samples": int(n),
        "classes": int(len(np.unique(np.load(labels)))),
    }
    save_json({"settings": settings, "preset": preset, "metrics": values,
               "samples": images}, metrics)
    log.info("generation metrics of %s: g-FID %.4g, pixel distance %.4g, LPIPS diversity %.4g",
             images, values["gfid"], pixel, lpips_div)
