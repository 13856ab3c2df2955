"""The image tokenizers' registry and checkpoint files: the VQGAN family (paper Sec. 6.1,
App. A.4) and the CIFAR-10 VQ-VAE of the codebook-size sweep (Fig. 4) built from a config's
``family``, with or without the quantizer, saved with that config so that loading rebuilds the
same model. The generators' counterpart is :mod:`vqshrink.models.generator_registry`.
"""

from __future__ import annotations

import torch
from torch import nn

from vqshrink.io import load_torch, save_torch
from vqshrink.models.cifar_vqvae import CifarVQVAE, CifarVQVAEConfig
from vqshrink.models.vqgan import Tokenizer, VQGANConfig

FAMILIES = ("vqgan", "cifar_vqvae")


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
