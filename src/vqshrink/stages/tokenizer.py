"""Training stages of the image tokenizers (paper Sec. 5, 6.1-6.3, App. A.1, A.4) and of the
CIFAR-10 codebook-size sweep (Fig. 4; older version Sec. 3.1.2, 5.2).

The training part of the DAG, per dataset (the one actually used: ``digits`` stands in for
every image dataset in the demo preset)::

    data.prepare_data -> pretrain_ae (deferred only; ONE per dataset and architecture)
                      -> init_codebook (k-means on embeddings of the untrained / pretrained encoder)
                      -> train_vq (from scratch / fine-tuning the AE; optional GAN)
                      -> tokenizer_eval.evaluate, tokenizer_eval.extract_tokens

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

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from vqshrink import distributed
from vqshrink.data.prepared import DatasetError, PreparedImages
from vqshrink.io import atomic_path, load_torch, run_record, save_json, save_npz
from vqshrink.kmeans import kmeans
from vqshrink.metrics import codebook as cbm
from vqshrink.metrics import fid as fidm
from vqshrink.models.discriminator import gan_factor
from vqshrink.models.losses import TokenizerLoss
from vqshrink.models.registry import build_model, load_autoencoder, load_model, save_model
from vqshrink.plan.schedule import epochs_to_steps
from vqshrink.quantizers.simvq import ProjectedCodebook
from vqshrink.stages import stage
from vqshrink.stages.data import _images, to_uint8
from vqshrink.stages.metric_nets import RANDOM_TRUNK_SEED, make_extractor
from vqshrink.training import (
    Loop,
    ShuffledRows,
    cosine_lr,
    fit,
    pick_device,
    seed_everything,
)
from vqshrink.weights import check_weights, torch_hub_dir

log = logging.getLogger(__name__)


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

    def train_step(rows: np.ndarray, local: np.ndarray, step: int, epoch: int) -> tuple:
        x = train.get_batch(local)[0].to(device, non_blocking=True)
        if tr["scheduler"] == "cosine":
            for g in opt.param_groups:
                g["lr"] = cosine_lr(step, total_steps, tr["lr"], tr["min_lr"], tr["warmup_steps"])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            out = net(x, quantize=quantize)
            parts = loss_fn(x, out.x_hat, out.vq_loss, step=step, last_layer=model.last_layer)
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
        return (loss, parts["mse"], parts["lpips"], parts["vq"], out.perplexity,
                parts.get("g_loss", 0.0), d_loss)

    def validate() -> list[float]:
        v = _validate(model, loss_fn, val, quantize=quantize, settings=settings, device=device,
                      amp=amp, fid=fid)
        return [v["val_mse"], v["val_lpips"], v["val_rec"], v["val_fid"]]

    loop = Loop(what=what, model=model, optimizers={"adam": opt, **({"disc": d_opt} if gan else {})},
                modules={"discriminator": disc} if gan else {}, plateau=plateau,
                order=ShuffledRows(n, bs, settings["seed"]), epochs=epochs, step=train_step,
                names=("loss", "mse", "lpips", "vq_loss", "perplexity", "g_loss", "d_loss"),
                validate=validate, val_names=("val_mse", "val_lpips", "val_rec", "val_fid"),
                eval_every=tr["eval_every_epochs"], monitor="val_rec",
                patience=tr["early_stopping_patience"],
                # GAN variants: counted from the first evaluation after the discriminator started
                early_stop_from=disc_start_step + 1 if gan else 0,
                keep_best="val_fid" if best_mode else None)
    fitted = fit(loop, state_dir=state_dir, settings=settings, inputs=inputs,
                 checkpoint_interval_s=checkpoint_interval_s, device=device, info=info)
    return {"curve": fitted.curve, "best": fitted.best, "stopped_early": fitted.stopped_early,
            "steps": fitted.steps, "state": fitted.state, "loss": loss_fn.describe()}


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
            chosen = f"best validation FID (epoch {best['epoch']}, FID {best['value']:.4g})"
        save_model(model, cfg, model_out, **extra)
        with atomic_path(curve_out) as tmp:
            pd.DataFrame(result["curve"]).to_csv(tmp, index=False)
        save_json(run_record(preset, settings, epochs_run=len(result["curve"]),
                             steps=result["steps"], stopped_early=result["stopped_early"],
                             checkpoint=chosen, training_loss=result["loss"],
                             best_epoch=best["epoch"] if best else None,
                             best_val_fid=best["value"] if best else None), record)
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
