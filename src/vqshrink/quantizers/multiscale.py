"""VAR's multi-scale residual quantizer (Tian et al. 2024, "Visual Autoregressive Modeling").

Facts from FoundationVision/VAR ``models/quant.py`` class ``VectorQuantizer2`` (notes Sec. 3.1):
- ONE codebook shared by every scale; scales ``patch_nums`` small to large, the last one equal
  to the latent resolution (VAR: 1,2,3,4,5,6,8,10,13,16 -> 680 tokens for a 16x16 latent).
- Residual quantization of a feature map f (B, C, H, W), starting from rest = sg(f), f_hat = 0:
  per scale k: area-downsample rest to (p_k, p_k) (none at full size), nearest token (squared
  L2), look the tokens up, bicubic-upsample to (H, W) (none at full size), apply phi_k,
  f_hat += h_k, rest -= h_k.
- phi(h) = (1 - r) h + r conv3x3(h), r = quant_resi = 0.5; ``share_quant_resi=4`` convs shared
  over the scales, scale k picks the conv whose tick in linspace(1/3/K, 1 - 1/3/K, K) is nearest
  to k / (S - 1) (0: one conv per scale, 1: one conv for all).
- loss = mean over scales of beta * ||sg(f_hat_k) - f||^2 + ||f_hat_k - sg(f)||^2 (f_hat_k the
  running sum after scale k), beta = 0.25; output f + sg(f_hat - f) (straight-through).
- Codebook update: LEARNED BY THE LOSS (the second term reaches the codebook and the phi convs
  through f_hat). VAR uses no EMA codebook update; its only EMA (``ema_vocab_hit_SV``) tracks
  per-scale code usage for logging. Note the decoder's gradient does not reach the codebook
  or phi: it goes straight through to the encoder.
- Codebook init: VAR's ``nn.Embedding`` default N(0, 1) (its ``eini`` helper is not called);
  ``init_codebook`` overwrites it with k-means centroids.
Nearest search and the loss run in float32 with autocast off, as VAR does.

Input is channels-FIRST (B, C, H, W), VAR's convention, unlike the per-vector quantizers.
``indices`` in the output is a list of (B, p_k, p_k) maps; the perplexity pools all scales.

:class:`MultiScaleSimVQ` is the same quantizer with SimVQ's codebook parameterisation (paper
Table 2, "VAR Tokenizer + SimVQ"): the shared codebook is W(C) = C W^T + b with C frozen and
only the linear layer W, b trained (youngsheen/SimVQ ``quantize.py``, notes Sec. 2.1). Every
step that reads the codebook (nearest search, lookup, decode) reads W(C). A k-means init sets
C := centroids, W := I, b := 0, so that W(C) equals the centroids, as :class:`SimVQ` does.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqshrink.quantizers.search import nearest_code
from vqshrink.quantizers.simvq import ProjectedCodebook
from vqshrink.quantizers.vq import VQOutput, check_init_shape

VAR_PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)  # VAR arg_util '256' schedule


class Phi(nn.Conv2d):
    """h -> (1 - r) h + r conv3x3(h), VAR's quant_resi."""

    def __init__(self, dim: int, ratio: float) -> None:
        super().__init__(dim, dim, kernel_size=3, padding=1)
        self.ratio = abs(ratio)

    def forward(self, h: Tensor) -> Tensor:
        return h * (1 - self.ratio) + super().forward(h) * self.ratio


class MultiScaleQuantizer(nn.Module):
    def __init__(
        self,
        codebook_size: int,
        dim: int,
        *,
        patch_nums: tuple[int, ...] = VAR_PATCH_NUMS,  # scales, small to large; last = latent size
        beta: float = 0.25,  # commitment weight (VAR VectorQuantizer2 default)
        quant_resi: float = 0.5,  # r of phi (VAR default); 0 = no phi convs
        share_quant_resi: int = 4,  # number of phi convs (VAR default 4); 0 = one per scale
        memory_budget_mb: float = 64.0,  # cap on the distance block of the nearest search
    ) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        self.dim = dim
        self.patch_nums = tuple(int(p) for p in patch_nums)
        self.beta = beta
        self.memory_budget_mb = memory_budget_mb
        self._make_codebook(codebook_size, dim)
        n_phi = share_quant_resi or len(self.patch_nums)
        if abs(quant_resi) > 1e-6:
            self.phis = nn.ModuleList(Phi(dim, quant_resi) for _ in range(n_phi))
        else:
            self.phis = nn.ModuleList(nn.Identity() for _ in range(n_phi))
        k = n_phi
        m = 3 if k == 4 else 2  # VAR's tick margins
        self.ticks = np.linspace(1 / m / k, 1 - 1 / m / k, k)

    def _make_codebook(self, codebook_size: int, dim: int) -> None:
        self.codebook = nn.Parameter(torch.randn(codebook_size, dim))  # nn.Embedding default

    @property
    def num_tokens(self) -> int:
        return sum(p * p for p in self.patch_nums)

    def phi(self, scale: int) -> nn.Module:
        """The phi of scale index ``scale`` (nearest tick to scale / (S - 1))."""
        at = scale / (len(self.patch_nums) - 1) if len(self.patch_nums) > 1 else 0.0
        return self.phis[int(np.argmin(np.abs(self.ticks - at)))]

    @torch.no_grad()
    def init_codebook(self, centroids: Tensor, counts: Tensor | None = None) -> None:
        """Set the shared codebook (e.g. k-means centroids); ``counts`` unused (no EMA)."""
        check_init_shape(centroids, self.codebook.shape)
        self.codebook.copy_(centroids)

    def lookup(self, indices: Tensor) -> Tensor:
        """Raw tokens for integer indices (no upsampling, no phi)."""
        return self.codebook[indices]

    # -- the two steps every path shares, so decode reproduces forward bit for bit --------
    def _nearest(self, rest: Tensor, pn: int) -> Tensor:
        b, c, h, w = rest.shape
        if (pn, pn) != (h, w):
            rest = F.interpolate(rest, size=(pn, pn), mode="area")
        flat = rest.permute(0, 2, 3, 1).reshape(-1, c)
        idx = nearest_code(flat, self.codebook.detach(), memory_budget_mb=self.memory_budget_mb)
        return idx.view(b, pn, pn)

    def _contribution(self, idx: Tensor, scale: int, size: tuple[int, int]) -> Tensor:
        h = self.codebook[idx].permute(0, 3, 1, 2)
        if tuple(h.shape[-2:]) != tuple(size):
            h = F.interpolate(h, size=size, mode="bicubic")
        return self.phi(scale)(h.contiguous())

    def _check(self, f: Tensor) -> None:
        if f.shape[1] != self.dim or f.shape[-2:] != (self.patch_nums[-1],) * 2:
            raise ValueError(
                f"multi-scale quantizer expects (B, {self.dim}, {self.patch_nums[-1]}, "
                f"{self.patch_nums[-1]}), got {tuple(f.shape)}"
            )

    def forward(self, f: Tensor) -> VQOutput:
        self._check(f)
        with torch.autocast(device_type=f.device.type, enabled=False):
            f = f.float()
            f_ng = f.detach()
            rest = f_ng.clone()
            f_hat = torch.zeros_like(f_ng)
            loss = f.new_zeros(())
            indices = []
            for si, pn in enumerate(self.patch_nums):
                idx = self._nearest(rest, pn)
                h = self._contribution(idx, si, f.shape[-2:])
                f_hat = f_hat + h
                rest = rest - h.detach()
                loss = loss + self.beta * F.mse_loss(f_hat.detach(), f) + F.mse_loss(f_hat, f_ng)
                indices.append(idx)
            loss = loss / len(self.patch_nums)
            z_q = f + (f_hat - f).detach()
            flat = torch.cat([i.reshape(-1) for i in indices])
            counts = torch.bincount(flat, minlength=self.codebook_size).float()
            p = counts / counts.sum()
            ppl = torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())
        return VQOutput(z_q, indices, loss, ppl)

    @torch.no_grad()
    def encode_indices(self, f: Tensor) -> list[Tensor]:
        """Token maps [(B, p_k, p_k)] of f (B, C, H, W), small to large."""
        self._check(f)
        with torch.autocast(device_type=f.device.type, enabled=False):
            rest = f.detach().float().clone()
            out = []
            for si, pn in enumerate(self.patch_nums):
                idx = self._nearest(rest, pn)
                rest = rest - self._contribution(idx, si, f.shape[-2:])
                out.append(idx)
        return out

    def decode_indices(self, indices: list[Tensor]) -> Tensor:
        """f_hat (B, C, H, W) from the token maps: the forward's f_hat, exactly."""
        if len(indices) != len(self.patch_nums):
            raise ValueError(f"expected {len(self.patch_nums)} token maps, got {len(indices)}")
        size = (self.patch_nums[-1], self.patch_nums[-1])
        with torch.autocast(device_type=self.codebook.device.type, enabled=False):
            f_hat = None
            for si, idx in enumerate(indices):
                h = self._contribution(idx, si, size)
                f_hat = torch.zeros_like(h) + h if f_hat is None else f_hat + h
        return f_hat

    # -- VAR transformer support (FoundationVision/VAR ``VectorQuantizer2``) ---------------
    def split_scales(self, tokens: Tensor) -> list[Tensor]:
        """Token maps [(B, p_k, p_k)] from a flat (B, L) sequence: scales small to large, each
        p x p row-major, concatenated (the token files' layout)."""
        if tokens.ndim != 2 or tokens.shape[1] != self.num_tokens:
            raise ValueError(f"expected (B, {self.num_tokens}) tokens, got {tuple(tokens.shape)}")
        out, at = [], 0
        for pn in self.patch_nums:
            out.append(tokens[:, at : at + pn * pn].reshape(-1, pn, pn))
            at += pn * pn
        return out

    def flatten_scales(self, indices: list[Tensor]) -> Tensor:
        """The inverse of :meth:`split_scales`: [(B, p_k, p_k)] -> (B, L)."""
        if len(indices) != len(self.patch_nums):
            raise ValueError(f"expected {len(self.patch_nums)} token maps, got {len(indices)}")
        for idx, pn in zip(indices, self.patch_nums):
            if tuple(idx.shape[-2:]) != (pn, pn):
                raise ValueError(f"token map of shape {tuple(idx.shape)} for scale {pn}")
        return torch.cat([idx.reshape(idx.shape[0], -1) for idx in indices], dim=1)

    def next_input(
        self, si: int, f_hat: Tensor | None, idx: Tensor
    ) -> tuple[Tensor, Tensor | None]:
        """One step of VAR's ``get_next_autoregressive_input``: add scale ``si``'s contribution
        phi_si(upsample(codebook[idx])) to the running f_hat (B, C, H, W) (``None`` = zeros) and
        return (f_hat, next_in) with next_in = area-downsample(f_hat) to p_{si+1}, flattened
        row-major to (B, p_{si+1}^2, C); ``None`` after the last scale. Float32, autocast off."""
        size = (self.patch_nums[-1], self.patch_nums[-1])
        with torch.autocast(device_type=idx.device.type, enabled=False):
            h = self._contribution(idx, si, size)
            f_hat = h if f_hat is None else f_hat.float() + h
            if si + 1 >= len(self.patch_nums):
                return f_hat, None
            pn = self.patch_nums[si + 1]
            nxt = f_hat if (pn, pn) == size else F.interpolate(f_hat, size=(pn, pn), mode="area")
            return f_hat, nxt.flatten(2).transpose(1, 2)

    @torch.no_grad()
    def teacher_inputs(self, indices: list[Tensor]) -> Tensor:
        """VAR's teacher-forcing input (``idxBl_to_var_input``): for k = 0..S-2 the running f_hat
        after scale k, area-downsampled to p_{k+1}, flattened and concatenated ->
        (B, L - p_0^2, C). Built with :meth:`next_input`, so it equals the inference path."""
        if len(indices) != len(self.patch_nums):
            raise ValueError(f"expected {len(self.patch_nums)} token maps, got {len(indices)}")
        f_hat, outs = None, []
        for si in range(len(self.patch_nums) - 1):
            f_hat, nxt = self.next_input(si, f_hat, indices[si])
            outs.append(nxt)
        if not outs:
            return self.codebook.new_zeros(indices[0].shape[0], 0, self.dim).float()
        return torch.cat(outs, dim=1)


class MultiScaleSimVQ(ProjectedCodebook, MultiScaleQuantizer):
    """VAR's multi-scale quantizer over a SimVQ codebook W(C) (see the module docstring)."""
