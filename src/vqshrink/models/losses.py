"""The image tokenizer's training loss.

Paper Sec. 6: "codebook loss, commitment loss, MSE loss, and perceptual loss" (VQ-VAE), plus,
for the VQGAN runs of App. A.4, taming's adversarial term switched on after ``disc_start``:

    rec  = pixel_weight * mean((x - x_hat)^2) + perceptual_weight * mean(LPIPS(x, x_hat))
    loss = rec + codebook_weight * vq_loss + d_weight * gan_factor * (-mean D(x_hat))

``vq_loss`` is what the quantizer returns (codebook + beta * commitment; 0 in the continuous
phase). taming's pixel term is L1; the paper's is MSE, which is used here. Weights 1.0 follow
taming ``VQLPIPSWithDiscriminator`` and LlamaGen ``vq_train.py`` defaults (notes Sec. 5.2, 7).
LPIPS expects images in [-1, 1]; its default trunk is VGG16 as in taming's LPIPS.

LPIPS backbone: ``pretrained_backbone=True`` loads the torchvision ImageNet weights (downloaded
to ``torch.hub.get_dir()/checkpoints`` on first use); without them, construction stops with an
error naming the file and the directory. ``pretrained_backbone=False`` uses a randomly
initialised trunk (``pnet_rand=True``; the LPIPS linear heads still load from the package) and
runs offline; ``describe()`` then says so, for labelling results.

Training loop: call ``loss(x, x_hat, vq_loss, step=..., last_layer=model.last_layer)`` for the
tokenizer step and ``loss.discriminator_loss(x, x_hat, step=...)`` for the discriminator step;
the generator step leaves gradients on the discriminator, so zero them before its own step.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from vqshrink.models.discriminator import (
    NLayerDiscriminator,
    adaptive_weight,
    gan_factor,
    generator_loss,
    hinge_d_loss,
)


def backbone_weights_path(net: str) -> Path:
    """Where torchvision keeps the ImageNet weights of LPIPS's trunk ``net``."""
    from torchvision import models

    weights = {
        "alex": models.AlexNet_Weights.IMAGENET1K_V1,
        "vgg": models.VGG16_Weights.IMAGENET1K_V1,
        "squeeze": models.SqueezeNet1_1_Weights.IMAGENET1K_V1,
    }[net]
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def build_lpips(net: str = "vgg", pretrained_backbone: bool = True) -> nn.Module:
    """A frozen ``lpips.LPIPS`` in eval mode; a clear error when backbone weights are missing."""
    import lpips

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision's `pretrained=` deprecation
            model = lpips.LPIPS(
                net=net, pretrained=True, pnet_rand=not pretrained_backbone, verbose=False
            )
    except Exception as err:
        path = backbone_weights_path(net)
        if pretrained_backbone and not path.exists():
            raise RuntimeError(
                f"LPIPS needs the ImageNet weights of its {net} trunk: put {path.name} into "
                f"{path.parent} (it could not be downloaded), or select a randomly initialised "
                f"trunk (pretrained_backbone=False), which labels the results as such"
            ) from err
        raise
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class TokenizerLoss(nn.Module):
    def __init__(
        self,
        *,
        pixel_weight: float = 1.0,  # MSE weight (taming pixelloss_weight 1.0)
        perceptual_weight: float = 1.0,  # LPIPS weight (taming, LlamaGen: 1.0)
        codebook_weight: float = 1.0,  # weight of the quantizer's loss (taming: 1.0)
        lpips_net: str = "vgg",  # taming's LPIPS trunk; "alex" is the faster option
        pretrained_backbone: bool = True,  # False: random trunk (offline), results labelled
        gan: bool = False,  # VQGAN (App. A.4): add the PatchGAN term
        disc_start: int = 10_000,  # taming custom_vqgan.yaml (imagenet: 250001; LlamaGen 20000)
        disc_weight: float = 0.8,  # taming imagenet_vqgan.yaml
        disc_factor: float = 1.0,  # taming default
        disc_ndf: int = 64,  # taming default
        disc_layers: int = 3,  # taming default
        adaptive: bool = True,  # taming's adaptive weight; False: d_weight = disc_weight
    ) -> None:
        super().__init__()
        self.pixel_weight = pixel_weight
        self.perceptual_weight = perceptual_weight
        self.codebook_weight = codebook_weight
        self.lpips_net = lpips_net
        self._pretrained_backbone = pretrained_backbone
        self.lpips = build_lpips(lpips_net, pretrained_backbone) if perceptual_weight > 0 else None
        self.gan = gan
        self.disc_start = disc_start
        self.disc_weight = disc_weight
        self.disc_factor = disc_factor
        self.adaptive = adaptive
        self.discriminator = NLayerDiscriminator(3, disc_ndf, disc_layers) if gan else None

    @property
    def pretrained_backbone(self) -> bool:
        return self._pretrained_backbone

    def describe(self) -> str:
        if self.lpips is None:
            lp = "no LPIPS"
        else:
            trunk = "ImageNet-pretrained" if self.pretrained_backbone else "RANDOM (not pretrained)"
            lp = f"LPIPS {self.lpips_net}, {trunk} trunk, x{self.perceptual_weight}"
        gan = f"hinge PatchGAN from step {self.disc_start}" if self.gan else "no GAN"
        return f"MSE x{self.pixel_weight} + {lp} + VQ x{self.codebook_weight}; {gan}"

    def perceptual(self, x: Tensor, x_hat: Tensor) -> Tensor:
        """Mean LPIPS distance of the pairs (images in [-1, 1])."""
        if self.lpips is None:
            return x.new_zeros(())
        return self.lpips(x_hat.float(), x.float()).mean()

    def forward(
        self,
        x: Tensor,
        x_hat: Tensor,
        vq_loss: Tensor,
        *,
        step: int = 0,
        last_layer: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The tokenizer's loss and its parts (all scalars; ``loss`` is the one to backprop)."""
        mse = (x_hat.float() - x.float()).pow(2).mean()
        lp = self.perceptual(x, x_hat)
        rec = self.pixel_weight * mse + self.perceptual_weight * lp
        loss = rec + self.codebook_weight * vq_loss
        out = {"mse": mse.detach(), "lpips": lp.detach(), "vq": vq_loss.detach()}
        out["rec"] = rec.detach()
        factor = gan_factor(step, self.disc_start, self.disc_factor) if self.gan else 0.0
        if factor > 0:
            g_loss = generator_loss(self.discriminator(x_hat.contiguous()))
            if self.adaptive:
                if last_layer is None:
                    raise ValueError("the adaptive GAN weight needs the decoder's last layer")
                d_weight = adaptive_weight(rec, g_loss, last_layer, self.disc_weight)
            else:
                d_weight = g_loss.new_tensor(self.disc_weight)
            loss = loss + d_weight * factor * g_loss
            out.update(g_loss=g_loss.detach(), d_weight=d_weight.detach())
        out["gan_factor"] = mse.new_tensor(factor)
        out["loss"] = loss
        return out

    def discriminator_loss(self, x: Tensor, x_hat: Tensor, *, step: int = 0) -> dict[str, Tensor]:
        """Hinge loss of the discriminator on real x and detached x_hat (0 before disc_start)."""
        if not self.gan:
            raise RuntimeError("this TokenizerLoss has no discriminator (gan=False)")
        factor = gan_factor(step, self.disc_start, self.disc_factor)
        logits_real = self.discriminator(x.detach().contiguous())
        logits_fake = self.discriminator(x_hat.detach().contiguous())
        d_loss = factor * hinge_d_loss(logits_real, logits_fake)
        return {
            "loss": d_loss,
            "logits_real": logits_real.detach().mean(),
            "logits_fake": logits_fake.detach().mean(),
        }
