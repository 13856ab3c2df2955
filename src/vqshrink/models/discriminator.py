"""PatchGAN discriminator and the VQGAN adversarial loss pieces.

Paper App. A.4: "VQGAN" = the same tokenizer plus this discriminator, switched on after a start
step. Numbers from CompVis/taming-transformers (notes Sec. 7):
- ``taming/modules/discriminator/model.py`` ``NLayerDiscriminator`` (pix2pix PatchGAN):
  conv4x4 s2 (3 -> ndf) + LeakyReLU(0.2); for n = 1..n_layers-1: conv4x4 s2 to
  ndf*min(2^n, 8), BatchNorm, LeakyReLU(0.2); conv4x4 s1 to ndf*min(2^n_layers, 8), BatchNorm,
  LeakyReLU(0.2); conv4x4 s1 to 1 logit map. n_layers 3, ndf 64; convs before BatchNorm have
  no bias. ``weights_init``: conv weights N(0, 0.02), BatchNorm weights N(1, 0.02), biases 0.
- ``taming/modules/losses/vqperceptual.py``: hinge d-loss
  0.5 (E relu(1 - D(x)) + E relu(1 + D(x_hat))); generator loss -E D(x_hat); adaptive weight
  ||grad_last rec|| / (||grad_last g|| + 1e-4), clamped to [0, 1e4], detached, times
  ``disc_weight`` (imagenet_vqgan.yaml: 0.8; class default 1.0); ``adopt_weight``: the GAN
  factor is 0 before ``disc_start`` (imagenet_vqgan.yaml 250001, custom_vqgan.yaml 10000;
  LlamaGen vq_train.py 20000).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def weights_init(m: nn.Module) -> None:
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class NLayerDiscriminator(nn.Module):
    def __init__(
        self,
        in_channels: int = 3,
        ndf: int = 64,  # taming disc_ndf default
        n_layers: int = 3,  # taming disc_num_layers default
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, True),
        ]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(ndf * mult),
                nn.LeakyReLU(0.2, True),
            ]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.main = nn.Sequential(*layers)
        self.apply(weights_init)

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x)  # (B, 1, h, w) patch logits


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_loss(logits_fake: Tensor) -> Tensor:
    return -logits_fake.mean()


def gan_factor(step: int, disc_start: int, factor: float = 1.0) -> float:
    """taming's ``adopt_weight``: 0 before ``disc_start``, ``factor`` from then on."""
    return factor if step >= disc_start else 0.0


def adaptive_weight(
    rec_loss: Tensor,
    g_loss: Tensor,
    last_layer: Tensor,
    disc_weight: float = 0.8,  # taming imagenet_vqgan.yaml
    eps: float = 1e-4,
    max_weight: float = 1e4,
) -> Tensor:
    """Balance the GAN gradient against the reconstruction gradient at the decoder's last layer.

    Returns 0 where no gradient can be taken (evaluation under ``no_grad``), as taming does.
    """
    if not (torch.is_grad_enabled() and rec_loss.requires_grad and g_loss.requires_grad):
        return rec_loss.new_zeros(())
    rec_grad = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    w = rec_grad.float().norm() / (g_grad.float().norm() + eps)
    return w.clamp(0.0, max_weight).detach() * disc_weight
