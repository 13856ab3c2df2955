"""Stages of the image-tokenizer experiments (paper Sec. 5, 6.1-6.3, App. A.1, A.4) and of the
CIFAR-10 codebook-size sweep (Fig. 4; older version Sec. 3.1.2, 5.2).

The DAG, per dataset (the one actually used: ``digits`` stands in for every image dataset
in the demo preset)::

    prepare_data -> [fid classifier (substitute FID only)] -> fid_reference (per split)
    prepare_data -> pretrain_ae (deferred only; ONE per dataset and architecture)
                 -> init_codebook (k-means on embeddings of the untrained / pretrained encoder)
                 -> train_vq (from scratch / fine-tuning the AE; optional GAN)
                 -> evaluate (r-FID, MSE, LPIPS, codebook distance, perplexity, dead codes)
                 -> extract_tokens (index maps of every split, for the generators)

The two arms of a comparison differ only in the encoder the k-means runs on: both start
from the same seed, cluster the same number of embeddings (``ratio`` x codebook size, 2:1
for ImageNet-100/ODIR, 10:1 for CIFAR-10, App. A.1) from the same training images, and
train with the same settings; the deferred arm's encoder was first trained as a plain
autoencoder (the same modules without the quantizer) and its VQ phase starts from those
weights.

Training (:func:`_fit`) is resumable at step granularity: the state (weights, optimizers,
scheduler, early-stopping and best-checkpoint bookkeeping, the partial epoch's sums) is
written to ``<state_dir>/last.pt`` at most every ``checkpoint_interval_s`` seconds; the
batch order of an epoch is a function of (seed, epoch), so a resumed epoch skips exactly the
batches already done and reproduces the uninterrupted run. Under DDP (one process per GPU,
:mod:`vqshrink.distributed`) every rank draws the same global batch and trains on its slice;
validation runs on rank 0 and its numbers are broadcast, so every rank takes the same
scheduler / early-stopping decisions. bf16 autocast and ``torch.compile`` of the encoder and
decoder are switched by config and only act on CUDA; CPU runs are float32.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from vqshrink import distributed
from vqshrink.data import PREPARERS
from vqshrink.data.prepared import DatasetError, PreparedImages
from vqshrink.io import atomic_path, load_torch, run_record, save_json, save_npz, save_torch
from vqshrink.kmeans import kmeans
from vqshrink.metrics import codebook as cbm
from vqshrink.metrics import fid as fidm
from vqshrink.models.cifar_vqvae import CifarVQVAE, CifarVQVAEConfig
from vqshrink.models.discriminator import gan_factor
from vqshrink.models.losses import TokenizerLoss
from vqshrink.models.vqgan import Tokenizer, VQGANConfig
from vqshrink.plan.schedule import epochs_to_steps
from vqshrink.quantizers.simvq import ProjectedCodebook
from vqshrink.stages import stage
from vqshrink.training import (
    SYNC_EVERY,
    ResumableState,
    StepLog,
    broadcast_from_main,
    cosine_lr,
    early_stopping_update,
    epoch_order,
    pick_device,
    progress,
    seed_everything,
)
from vqshrink.weights import check_weights, load_lpips, torch_hub_dir

log = logging.getLogger(__name__)

FAMILIES = ("vqgan", "cifar_vqvae")
RANDOM_TRUNK_SEED = 0  # seeds LPIPS's randomly initialised trunk (offline substitute)
SPLITS = ("train", "val", "test")


# =============================================================================== data


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


# =============================================================================== models


def build_model(cfg: dict, *, continuous: bool = False) -> nn.Module:
    """The tokenizer of ``cfg`` (``family`` + its config fields).

    ``continuous=True``: the autoencoder of the deferred schedule's first phase, i.e. the same
    modules with the quantizer removed, so that its weights load into any quantizer variant
    of the same architecture (one pretraining serves them all).
    """
    kwargs = {k: v for k, v in cfg.items() if k != "family"}
    family = cfg["family"]
    if continuous:  # the quantizer is dropped below; build the cheapest one meanwhile
        kwargs = {**kwargs, "codebook_size": 1}
        if family == "vqgan":
            kwargs["quantizer"] = "vq"
    if family == "vqgan":
        model: nn.Module = Tokenizer(VQGANConfig(**kwargs))
    elif family == "cifar_vqvae":
        model = CifarVQVAE(CifarVQVAEConfig(**kwargs))
    else:
        raise ValueError(f"unknown model family {family!r}; known: {FAMILIES}")
    if continuous:
        model.quantizer = None
    return model


def save_model(model: nn.Module, cfg: dict, path: str, **extra) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_torch({"config": cfg, "model": state, **extra}, path)


def load_model(path: str, device: torch.device | str = "cpu") -> tuple[nn.Module, dict]:
    blob = load_torch(path)
    model = build_model(blob["config"], continuous=bool(blob.get("continuous")))
    model.load_state_dict(blob["model"])
    return model.to(device), blob


def load_autoencoder(model: nn.Module, ae_state: dict) -> None:
    """Load a continuous autoencoder's weights into a quantized model of its architecture:
    everything but the quantizer must match exactly."""
    missing, unexpected = model.load_state_dict(ae_state, strict=False)
    foreign = [k for k in missing if not k.startswith("quantizer.")]
    if foreign or unexpected:
        raise ValueError(
            "the autoencoder checkpoint does not fit this tokenizer: "
            f"missing {foreign[:5]}, unexpected {list(unexpected)[:5]} "
            "(architectures differ; pretrain an autoencoder of this architecture)"
        )


def to_uint8(x: Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3), rounded."""
    y = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return y.permute(0, 2, 3, 1).cpu().numpy()


# =============================================================================== metrics nets


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


# =============================================================================== training


def make_loss(loss: dict, *, gan: bool, weights_dir: str | None,
              disc_start_step: int = 0) -> TokenizerLoss:
    """The tokenizer loss; a pretrained LPIPS backbone is read from the weight cache only.
    ``disc_start_step``: the phase's step at which the discriminator starts (from
    ``disc_start_epochs`` and the phase's steps per epoch, :func:`_fit`)."""
    perceptual = loss["perceptual_weight"] > 0
    if perceptual and loss["lpips_pretrained"]:
        check_weights(fid=False, lpips_net=loss["lpips_net"], cache_dir=weights_dir)
    with torch_hub_dir(weights_dir), torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_TRUNK_SEED)  # a random LPIPS trunk is the same in every run
        return TokenizerLoss(
            pixel_weight=loss["pixel_weight"], perceptual_weight=loss["perceptual_weight"],
            codebook_weight=loss["codebook_weight"], lpips_net=loss["lpips_net"],
            pretrained_backbone=loss["lpips_pretrained"], gan=gan,
            disc_start=disc_start_step, disc_weight=loss["disc_weight"],
            adaptive=loss["adaptive"], disc_layers=loss["disc_layers"],
        )


@torch.no_grad()
def _validate(model: nn.Module, loss_fn: TokenizerLoss, val: PreparedImages, *, quantize: bool,
              settings: dict, device: torch.device, amp: bool,
              fid: tuple[fidm.FeatureExtractor, fidm.FeatureStats] | None) -> dict:
    """Reconstruction loss (MSE + LPIPS as in training) and, if asked, FID on the val split."""
    tr = settings["train"]
    rows = np.arange(min(len(val), tr["val_images"] or len(val)))
    was_training = model.training
    model.eval()
    sums = np.zeros(3)
    recon = []
    for x, _ in val.batches(tr["batch_size"], indices=rows):
        x = x.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = model(x, quantize=quantize)
        x_hat = out.x_hat.float()
        mse = (x_hat - x).pow(2).mean().item()
        lp = loss_fn.perceptual(x, x_hat).item()
        sums += np.array([mse, lp, 1.0]) * len(x)
        if fid is not None:
            recon.append(to_uint8(x_hat))
    model.train(was_training)
    n = sums[2]
    lw = settings["loss"]
    out = {"val_mse": sums[0] / n, "val_lpips": sums[1] / n,
           "val_rec": lw["pixel_weight"] * sums[0] / n + lw["perceptual_weight"] * sums[1] / n,
           "val_fid": float("nan")}
    if fid is not None:
        extractor, ref = fid
        out["val_fid"] = fidm.fid_from_images(np.concatenate(recon), ref, extractor,
                                              batch_size=settings["fid"]["batch_size"])["fid"]
    return out


def _fit(model: nn.Module, train: PreparedImages, val: PreparedImages, *, quantize: bool,
         settings: dict, state_dir: str, checkpoint_interval_s: float, what: str,
         inputs: dict[str, str | None], weights_dir: str | None = None,
         fid_inputs: dict | None = None) -> dict:
    """Train ``model`` (resumable, DDP-ready); returns curve, best checkpoint and stop info.

    Loss: :class:`TokenizerLoss` (MSE + LPIPS + codebook/commitment, + hinge PatchGAN after
    ``disc_start_epochs`` of this phase for the GAN variants: the step counter restarts in every
    phase). Optimiser Adam; scheduler per phase: ``plateau``
    (ReduceLROnPlateau on the validation reconstruction loss), ``cosine`` (per step, from lr
    to min_lr, optional linear warm-up) or ``none``; early stopping after
    ``early_stopping_patience`` evaluations without a better validation loss (GAN variants:
    counted from the first evaluation after the discriminator started, since the adversarial
    term changes what the reconstruction loss can reach). With
    ``settings["checkpoint"] == "best_val_fid"`` the weights of the evaluation with the
    lowest validation FID are kept as the result. ``inputs`` (name -> file) tie the training
    state to the files it was made from.
    """
    tr, lw = settings["train"], settings["loss"]
    device = pick_device(tr["device"])
    info = distributed.setup(device)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    model.to(device)
    gan = quantize and lw["gan"]
    n, bs, epochs = len(train), tr["batch_size"], tr["epochs"]
    if tr.get("train_images") is not None:  # a budget cap (smoke): the first rows of the split
        n = min(n, tr["train_images"])
    steps_per_epoch = n // bs
    if steps_per_epoch < 1:
        raise ValueError(f"{what}: config key tokenizers.training.batch_size (in the "
                         f"codebook-size sweep vqvae_sweep.training.batch_size) is {bs}, larger "
                         f"than the training split of {train.root} ({n} images); lower it")
    disc_start_step = epochs_to_steps(lw["disc_start_epochs"], steps_per_epoch)
    loss_fn = make_loss(lw, gan=gan, weights_dir=weights_dir,
                        disc_start_step=disc_start_step).to(device)
    amp = tr["amp"] == "bf16" and device.type == "cuda"
    if tr["compile"] and device.type == "cuda":
        model.encoder.compile()
        model.decoder.compile()
    net = DistributedDataParallel(model, broadcast_buffers=False) if info.enabled else model
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=tr["lr"], betas=tuple(tr["betas"]),
                           weight_decay=tr["weight_decay"], amsgrad=tr["amsgrad"])
    disc = loss_fn.discriminator
    d_opt = (torch.optim.Adam(disc.parameters(), lr=tr["lr"], betas=tuple(lw["disc_betas"]))
             if gan else None)
    plateau = None
    if tr["scheduler"] == "plateau":
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=tr["plateau_factor"], patience=tr["plateau_patience"],
            min_lr=tr["min_lr"])
    best_mode = settings["checkpoint"] == "best_val_fid"
    fid = None
    if best_mode and info.is_main:
        extractor = make_extractor(settings["fid"], classifier=fid_inputs.get("classifier"),
                                   weights_dir=weights_dir, device=device)
        fid = (extractor, fidm.load_statistics(fid_inputs["val_ref"]))

    total_steps = epochs * steps_per_epoch
    seed = settings["seed"]

    state = ResumableState(state_dir, {**settings, "what": what, "world": info.world_size},
                           inputs=inputs, interval_s=checkpoint_interval_s, rank=info.rank)
    pos = {"epoch": 0, "batch": 0, "step": 0}
    sums = None  # the running epoch's sums and batches (StepLog.saved)
    book = {"curve": [], "best": None, "best_val_rec": math.inf, "bad_evals": 0,
            "stopped_early": False, "done": False}
    if (saved := state.restore()) is not None:
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        if d_opt is not None:
            disc.load_state_dict(saved["discriminator"])
            d_opt.load_state_dict(saved["d_optimizer"])
        if plateau is not None:
            plateau.load_state_dict(saved["plateau"])
        pos, sums, book = dict(saved["pos"]), list(saved["sums"]), dict(saved["book"])
    steps = StepLog(("loss", "mse", "lpips", "vq_loss", "perplexity", "g_loss", "d_loss"),
                    device, state=state, saved=sums)

    def snapshot() -> dict:
        snap = {"model": model.state_dict(), "optimizer": opt.state_dict(), "pos": dict(pos),
                "sums": steps.saved(), "book": book}
        if d_opt is not None:
            snap.update(discriminator=disc.state_dict(), d_optimizer=d_opt.state_dict())
        if plateau is not None:
            snap["plateau"] = plateau.state_dict()
        return snap

    model.train()  # the LPIPS net stays in eval mode (no dropout); the discriminator trains
    t0 = time.perf_counter()
    bar = progress(None, total=total_steps, initial=pos["epoch"] * steps_per_epoch + pos["batch"],
                   desc=what, disable=not info.is_main, unit="step")
    while not book["done"] and pos["epoch"] < epochs:
        epoch = pos["epoch"]
        order = epoch_order(n, seed, epoch)
        while pos["batch"] < steps_per_epoch:
            rows = order[pos["batch"] * bs:(pos["batch"] + 1) * bs]
            local = rows[info.rank::info.world_size]
            x = train.get_batch(local)[0].to(device, non_blocking=True)
            step = pos["step"]
            if tr["scheduler"] == "cosine":
                for g in opt.param_groups:
                    g["lr"] = cosine_lr(step, total_steps, tr["lr"], tr["min_lr"],
                                        tr["warmup_steps"])
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                out = net(x, quantize=quantize)
                parts = loss_fn(x, out.x_hat, out.vq_loss, step=step,
                                last_layer=model.last_layer)
            loss = parts["loss"]
            weight = len(local) * info.world_size / len(rows)
            opt.zero_grad(set_to_none=True)
            (loss * weight).backward()
            if tr["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(params, tr["grad_clip"])
            opt.step()
            d_loss = 0.0
            # decided on the host from the step (TokenizerLoss.gan_factor is this number)
            if gan and gan_factor(step, loss_fn.disc_start, loss_fn.disc_factor) > 0:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    d = loss_fn.discriminator_loss(x, out.x_hat, step=step)
                d_opt.zero_grad(set_to_none=True)
                (d["loss"] * weight).backward()
                if info.enabled:
                    for p in disc.parameters():
                        if p.grad is not None:
                            dist.all_reduce(p.grad)
                            p.grad /= info.world_size
                d_opt.step()
                d_loss = d["loss"]
            steps.add(loss, loss, parts["mse"], parts["lpips"], parts["vq"], out.perplexity,
                      parts.get("g_loss", 0.0), d_loss, epoch=epoch, step=step)
            pos["batch"] += 1
            pos["step"] += 1
            bar.update(1)
            if pos["step"] % SYNC_EVERY == 0:
                steps.check()
                m = steps.means().tolist()
                bar.set_postfix(loss=f"{m[0]:.4f}", ppl=f"{m[4]:.1f}", refresh=False)
            if pos["batch"] < steps_per_epoch:
                state.maybe_save(snapshot, before=steps.check)

        # ---- end of epoch: curve row, validation, scheduler, early stopping, best weights
        steps.check()
        means = distributed.all_mean(steps.means())
        row = {"epoch": epoch + 1, "step": pos["step"], "loss": means[0].item(),
               "mse": means[1].item(), "lpips": means[2].item(), "vq_loss": means[3].item(),
               "perplexity": means[4].item(), "g_loss": means[5].item(),
               "d_loss": means[6].item(), "lr": opt.param_groups[0]["lr"]}
        last_epoch = epoch + 1 == epochs
        if (epoch + 1) % tr["eval_every_epochs"] == 0 or last_epoch:
            values = [math.nan] * 4
            if info.is_main:
                v = _validate(model, loss_fn, val, quantize=quantize, settings=settings,
                              device=device, amp=amp, fid=fid)
                values = [v["val_mse"], v["val_lpips"], v["val_rec"], v["val_fid"]]
            values = broadcast_from_main(values, device)
            row.update(val_mse=values[0], val_lpips=values[1], val_rec=values[2],
                       val_fid=values[3])
            if plateau is not None:
                plateau.step(values[2])
            if not gan or pos["step"] > disc_start_step:
                early_stopping_update(book, values[2], patience=tr["early_stopping_patience"],
                                      last_epoch=last_epoch, key="best_val_rec")
            if best_mode and info.is_main and (book["best"] is None
                                               or values[3] < book["best"]["val_fid"]):
                book["best"] = {"epoch": epoch + 1, "step": pos["step"], "val_fid": values[3],
                                "model": {k: v.detach().cpu().clone()
                                          for k, v in model.state_dict().items()}}
            if book["stopped_early"]:
                log.info("%s: early stop after epoch %d (%d evaluations without a better "
                         "validation loss)", what, epoch + 1, book["bad_evals"])
        row["seconds"] = time.perf_counter() - t0
        book["curve"].append(row)
        pos.update(epoch=epoch + 1, batch=0)
        steps.reset()
        if pos["epoch"] >= epochs:
            book["done"] = True
        state.maybe_save(snapshot, force=book["done"])
    bar.close()
    return {"curve": book["curve"], "best": book["best"], "stopped_early": book["stopped_early"],
            "steps": pos["step"], "state": state, "loss": loss_fn.describe()}


def _finish(model: nn.Module, cfg: dict, result: dict, *, model_out: str, curve_out: str,
            record: str, preset: str, settings: dict, continuous: bool = False) -> None:
    """Write the selected weights (best validation FID or final), the curve and the record."""
    import pandas as pd

    info = distributed.setup(torch.device("cpu"))
    if info.is_main:
        best = result["best"]
        chosen = "final"
        # the loss it was trained with (names a RANDOM LPIPS trunk): run.json, the checkpoint,
        # and from there every evaluation and table row of this tokenizer
        extra = {"continuous": continuous, "training_loss": result["loss"]}
        if settings.get("checkpoint") == "best_val_fid" and best is not None:
            model.load_state_dict(best["model"])
            chosen = f"best validation FID (epoch {best['epoch']}, FID {best['val_fid']:.4g})"
        save_model(model, cfg, model_out, **extra)
        with atomic_path(curve_out) as tmp:
            pd.DataFrame(result["curve"]).to_csv(tmp, index=False)
        save_json(run_record(preset, settings, epochs_run=len(result["curve"]),
                             steps=result["steps"], stopped_early=result["stopped_early"],
                             checkpoint=chosen, training_loss=result["loss"],
                             best_epoch=best["epoch"] if best else None,
                             best_val_fid=best["val_fid"] if best else None), record)
        result["state"].path.unlink(missing_ok=True)
    distributed.teardown()


@stage
def pretrain_ae(*, data: str, model: str, curve: str, record: str, settings: dict, preset: str,
                state_dir: str, checkpoint_interval_s: float = 60.0,
                weights_dir: str | None = None) -> None:
    """Continuous phase of the deferred schedule: the tokenizer's autoencoder without VQ."""
    seed_everything(settings["seed"])
    net = build_model(settings["model"], continuous=True)
    result = _fit(net, _images(data, "train"), _images(data, "val"), quantize=False,
                  settings=settings, state_dir=state_dir,
                  checkpoint_interval_s=checkpoint_interval_s, what="ae", weights_dir=weights_dir,
                  inputs={"data": data})
    _finish(net, settings["model"], result, model_out=model, curve_out=curve, record=record,
            preset=preset, settings=settings, continuous=True)


@torch.no_grad()
def collect_embeddings(model: nn.Module, train: PreparedImages, count: int, *, batch_size: int,
                       seed: int, device: torch.device) -> tuple[Tensor, int, int, int]:
    """``count`` encoder embeddings from shuffled training batches (all positions of each
    image, batch after batch); returns (embeddings, images used, batches used, embeddings
    per image)."""
    model.eval()
    chunks, have, images, batches, per_image = [], 0, 0, 0, 0
    for x, _ in train.batches(batch_size, shuffle=True, seed=seed):
        z = model.embeddings(x.to(device))
        per_image = len(z) // len(x)
        chunks.append(z.cpu())
        have += len(z)
        images += len(x)
        batches += 1
        if have >= count:
            break
    if have < count:
        raise DatasetError(
            f"{train.root}: the train split gives {have} embeddings, fewer than the {count} "
            "the k-means init asks for (kmeans.ratio x codebook_size); lower the ratio"
        )
    return torch.cat(chunks)[:count], images, batches, per_image


@stage
def init_codebook(*, data: str, init: str, embeddings: str, record: str, settings: dict,
                  preset: str, ae: str | None = None) -> None:
    """k-means codebook on embeddings of the untrained (baseline) or pretrained (``ae``) encoder.

    Both arms collect ``ratio x codebook_size`` embeddings from the same training images;
    only the encoder differs. Learned codebooks take the centroids; SimVQ codebooks take
    C := centroids, W := I; EMA codebooks also get the cluster sizes as their statistics.
    """
    seed = settings["seed"]
    seed_everything(seed)
    device = pick_device(settings["device"])
    cfg = settings["model"]
    net = build_model(cfg)
    if ae is not None:
        load_autoencoder(net, load_torch(ae)["model"])
    net.to(device)
    km_cfg = settings["kmeans"]
    k = cfg["codebook_size"]
    count = km_cfg["ratio"] * k
    z, n_images, n_batches, per_image = collect_embeddings(net, _images(data, "train"), count,
                                                batch_size=km_cfg["batch_size"], seed=seed,
                                                device=device)
    km = kmeans(z.to(device), k, iters=km_cfg["iters"], init=km_cfg["init"], seed=seed)
    # EMA codebooks start as if the k-means clusters were one training batch's assignments.
    tokens_per_batch = settings["batch_size"] * per_image
    counts = km.counts.float().cpu() * tokens_per_batch / count
    # SimVQ: how the centroids enter W(C) (tokenizers.simvq_init; quantizers/simvq.py)
    how = {"mode": settings["simvq_init"]} if isinstance(net.quantizer, ProjectedCodebook) else {}
    net.cpu().quantizer.init_codebook(km.centroids.cpu(), counts, **how)
    encoder = "pretrained" if ae else "untrained"
    log.info("k-means on %d embeddings (%d images, %d batches) of the %s encoder into %d codes: "
             "inertia %.4g, %d empty clusters", count, n_images, n_batches, encoder, k,
             km.inertia, int((km.counts == 0).sum()))
    save_model(net, cfg, init)
    pick = torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:4096]
    save_npz(embeddings, z=z[pick], codebook=km.centroids, counts=km.counts)
    spread = cbm.mean_pairwise_distance(z[pick])
    save_json(run_record(preset, settings, encoder=encoder, kmeans_points=count,
                         kmeans_images=n_images, kmeans_batches=n_batches,
                         kmeans_inertia=km.inertia, kmeans_iters_run=km.iters_run,
                         empty_clusters=int((km.counts == 0).sum()),
                         embedding_spread=spread,
                         init_euclidean=cbm.mean_pairwise_distance(km.centroids)), record)


@stage
def train_vq(*, data: str, init: str, model: str, curve: str, record: str, settings: dict,
             preset: str, state_dir: str, checkpoint_interval_s: float = 60.0,
             weights_dir: str | None = None, val_ref: str | None = None,
             classifier: str | None = None) -> None:
    """VQ training from the initialised tokenizer: from scratch (baseline) or fine-tuning the
    autoencoder (deferred); the GAN variants add the PatchGAN after ``disc_start_epochs``
    epochs of this phase."""
    seed_everything(settings["seed"])
    net, blob = load_model(init)
    result = _fit(net, _images(data, "train"), _images(data, "val"), quantize=True,
                  settings=settings, state_dir=state_dir,
                  checkpoint_interval_s=checkpoint_interval_s, what="vq", weights_dir=weights_dir,
                  fid_inputs={"val_ref": val_ref, "classifier": classifier},
                  inputs={"data": data, "init": init, "val_ref": val_ref,
                          "classifier": classifier})
    _finish(net, blob["config"], result, model_out=model, curve_out=curve, record=record,
            preset=preset, settings=settings)


# =============================================================================== evaluation


def _flat_indices(indices: Tensor | list[Tensor]) -> Tensor:
    """Every token of a batch: (B, h, w) maps, or VAR's list of per-scale maps pooled."""
    if isinstance(indices, (list, tuple)):
        return torch.cat([i.reshape(len(i), -1) for i in indices], dim=1)
    return indices.reshape(len(indices), -1)


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
                counts.add_(torch.bincount(_flat_indices(out.indices).reshape(-1).cpu(),
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
    uint16 when the codebook fits, else int32. Labels stay in the prepared dataset."""
    device = pick_device(settings["device"])
    net, blob = load_model(model, device)
    net.eval()
    k = blob["config"]["codebook_size"]
    dtype = np.uint16 if k <= 2**16 else np.int32
    shapes = {}
    for split, out in zip(SPLITS, (tokens_train, tokens_val, tokens_test)):
        ds = _images(data, split)
        arr = None
        with atomic_path(out) as tmp:
            start = 0
            for x, _ in ds.batches(settings["batch_size"]):
                idx = net.encode_indices(x.to(device))
                idx = _flat_indices(idx) if isinstance(idx, (list, tuple)) else idx
                idx = idx.cpu().numpy().astype(dtype)
                if arr is None:
                    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype,
                                                    shape=(len(ds), *idx.shape[1:]))
                arr[start:start + len(idx)] = idx
                start += len(idx)
            arr.flush()
            shapes[split] = list(arr.shape)
            del arr
    cfg = blob["config"]
    save_json({
        "preset": preset, "settings": settings, "data": data, "model": model,
        "codebook_size": k, "dtype": np.dtype(dtype).name, "shapes": shapes,
        "layout": ("(N, L): VAR scales small to large, each p x p row-major, concatenated"
                   if cfg.get("quantizer", "").startswith("multiscale") else "(N, h, w)"),
        "patch_nums": cfg.get("patch_nums") if cfg.get("quantizer", "").startswith("multiscale")
        else None,
        "labels": {s: f"{data}/{s}_labels.npy" for s in SPLITS},
    }, meta)



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
