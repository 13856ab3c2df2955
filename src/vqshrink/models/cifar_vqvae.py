"""The small convolutional VQ-VAE of the CIFAR-10 codebook-size sweep (Fig. 4).

Older version of the paper (``003_*``), Sec. 5.2: "our VQ-VAE adopts downsampling using a
CNN with a downsample channel of 128, and the model includes two residual blocks with a
hidden channel size of 64 ... learning rate 3e-4, Adam with amsgrad ... beta 0.25 and the
decay rate 0.99"; for the sweep "the codebook size is varied from 16 to 65,536, with
embedding and token adopting the size of 32", codebook updated by EMA statistics (its
Sec. 5.1, eq. 3-5). That is the VQ-VAE of van den Oord et al. (2017) as the public CIFAR-10
examples build it (DeepMind sonnet ``vqvae_example``, zalandoresearch ``pytorch-vq-vae``):

- encoder: conv4x4 s2 (3 -> hidden/2), ReLU, conv4x4 s2 (hidden/2 -> hidden), ReLU,
  conv3x3 (hidden -> hidden), ``res_blocks`` x [ReLU, conv3x3 (hidden -> res_hidden), ReLU,
  conv1x1 (res_hidden -> hidden), + skip], ReLU; then a 1x1 "pre-VQ" conv to ``embed_dim``.
  32 x 32 images give an 8 x 8 map of tokens;
- decoder: conv3x3 (embed_dim -> hidden), the same residual stack and final ReLU,
  convT4x4 s2 (hidden -> hidden/2), ReLU, convT4x4 s2 (hidden/2 -> 3), no output activation;
- quantizer: :class:`vqshrink.quantizers.vq.VectorQuantizer` with the EMA codebook
  (``ema_decay`` 0.99) and commitment weight ``beta`` 0.25.

The interface is the image tokenizer's (:class:`vqshrink.models.vqgan.Tokenizer`):
``forward(x, quantize)`` (``quantize=False`` is the continuous autoencoder of the deferred
schedule, the same modules minus the quantizer), ``embeddings``, the flat tokens and their
layout (``token_layout``, ``encode_tokens``, ``decode_tokens``: models/tokens.py),
``last_layer``, so the tokenizer stages train and evaluate both.
Images are in [-1, 1] as everywhere in this package (the sonnet example uses x/255 - 0.5).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from torch import Tensor, nn

from vqshrink.models.vqgan import QuantizedAutoencoder
from vqshrink.quantizers.vq import VectorQuantizer


@dataclass
class CifarVQVAEConfig:
    resolution: int = 32  # CIFAR-10 images (older version Sec. 5.2)
    in_channels: int = 3
    hidden: int = 128  # "downsample channel of 128" (older Sec. 5.2)
    res_hidden: int = 64  # "two residual blocks with a hidden channel size of 64"
    res_blocks: int = 2
    embed_dim: int = 32  # sweep: "embedding and token adopting the size of 32"
    codebook_size: int = 512  # older Sec. 5.2 default; the sweep varies it 16..65,536
    beta: float = 0.25  # commitment weight (older Sec. 5.2)
    ema_decay: float = 0.99  # EMA codebook decay (older Sec. 5.2)
    ema_smoothing: str = "none"  # "none" (older paper eq. 3-5) or "laplace" (taming)
    memory_budget_mb: float = 64.0  # nearest-code search: cap on one distance block

    @property
    def latent_resolution(self) -> int:
        return self.resolution // 4

    def to_dict(self) -> dict:
        return asdict(self)


class Residual(nn.Module):
    def __init__(self, hidden: int, res_hidden: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(hidden, res_hidden, 3, padding=1, bias=False),
            nn.ReLU(),
            nn.Conv2d(res_hidden, hidden, 1, bias=False),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.block(x)


def residual_stack(hidden: int, res_hidden: int, n: int) -> nn.Sequential:
    return nn.Sequential(*[Residual(hidden, res_hidden) for _ in range(n)], nn.ReLU())


class CifarVQVAE(QuantizedAutoencoder):
    def __init__(self, cfg: CifarVQVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h, r = cfg.hidden, cfg.res_hidden
        self.encoder = nn.Sequential(
            nn.Conv2d(cfg.in_channels, h // 2, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(h // 2, h, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(h, h, 3, padding=1),
            residual_stack(h, r, cfg.res_blocks),
        )
        self.quant_conv = nn.Conv2d(h, cfg.embed_dim, 1)  # sonnet's pre_vq_conv
        self.quantizer = VectorQuantizer(
            cfg.codebook_size, cfg.embed_dim, beta=cfg.beta, ema_decay=cfg.ema_decay,
            ema_smoothing=cfg.ema_smoothing, memory_budget_mb=cfg.memory_budget_mb,
        )
        self.decoder = nn.Sequential(
            nn.Conv2d(cfg.embed_dim, h, 3, padding=1),
            residual_stack(h, r, cfg.res_blocks),
            nn.ConvTranspose2d(h, h // 2, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(h // 2, cfg.in_channels, 4, stride=2, padding=1),
        )

    @property
    def last_layer(self) -> Tensor:
        return self.decoder[-1].weight

    def decode(self, z_q: Tensor) -> Tensor:
        return self.decoder(z_q)
