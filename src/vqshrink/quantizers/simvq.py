"""SimVQ: a frozen random codebook re-parameterised by one trainable linear layer.

Zhu et al., "Addressing representation collapse in vector quantized models with one linear
layer" (ICCV 2025); facts from youngsheen/SimVQ ``taming/modules/vqvae/quantize.py`` class
``SimVQ`` (notes Sec. 2.1):
- codebook C (K x D) drawn from N(0, D^-1/2 std) and FROZEN (here a buffer, never a parameter);
- projection W = Linear(D, D, bias=True), the only trainable part; effective codebook W(C);
- nearest token of z searched against W(C) (squared L2); straight-through estimator;
- loss (``legacy=False``, the repo's config): beta * ||sg(z_q) - z||^2 + ||z_q - sg(z)||^2,
  beta = 0.25 (encoder commitment 0.25, codebook/projection term 1.0).

Unlike the reference repo, ``lookup`` decodes THROUGH the projection: the repo's
``get_codebook_entry`` returns the raw frozen C rows, which is wrong for decoding tokens.

k-means initialisation (Deferred Quantization, paper Sec. 5; how the paper injects the
centroids into SimVQ is not said). ``init_codebook(centroids, mode=...)``:
- ``"identity"`` (default): C := centroids, W := identity, b := 0, so W(C) equals the
  centroids exactly when VQ training starts; C then stays frozen and only W (and b) move, as
  in SimVQ.
- ``"lstsq"``: C keeps its random N(0, D^-1/2) rows and (W, b) is the least-squares fit of
  W(C) to the centroids, min sum_k ||W c_k + b - mu_k||^2. With K >> D this cannot reproduce
  the centroids: W(C) is an affine image of a Gaussian cloud with roughly the centroids'
  mean and covariance, so which embeddings the k-means saw matters much less.
The repo's own init, N(0, D^-1/2), is what the module holds until ``init_codebook`` is called.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vqshrink.quantizers.search import nearest_code
from vqshrink.quantizers.vq import VQOutput, check_init_shape


SIMVQ_INIT = ("identity", "lstsq")


def perplexity(indices: Tensor, codebook_size: int) -> Tensor:
    """exp(entropy) of the token usage in ``indices`` (taming's codebook perplexity)."""
    counts = torch.bincount(indices.reshape(-1), minlength=codebook_size).float()
    p = counts / counts.sum()
    return torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())


class ProjectedCodebook:
    """SimVQ's codebook parameterisation, shared by :class:`SimVQ` and the multi-scale
    quantizer: a frozen C and a trainable square linear layer, codebook W(C)."""

    dim: int

    def _make_codebook(self, codebook_size: int, dim: int) -> None:
        # C: frozen, std dim^-0.5 (SimVQ quantize.py; author in lucidrains issue #170)
        self.register_buffer("frozen_codebook", torch.randn(codebook_size, dim) * dim**-0.5)
        self.proj = nn.Linear(dim, dim, bias=True)  # W, default PyTorch init as in the repo

    @property
    def codebook(self) -> Tensor:
        """The effective codebook W(C) (K, D); differentiable w.r.t. W and b."""
        return self.proj(self.frozen_codebook)

    @torch.no_grad()
    def init_codebook(self, centroids: Tensor, counts: Tensor | None = None, *,
                      mode: str = "identity") -> None:
        """``identity``: C := centroids, W := I, b := 0, so that W(C) == centroids;
        ``lstsq``: C stays, (W, b) fit W(C) to the centroids by least squares (module doc).
        ``counts`` is unused (no EMA statistics), accepted for the VectorQuantizer interface."""
        check_init_shape(centroids, self.frozen_codebook.shape)
        if mode == "identity":
            self.frozen_codebook.copy_(centroids)
            self.proj.weight.copy_(torch.eye(self.dim))
            self.proj.bias.zero_()
        elif mode == "lstsq":
            c = self.frozen_codebook.double()
            design = torch.cat([c, torch.ones(len(c), 1, dtype=c.dtype)], dim=1)  # (K, D + 1)
            sol = torch.linalg.lstsq(design, centroids.double().cpu()).solution  # (D + 1, D)
            self.proj.weight.copy_(sol[:-1].T)
            self.proj.bias.copy_(sol[-1])
        else:
            raise ValueError(f"SimVQ init mode must be one of {SIMVQ_INIT}, got {mode!r}")


class SimVQ(ProjectedCodebook, nn.Module):
    def __init__(
        self,
        codebook_size: int,
        dim: int,
        *,
        beta: float = 0.25,  # encoder commitment weight (SimVQ config, legacy: false)
        memory_budget_mb: float = 64.0,  # cap on the distance block of the nearest search
    ) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.dim = dim
        self.beta = beta
        self.memory_budget_mb = memory_budget_mb
        self._make_codebook(codebook_size, dim)

    def lookup(self, indices: Tensor) -> Tensor:
        """Tokens W(C)[indices] (decoding generated token maps; through the projection)."""
        return self.codebook[indices]

    def forward(self, z: Tensor) -> VQOutput:
        """z: (..., D), quantized along the last dim."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat = z.reshape(-1, self.dim).float()
            codebook = self.codebook  # (K, D), carries the gradient to W
            indices = nearest_code(
                flat.detach(), codebook.detach(), memory_budget_mb=self.memory_budget_mb
            )
            tokens = codebook[indices]
            loss = self.beta * (flat - tokens.detach()).pow(2).mean()
            loss = loss + (tokens - flat.detach()).pow(2).mean()
            z_q = flat + (tokens - flat).detach()
            ppl = perplexity(indices, self.codebook_size)
        return VQOutput(z_q.view(z.shape), indices.view(z.shape[:-1]), loss, ppl)
