"""Plain vector quantizer (VQ-VAE) with an EMA or a learned codebook.

Forward pass: each embedding z goes to its nearest token t_k (squared L2, eq. 1 of the
older paper version), the decoder sees z + sg(t_k - z) (straight-through estimator), and
the encoder is pulled towards its token by the commitment loss beta * ||z - sg(t_k)||^2.

Codebook update, one of:
- EMA statistics (``ema_decay`` set; older version eq. 3-5, van den Oord et al. 2017):
  per token the running sum M_k and count L_k of the embeddings assigned to it,
  M_k <- g M_k + (1 - g) m_k, L_k <- g L_k + (1 - g) l_k, t_k = M_k / L_k.
  No Laplace smoothing by default (``ema_smoothing="none"``): a token that is never picked
  keeps its position (the ratio M_k / L_k of two equally decaying numbers). Under DDP,
  m_k and l_k are summed over ranks.
  ``ema_smoothing="laplace"`` (CompVis/taming-transformers ``EmbeddingEMA.weight_update``,
  lucidrains/vector-quantize-pytorch ``laplace_smoothing``, eps 1e-5): every token becomes
  t_k = M_k / L~_k with L~_k = (L_k + eps) / (sum_j L_j + K eps) * sum_j L_j. A token that
  is never picked then drifts to the origin once its L_k decays below eps: the dead tokens
  pile up at 0, which lowers the codebook's pairwise distance (a shrinkage of its own).
- a learned codebook (``ema_decay=None``): the codebook loss ||sg(z) - t_k||^2 is added.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from vqshrink.quantizers.search import nearest_code


EMA_SMOOTHING = ("none", "laplace")


class VQOutput(NamedTuple):
    z_q: Tensor  # straight-through quantized embeddings, same shape as the input
    indices: Tensor  # token index per embedding, input shape without the last dim
    loss: Tensor  # commitment (+ codebook) loss, scalar
    perplexity: Tensor  # exp(entropy) of this batch's token usage, scalar


def check_init_shape(centroids: Tensor, expected: torch.Size) -> None:
    """A codebook init must have the codebook's shape (K, D)."""
    if centroids.shape != expected:
        raise ValueError(
            f"codebook init has shape {tuple(centroids.shape)}, expected {tuple(expected)}"
        )


class VectorQuantizer(nn.Module):
    def __init__(
        self,
        codebook_size: int,
        dim: int,
        *,
        beta: float = 0.25,  # commitment weight (VQ-VAE; App. A.1 of the paper)
        ema_decay: float | None = 0.9,  # gamma of eq. 3-4; None = learn the codebook by loss
        eps: float = 1e-5,  # counts below this leave a token where it is; Laplace's eps
        ema_smoothing: str = "none",  # "none" (older paper eq. 3-5) or "laplace" (taming)
        memory_budget_mb: float = 64.0,  # cap on the distance block of the nearest search
    ) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.dim = dim
        self.beta = beta
        self.ema_decay = ema_decay
        self.eps = eps
        if ema_smoothing not in EMA_SMOOTHING:
            raise ValueError(f"ema_smoothing must be one of {EMA_SMOOTHING}, got {ema_smoothing!r}")
        self.ema_smoothing = ema_smoothing
        self.memory_budget_mb = memory_budget_mb
        init = torch.randn(codebook_size, dim) * dim**-0.5
        if ema_decay is None:
            self.codebook = nn.Parameter(init)
        else:
            self.register_buffer("codebook", init)
            self.register_buffer("ema_sum", torch.zeros(codebook_size, dim))
            self.register_buffer("ema_count", torch.zeros(codebook_size))

    @torch.no_grad()
    def init_codebook(self, centroids: Tensor, counts: Tensor | None = None) -> None:
        """Set the tokens (e.g. k-means centroids); ``counts`` seed the EMA statistics."""
        check_init_shape(centroids, self.codebook.shape)
        self.codebook.copy_(centroids)
        if self.ema_decay is not None:
            c = torch.zeros(self.codebook_size) if counts is None else counts.float()
            self.ema_count.copy_(c)
            self.ema_sum.copy_(centroids * c[:, None].to(centroids))

    def lookup(self, indices: Tensor) -> Tensor:
        """Tokens for integer indices (decoding generated token maps)."""
        return self.codebook[indices]

    def forward(self, z: Tensor) -> VQOutput:
        flat = z.reshape(-1, self.dim)
        indices = nearest_code(flat, self.codebook.detach(), memory_budget_mb=self.memory_budget_mb)
        tokens = self.codebook[indices]  # a copy: the loss sees the tokens before the update
        if self.training and self.ema_decay is not None:
            self._ema_update(flat.detach(), indices)
        loss = self.beta * (flat - tokens.detach()).pow(2).mean()
        if self.ema_decay is None:
            loss = loss + (flat.detach() - tokens).pow(2).mean()
        z_q = flat + (tokens - flat).detach()
        counts = torch.bincount(indices, minlength=self.codebook_size).float()
        p = counts / counts.sum()
        perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())
        return VQOutput(z_q.view_as(z), indices.view(z.shape[:-1]), loss, perplexity)

    @torch.no_grad()
    def _ema_update(self, flat: Tensor, indices: Tensor) -> None:
        m = torch.zeros_like(self.ema_sum).index_add_(0, indices, flat.to(self.ema_sum.dtype))
        n = torch.bincount(indices, minlength=self.codebook_size).to(self.ema_count.dtype)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(m)
            dist.all_reduce(n)
        g = self.ema_decay
        self.ema_sum.mul_(g).add_(m, alpha=1 - g)
        self.ema_count.mul_(g).add_(n, alpha=1 - g)
        if self.ema_smoothing == "laplace":
            total = self.ema_count.sum()
            smoothed = (self.ema_count + self.eps) / (total + self.codebook_size * self.eps) * total
            self.codebook.copy_(self.ema_sum / smoothed[:, None])
            return
        alive = self.ema_count > self.eps
        self.codebook[alive] = self.ema_sum[alive] / self.ema_count[alive, None]
