"""Codebook and coverage diagnostics shared by every experiment.

Codebook geometry and usage (the paper's Tab. 3 / Fig. 4 "Euc." and "Perp." columns):
- ``mean_pairwise_distance``: mean ||c_i - c_j|| over unordered pairs, low = shrinkage;
- ``perplexity``: exp(H(usage)), the effective number of codes in use;
- ``usage_fraction`` / ``dead_code_fraction``: share of codes used at least once / never.

Mode coverage on the synthetic Gaussian mixtures:
- ``mode_entropy``: -sum_k p_k ln p_k of the induced mode distribution (paper eq. 4-5);
- ``mode_coverage`` / ``modes_covered``: which modes the reconstructions still reach;
- ``count_peaks`` / ``peak_positions``: distinct peaks of a 1-D embedding distribution.

All tensor functions accept CPU or CUDA tensors, never build an autograd graph, and return
Python floats/ints (or tensors on the input's device where documented).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d
from scipy.signal import find_peaks
from torch import Tensor

from vqshrink.quantizers.search import nearest_code

__all__ = [
    "mean_pairwise_distance", "code_counts", "perplexity", "usage_fraction",
    "dead_code_fraction", "mode_assignment", "mode_entropy", "mode_coverage",
    "modes_covered", "peak_positions", "count_peaks", "codebook_report",
]


# ----------------------------------------------------------------------------- geometry


def mean_pairwise_distance(codebook: Tensor, *, memory_budget_mb: float = 64.0) -> float:
    """Exact mean Euclidean distance over the K(K-1)/2 unordered pairs i < j:

        (2 / (K (K-1))) * sum_{i<j} ||c_i - c_j||_2 .

    Computed in float64 on the centred codebook (distances are translation invariant, and
    centring shrinks the cancellation in ||a||^2 - 2 a.b + ||b||^2), one block of rows at
    a time against the codes at or after the block, each block <= ``memory_budget_mb``.
    For K < 2 there is no pair; the spread is defined as 0.0.
    """
    with torch.no_grad():
        c = codebook.detach().reshape(codebook.shape[0], -1).to(torch.float64)
        k = c.shape[0]
        if k < 2:
            return 0.0
        c = c - c.mean(0, keepdim=True)
        norms = (c * c).sum(1)
        rows = max(1, int(memory_budget_mb * 2**20) // (8 * k))
        total = torch.zeros((), dtype=torch.float64, device=c.device)
        for r0 in range(0, k, rows):
            r1 = min(k, r0 + rows)
            # squared distances of rows r0:r1 to codes r0:K
            sq = torch.addmm(norms[r0:], c[r0:r1], c[r0:].T, alpha=-2.0)
            sq.add_(norms[r0:r1, None]).clamp_(min=0.0).sqrt_()
            # inside the leading (r1-r0) square only the strict upper triangle is i < j
            total += sq[:, r1 - r0:].sum() + torch.triu(sq[:, : r1 - r0], diagonal=1).sum()
        return float(total) / (k * (k - 1) / 2)


# ----------------------------------------------------------------------------- usage


def code_counts(indices: Tensor, k: int) -> Tensor:
    """(k,) long histogram of code indices (any shape); raises if an index is outside [0, k)."""
    flat = indices.detach().reshape(-1).long()
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= k):
        raise ValueError(f"code indices must lie in [0, {k}); got range "
                         f"[{int(flat.min())}, {int(flat.max())}]")
    return torch.bincount(flat, minlength=k)


def _entropy(counts: Tensor) -> float:
    """Shannon entropy (nats) of counts / sum(counts), with 0 ln 0 = 0."""
    c = counts.detach().to(torch.float64)
    total = c.sum()
    if float(total) <= 0:
        raise ValueError("entropy of an empty histogram (all counts are zero)")
    p = c / total
    return float(-torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum())


def perplexity(counts: Tensor) -> float:
    """exp(H(p)), p = counts / sum(counts), natural log, 0 ln 0 = 0.

    Equals K for uniform use of K codes and 1 when a single code is used.
    """
    return math.exp(_entropy(counts))


def usage_fraction(counts: Tensor) -> float:
    """Fraction of codes used at least once: #{j : counts_j > 0} / K."""
    return float((counts > 0).sum()) / counts.numel()


def dead_code_fraction(counts: Tensor) -> float:
    """Fraction of codes never used: 1 - usage_fraction."""
    return 1.0 - usage_fraction(counts)


def codebook_report(codebook: Tensor, indices: Tensor, k: int | None = None) -> dict[str, float]:
    """The codebook columns of the paper's tables plus dead-code statistics.

    Keys: "euclidean" (mean pairwise distance), "perplexity", "usage", "dead_fraction".
    ``k`` defaults to the number of codebook rows.
    """
    k = codebook.shape[0] if k is None else k
    counts = code_counts(indices, k)
    return {
        "euclidean": mean_pairwise_distance(codebook),
        "perplexity": perplexity(counts),
        "usage": usage_fraction(counts),
        "dead_fraction": dead_code_fraction(counts),
    }


# ----------------------------------------------------------------------------- modes


def mode_assignment(points: Tensor, means: Tensor) -> Tensor:
    """(N,) index of the nearest mode mean of every point (squared L2, ties to lowest)."""
    return nearest_code(points, means)


def mode_entropy(points: Tensor, means: Tensor) -> float:
    """H = -sum_k p_k ln p_k, p_k = share of points whose nearest mode mean is k.

    The paper's diversity proxy (eq. 4-5): ln M when the points spread evenly over the M
    modes, lower when they concentrate on a few.
    """
    return _entropy(torch.bincount(mode_assignment(points, means), minlength=means.shape[0]))


def mode_coverage(
    data: Tensor,
    labels: Tensor,
    recon: Tensor,
    means: Tensor,
    *,
    radius_quantile: float = 0.95,  # r_k = this quantile of cluster k's own distances to mean k
) -> Tensor:
    """(M,) share of each mode's points whose reconstruction stays inside the mode.

    For mode k with points S_k = {i : labels_i = k}:
        r_k = quantile_{radius_quantile} { ||data_i - mean_k|| : i in S_k },
        f_k = |{i in S_k : ||recon_i - mean_k|| <= r_k}| / |S_k| .
    A mode without data points gets f_k = 0. Returned in float64 on the data's device.
    """
    with torch.no_grad():
        means = means.detach().to(torch.float64)
        lab = labels.detach().reshape(-1).long()
        centre = means[lab]
        d_data = (data.detach().to(torch.float64) - centre).norm(dim=1)
        d_rec = (recon.detach().to(torch.float64) - centre).norm(dim=1)
        frac = torch.zeros(means.shape[0], dtype=torch.float64, device=means.device)
        for k in range(means.shape[0]):
            own = lab == k
            if not bool(own.any()):
                continue
            radius = torch.quantile(d_data[own], radius_quantile)
            frac[k] = (d_rec[own] <= radius).to(torch.float64).mean()
        return frac


def modes_covered(
    data: Tensor,
    labels: Tensor,
    recon: Tensor,
    means: Tensor,
    *,
    radius_quantile: float = 0.95,  # radius r_k, see mode_coverage
    min_fraction: float = 0.5,  # mode k is covered when f_k >= this
) -> int:
    """Number of modes k with f_k >= ``min_fraction``, f_k from ``mode_coverage``: at least
    that share of cluster k's points is reconstructed within r_k of mean k, where r_k is
    the ``radius_quantile`` quantile of cluster k's own data distances to mean k."""
    frac = mode_coverage(data, labels, recon, means, radius_quantile=radius_quantile)
    return int((frac >= min_fraction).sum())


# ----------------------------------------------------------------------------- 1-D peaks


def _as_numpy_1d(values: Tensor | np.ndarray) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().to("cpu", torch.float64).numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


def peak_positions(
    values: Tensor | np.ndarray,
    *,
    bins: int = 200,  # histogram bins over [min, max]
    smooth_sigma_bins: float = 2.0,  # Gaussian smoothing of the histogram, in bins
    min_prominence: float = 0.05,  # peak prominence, as a share of the highest density
    noise_sigmas: float = 4.0,  # also demand this many sampling-noise sds of prominence (0: off)
) -> np.ndarray:
    """x positions (bin centres, ascending) of the distinct peaks of a 1-D distribution.

    The histogram of counts over [min, max] is zero-padded by 3 sigma on each side (so a
    maximum at the range's edge counts), smoothed with a Gaussian of s = ``smooth_sigma_bins``
    bins and searched with scipy.signal.find_peaks. A peak at bin i must have prominence

        >= max( min_prominence * max_j h_j ,  noise_sigmas * sqrt(h_i / (2 s sqrt(pi))) ),

    h the smoothed counts. The second term is the Poisson noise of a smoothed count
    (Var = lambda * sum_j w_j^2 = lambda / (2 s sqrt(pi)) for a unit-sum Gaussian kernel w):
    with few samples per bin, fixed 200-bin histograms of a single Gaussian otherwise show
    spurious sampling-noise peaks (about 4 of them at N = 1,000). Constant input has one
    peak; empty input none.
    """
    v = _as_numpy_1d(values)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.empty(0)
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return np.array([lo])
    hist, edges = np.histogram(v, bins=bins, range=(lo, hi))
    pad = int(math.ceil(3 * smooth_sigma_bins)) + 1
    dens = np.pad(hist.astype(np.float64), pad)
    if smooth_sigma_bins > 0:
        dens = gaussian_filter1d(dens, smooth_sigma_bins, mode="constant", cval=0.0)
    floor = np.full_like(dens, min_prominence * dens.max())
    if noise_sigmas > 0 and smooth_sigma_bins > 0:
        noise_sd = np.sqrt(dens / (2.0 * smooth_sigma_bins * math.sqrt(math.pi)))
        floor = np.maximum(floor, noise_sigmas * noise_sd)
    peaks, _ = find_peaks(dens, prominence=(floor, None))
    width = (hi - lo) / bins
    return lo + (peaks - pad + 0.5) * width


def count_peaks(
    values: Tensor | np.ndarray,
    *,
    bins: int = 200,
    smooth_sigma_bins: float = 2.0,
    min_prominence: float = 0.05,
    noise_sigmas: float = 4.0,
) -> int:
    """Number of distinct peaks of a 1-D distribution (see ``peak_positions``)."""
    return int(peak_positions(values, bins=bins, smooth_sigma_bins=smooth_sigma_bins,
                              min_prominence=min_prominence, noise_sigmas=noise_sigmas).size)
