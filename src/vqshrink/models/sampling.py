"""Sampling pieces shared by the generators (MaskGIT, VAR, LlamaGen).

Every random draw takes an explicit ``torch.Generator`` so that a sample set is a function of
its seed alone (the same seed gives the same tokens, whatever ran before in the process).

Classifier-free guidance, one formula for all three generators::

    guided = cond + w * (cond - uncond)

``w = 0`` is the conditional model alone. The references write it in two ways that are this
one: VAR (``models/var.py``) and MaskGIT-pytorch (``Sampler``) use ``(1 + t) cond - t uncond``
with ``t`` the guidance weight (w = t); LlamaGen (``autoregressive/models/generate.py``) uses
``uncond + s (cond - uncond)`` with ``s`` its ``cfg_scale`` (w = s - 1).
"""

from __future__ import annotations

import torch
from torch import Tensor


def cfg_logits(cond: Tensor, uncond: Tensor, w: float | Tensor) -> Tensor:
    """Classifier-free guidance ``cond + w (cond - uncond)`` (see the module docstring)."""
    return cond + w * (cond - uncond)


def top_k_top_p(logits: Tensor, top_k: int = 0, top_p: float = 0.0) -> Tensor:
    """Logits with everything outside the top-k and outside the top-p nucleus set to -inf.

    ``top_k <= 0`` and ``top_p <= 0`` (or ``>= 1``) switch the filter off, as VAR's
    ``sample_with_top_k_top_p_``. The nucleus keeps the smallest set of most likely tokens
    whose probability reaches ``top_p`` (always at least the most likely one).
    """
    out = logits
    vocab = logits.shape[-1]
    if 0 < top_k < vocab:
        kth = torch.topk(out, top_k, dim=-1).values[..., -1:]
        out = out.masked_fill(out < kth, float("-inf"))
    if 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(out, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the mass of the tokens before it already reaches top_p
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, float("-inf"))
    return out


def sample_logits(
    logits: Tensor,
    generator: torch.Generator | None,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 0.0,
) -> Tensor:
    """One token per row of ``logits`` (..., V): softmax(logits / T) after top-k / top-p.

    Inverse-CDF sampling: one uniform draw per row against the float64 running sum of the
    probabilities (``torch.multinomial`` draws V exponentials per row instead, which made it
    most of VAR's sampling time on a CPU at V = 16,384). A token of probability 0 owns an
    empty interval of the CDF and is never drawn.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    filtered = top_k_top_p(logits.float() / temperature, top_k, top_p)
    vocab = logits.shape[-1]
    cdf = filtered.softmax(-1).reshape(-1, vocab).double().cumsum_(-1)
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device,
                   dtype=torch.float64) * cdf[:, -1:]
    idx = torch.searchsorted(cdf, u, right=True).clamp_(max=vocab - 1)
    return idx.view(logits.shape[:-1])


def gumbel(shape: torch.Size | tuple[int, ...], generator: torch.Generator | None,
           device: torch.device | str) -> Tensor:
    """Standard Gumbel noise -log(-log(U)), U ~ U(0, 1), drawn from ``generator``."""
    u = torch.rand(shape, generator=generator, device=device)
    return -torch.log(-torch.log(u.clamp(1e-20, 1.0 - 1e-7)))
