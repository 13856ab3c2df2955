"""The synthetic experiments' VQ-VAE: MLP encoder and decoder around a vector quantizer.

Paper App. A.1 (older version Sec. 5.2): encoder and decoder each have three linear
layers with ReLU, hidden size 32; codebook of 128 tokens; the codebook is updated by EMA
statistics (decay 0.9); commitment weight 0.25. The embeddings-collapse study (older
version Sec. 3.2) shrinks only the encoder's hidden size (8, 4) and keeps the decoder.

The same module is the plain autoencoder of the deferred schedule's continuous phase:
``forward(x, quantize=False)`` skips the quantizer, so pretrained weights load as they are.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

from torch import Tensor, nn

from vqshrink.quantizers.vq import VectorQuantizer


@dataclass
class MLPVQVAEConfig:
    input_dim: int = 2  # dimension of the synthetic data (2, 3, 4, 8 in the paper)
    token_dim: int = 1  # embedding = token dimension (1, 1, 4 for inputs 2, 3, 8)
    hidden: int = 32  # decoder hidden size, and the encoder's unless encoder_hidden is set
    encoder_hidden: int | None = None  # embeddings collapse: 8 or 4 with the decoder at 32
    codebook_size: int = 128
    beta: float = 0.25
    ema_decay: float | None = 0.9
    ema_smoothing: str = "none"  # "none" (older paper eq. 3-5) or "laplace" (taming)

    def to_dict(self) -> dict:
        return asdict(self)


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Reconstruction(NamedTuple):
    x_hat: Tensor
    z: Tensor  # encoder output (continuous embedding)
    indices: Tensor | None  # token per sample, None without quantization
    vq_loss: Tensor
    perplexity: Tensor


class MLPVQVAE(nn.Module):
    def __init__(self, cfg: MLPVQVAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h_enc = cfg.encoder_hidden or cfg.hidden
        self.encoder = mlp([cfg.input_dim, h_enc, h_enc, cfg.token_dim])
        self.decoder = mlp([cfg.token_dim, cfg.hidden, cfg.hidden, cfg.input_dim])
        self.quantizer = VectorQuantizer(
            cfg.codebook_size, cfg.token_dim, beta=cfg.beta, ema_decay=cfg.ema_decay,
            ema_smoothing=cfg.ema_smoothing,
        )

    def forward(self, x: Tensor, *, quantize: bool = True) -> Reconstruction:
        z = self.encoder(x)
        if not quantize:
            zero = z.new_zeros(())
            return Reconstruction(self.decoder(z), z, None, zero, zero)
        q = self.quantizer(z)
        return Reconstruction(self.decoder(q.z_q), z, q.indices, q.loss, q.perplexity)
