"""Stages of the synthetic Gaussian experiments (paper Sec. 4, App. A.1-A.2).

One run is (input dim, encoder hidden size, seed, schedule):

- baseline ("w/o Deferred"): k-means codebook on the untrained encoder's embeddings,
  then ``epochs.baseline`` (200) epochs of VQ training;
- deferred ("w/ Deferred"): ``epochs.pretrain`` (100) epochs of plain autoencoder
  training, k-means codebook on the pretrained encoder's embeddings, then
  ``epochs.finetune`` (100) epochs of VQ training from the autoencoder's weights.

Both arms start from the same random weights (the seed) and run k-means on the same
number of embeddings, so the encoder the codebook is fitted to is the only difference.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from vqshrink import distributed
from vqshrink.data.synthetic import make_gaussian_mixture
from vqshrink.io import atomic_path, load_torch, run_record, save_json, save_npz, save_torch
from vqshrink.kmeans import kmeans
from vqshrink.metrics import codebook as cbm
from vqshrink.models.mlp_vqvae import MLPVQVAE, MLPVQVAEConfig
from vqshrink.stages import stage
from vqshrink.training import Loop, TorchShuffle, fit, pick_device, seed_everything

log = logging.getLogger(__name__)

MODEL_KEYS = ("input_dim", "token_dim", "hidden", "encoder_hidden", "codebook_size", "beta",
              "ema_decay", "ema_smoothing")


def model_config(settings: dict) -> MLPVQVAEConfig:
    return MLPVQVAEConfig(**{k: settings[k] for k in MODEL_KEYS})


def load_data(path: str, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    with np.load(path) as npz:
        return {k: torch.from_numpy(npz[k]).to(device) for k in npz.files}


@stage
def make_data(*, data: str, record: str, settings: dict, preset: str) -> None:
    mix = make_gaussian_mixture(
        settings["input_dim"],
        n_clusters=settings["n_clusters"],
        points_per_cluster=settings["points_per_cluster"],
        cluster_std=settings["cluster_std"],
        center_box=tuple(settings["center_box"]),
        min_separation=settings["min_separation"],
        seed=settings["data_seed"],
    )
    save_npz(data, x=mix.x, labels=mix.labels, means=mix.means)
    save_json(run_record(preset, settings, points=len(mix.x)), record)


def _fit(
    model: MLPVQVAE,
    x: torch.Tensor,
    *,
    quantize: bool,
    epochs: int,
    settings: dict,
    state_dir: str,
    checkpoint_interval_s: float,
    what: str,
    inputs: dict[str, str | None],
) -> list[dict]:
    """Train ``model`` on ``x`` for ``epochs`` epochs (:func:`vqshrink.training.fit`).

    Loss: MSE reconstruction, plus the quantizer's commitment loss when ``quantize``.
    Under DDP every rank draws the same shuffled batch and trains on its slice; local
    losses are weighted by slice size so the averaged gradient is the full batch's.
    ``inputs`` (name -> file) tie the training state to the files it was made from.
    """
    device = x.device
    info = distributed.setup(device)
    net = DistributedDataParallel(model, broadcast_buffers=False) if info.enabled else model
    # fused: one kernel for all parameters (about 2x faster steps for this tiny MLP on CPU)
    opt = torch.optim.AdamW(model.parameters(), lr=settings["lr"],
                            weight_decay=settings["weight_decay"], fused=True)

    def train_step(rows: torch.Tensor, local: torch.Tensor, step: int, epoch: int) -> tuple:
        xb = x[local.to(device)]
        out = net(xb, quantize=quantize)
        mse = F.mse_loss(out.x_hat, xb)
        loss = mse + out.vq_loss
        opt.zero_grad(set_to_none=True)
        (loss * (len(local) * info.world_size / len(rows))).backward()
        opt.step()
        return loss, mse, out.vq_loss, out.perplexity

    loop = Loop(what=what, model=model, optimizers={"adamw": opt}, epochs=epochs, step=train_step,
                order=TorchShuffle(len(x), settings["batch_size"], settings["seed"]),
                names=("loss", "mse", "vq_loss", "perplexity"))
    return fit(loop, state_dir=state_dir, settings=settings, inputs=inputs,
               checkpoint_interval_s=checkpoint_interval_s, device=device, info=info).curve


def _finish_training(model: MLPVQVAE, curve: list[dict], *, model_out: str, curve_out: str,
                     record: str, preset: str, settings: dict, state_dir: str) -> None:
    import pandas as pd

    if distributed.setup(torch.device("cpu")).is_main:
        save_torch({"config": model.cfg.to_dict(), "model": model.state_dict()}, model_out)
        with atomic_path(curve_out) as tmp:
            pd.DataFrame(curve).to_csv(tmp, index=False)
        save_json(run_record(preset, settings, epochs_run=len(curve)), record)
        (Path(state_dir) / "last.pt").unlink(missing_ok=True)
    distributed.teardown()


@stage
def pretrain_ae(*, data: str, model: str, curve: str, record: str, settings: dict, preset: str,
                state_dir: str, checkpoint_interval_s: float = 60.0) -> None:
    """Continuous phase of the deferred schedule: the autoencoder without quantization."""
    device = pick_device(settings["device"])
    seed_everything(settings["seed"])
    net = MLPVQVAE(model_config(settings)).to(device)
    x = load_data(data, device)["x"]
    rows = _fit(net, x, quantize=False, epochs=settings["epochs"], settings=settings,
                state_dir=state_dir, checkpoint_interval_s=checkpoint_interval_s, what="ae",
                inputs={"data": data})
    _finish_training(net, rows, model_out=model, curve_out=curve, record=record, preset=preset,
                     settings=settings, state_dir=state_dir)


@torch.no_grad()
def encode(net: MLPVQVAE, x: torch.Tensor) -> torch.Tensor:
    net.eval()
    return net.encoder(x)


@stage
def init_codebook(*, data: str, init: str, embeddings: str, record: str, settings: dict,
                  preset: str, ae: str | None = None) -> None:
    """k-means codebook on the encoder's embeddings: untrained (baseline) or pretrained (``ae``).

    The sample is the first ``kmeans_points`` points of the VQ phase's first shuffled epoch
    (``_fit`` draws its epochs from a generator seeded the same way), so ``kmeans_points ==
    batch_size`` clusters exactly the first training batch, as SoundStream does; the whole
    data set is the other option (config ``synthetic.kmeans_points``).
    """
    seed_everything(settings["seed"])
    net = MLPVQVAE(model_config(settings))
    if ae is not None:
        net.load_state_dict(load_torch(ae)["model"])
    x = load_data(data)["x"]
    n = min(settings["kmeans_points"], len(x))
    pick = torch.randperm(len(x), generator=torch.Generator().manual_seed(settings["seed"]))[:n]
    z = encode(net, x[pick])
    km = kmeans(z, settings["codebook_size"], iters=settings["kmeans_iters"],
                init=settings["kmeans_init"], seed=settings["seed"])
    # The EMA statistics start as if the k-means clusters were one batch's assignments.
    counts = km.counts.float() * settings["batch_size"] / n
    net.quantizer.init_codebook(km.centroids, counts)
    log.info("k-means on %d embeddings of the %s encoder: inertia %.4g, %d empty clusters",
             n, "pretrained" if ae else "untrained", km.inertia, int((km.counts == 0).sum()))
    save_torch({"config": net.cfg.to_dict(), "model": net.state_dict()}, init)
    save_npz(embeddings, z=z, codebook=km.centroids, counts=km.counts)
    save_json(run_record(preset, settings, encoder="pretrained" if ae else "untrained",
                         kmeans_inertia=km.inertia, kmeans_points=n), record)


@stage
def train_vq(*, data: str, init: str, model: str, curve: str, record: str, settings: dict,
             preset: str, state_dir: str, checkpoint_interval_s: float = 60.0) -> None:
    """VQ training from the initialised model (from scratch or fine-tuning the AE)."""
    device = pick_device(settings["device"])
    seed_everything(settings["seed"])
    start = load_torch(init)
    net = MLPVQVAE(MLPVQVAEConfig(**start["config"]))
    net.load_state_dict(start["model"])
    net.to(device)
    x = load_data(data, device)["x"]
    rows = _fit(net, x, quantize=True, epochs=settings["epochs"], settings=settings,
                state_dir=state_dir, checkpoint_interval_s=checkpoint_interval_s, what="vq",
                inputs={"data": data, "init": init})
    _finish_training(net, rows, model_out=model, curve_out=curve, record=record, preset=preset,
                     settings=settings, state_dir=state_dir)


@torch.no_grad()
def reconstruct(net: MLPVQVAE, x: torch.Tensor) -> dict[str, torch.Tensor]:
    net.eval()
    out = net(x, quantize=True)
    return {"x_hat": out.x_hat, "z": out.z, "indices": out.indices}


def out_of_support_fraction(recon: torch.Tensor, data: torch.Tensor, labels: torch.Tensor,
                            means: torch.Tensor, quantile: float = 0.99) -> float:
    """Fraction of reconstructions farther from every mode mean than that mode's own
    ``quantile`` radius: points outside the data's support (embeddings collapse makes
    these, older version Sec. 3.2)."""
    radii = torch.stack([
        torch.quantile((data[labels == k] - means[k]).norm(dim=1), quantile)
        for k in range(len(means))
    ])
    inside = (torch.cdist(recon, means) <= radii[None]).any(dim=1)
    return 1.0 - inside.float().mean().item()


@stage
def evaluate(*, data: str, model: str, metrics: str, samples: str, settings: dict,
             preset: str) -> None:
    """Codebook and coverage diagnostics of one trained VQ-VAE on the full data set."""
    ds = load_data(data)
    ckpt = load_torch(model)
    net = MLPVQVAE(MLPVQVAEConfig(**ckpt["config"]))
    net.load_state_dict(ckpt["model"])
    rec = reconstruct(net, ds["x"])
    codebook = net.quantizer.codebook
    x, labels, means = ds["x"], ds["labels"], ds["means"]
    sub = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:2000]
    embed_spread = cbm.mean_pairwise_distance(rec["z"][sub])
    report = cbm.codebook_report(codebook, rec["indices"], settings["codebook_size"])
    values = {
        **report,
        "euclidean_rel": report["euclidean"] / max(embed_spread, 1e-12),
        "embedding_spread": embed_spread,
        "mse": F.mse_loss(rec["x_hat"], x).item(),
        "mode_entropy": cbm.mode_entropy(rec["x_hat"], means),
        "mode_entropy_data": cbm.mode_entropy(x, means),
        "modes_covered": cbm.modes_covered(x, labels, rec["x_hat"], means),
        "out_of_support": out_of_support_fraction(rec["x_hat"], x, labels, means),
        "embedding_peaks": cbm.count_peaks(rec["z"][:, 0]) if rec["z"].shape[1] == 1 else None,
    }
    save_json({"settings": settings, "preset": preset, "metrics": values}, metrics)
    save_npz(samples, x=x, labels=labels, means=means, codebook=codebook, **rec)
