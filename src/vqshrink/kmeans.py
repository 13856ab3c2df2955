"""Lloyd's k-means on torch tensors (CPU or CUDA), used to initialise VQ codebooks.

Objective (inertia): sum_i min_j ||x_i - mu_j||^2.

One iteration = assignment a_i = argmin_j ||x_i - mu_j||^2 (exact, memory-bounded, via
``nearest_code``) followed by the update mu_j = mean{x_i : a_i = j}. A centroid whose
cluster is empty keeps its previous value (the usual choice, e.g. in
lucidrains/vector-quantize-pytorch; faiss instead splits a large cluster). After the last
update one more assignment makes ``assignments``, ``counts`` and ``inertia`` consistent
with the returned centroids (as in scikit-learn).

Initialisation (``init``; default ``"random"``):
- ``"random"``: k distinct data points, uniformly. This is the k-means the paper cites
  (SoundStream, Zeghidour et al. 2021, "k-means on the first training batch") as
  lucidrains/vector-quantize-pytorch implements it (``kmeans``: initial means are a random
  sample of the input vectors, then Lloyd steps; faiss's default too).
- ``"kmeans++"`` (Arthur & Vassilvitskii 2007): the first centre uniform, each next one
  drawn with probability proportional to D(x)^2, the squared distance to the nearest
  centre chosen so far. This is inherently k sequential draws; each draw is a handful of
  O(N*D) tensor ops with no host-device synchronisation, so N=32,768, k=16,384 takes a few
  seconds on 2 CPU cores (comparable to 10 Lloyd iterations), and is fast on GPU. Kept as
  an option: it spreads the initial codebook (a larger codebook distance, a lower
  inertia); after VQ training the baseline's codebook ends where random seeding puts it
  and the deferred one is wider, so the measured gap grows (benchmarks/README.md, "Open
  choices").

Determinism: all randomness comes from a ``torch.Generator`` seeded with ``seed`` on the
data's device. On CPU results are bitwise reproducible; on CUDA ``index_add_`` uses float
atomics, so centroids may differ in the last bits between runs unless
``torch.use_deterministic_algorithms(True)`` is set.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vqshrink.quantizers.search import compute_dtype, nearest_code

__all__ = ["KMeansResult", "kmeans", "kmeans_plusplus", "random_init", "inertia_of"]


@dataclass
class KMeansResult:
    """Output of ``kmeans``; assignments, counts and inertia refer to ``centroids``."""

    centroids: Tensor  # (k, D) float32 (float64 if the data is float64), data's device
    assignments: Tensor  # (N,) long, nearest centroid of every point
    counts: Tensor  # (k,) long, cluster sizes (0 = empty cluster)
    inertia: float  # sum_i ||x_i - centroids[assignments_i]||^2, accumulated in float64
    iters_run: int  # Lloyd iterations performed (< iters when converged early)


def inertia_of(x: Tensor, centroids: Tensor, assignments: Tensor) -> float:
    """sum_i ||x_i - c_{a_i}||^2 from explicit differences, accumulated in float64."""
    diff = x.to(torch.float64) - centroids.to(torch.float64)[assignments]
    return float(diff.pow(2).sum())


def random_init(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k distinct rows of x chosen uniformly at random."""
    pick = torch.randperm(x.shape[0], generator=generator, device=x.device)[:k]
    return x[pick].clone()


def kmeans_plusplus(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding: P(next centre = x_i) = D(x_i)^2 / sum_j D(x_j)^2.

    D^2 is kept as a running minimum, updated per new centre c with one matrix-vector
    product: ||x||^2 - 2 x.c + ||c||^2. Sampling inverts the float64 cumulative sum with a
    pre-drawn uniform, so the loop never synchronises with the device. If all remaining
    D^2 are zero (fewer distinct points than k) the last point is taken, which duplicates
    an existing centre.
    """
    n = x.shape[0]
    xt = x.T.contiguous()  # (D, N): one GEMV per step is fastest in this layout
    xn = (x * x).sum(1)[None]  # (1, N)
    centres = torch.empty(k, x.shape[1], dtype=x.dtype, device=x.device)
    uniforms = torch.rand(k, generator=generator, device=x.device, dtype=torch.float64)
    idx = torch.randint(n, (1,), generator=generator, device=x.device)
    d2 = torch.full((1, n), float("inf"), dtype=x.dtype, device=x.device)
    new = torch.empty_like(d2)
    for j in range(k):
        c = x[idx]  # (1, D)
        centres[j : j + 1] = c
        if j == k - 1:
            break
        # new = ||x||^2 - 2 c.x + ||c||^2, then D^2 <- min(D^2, new); the chosen point is 0.
        torch.addmm(xn, c, xt, alpha=-2.0, out=new)
        new.add_((c * c).sum()).clamp_(min=0.0)
        torch.minimum(d2, new, out=d2)
        d2[0].index_fill_(0, idx, 0.0)
        cdf = torch.cumsum(d2[0], 0, dtype=torch.float64)
        target = uniforms[j] * cdf[-1:]
        idx = torch.searchsorted(cdf, target, right=True).clamp_(max=n - 1)
    return centres


def _update(x: Tensor, assign: Tensor, old: Tensor) -> tuple[Tensor, Tensor]:
    """mu_j = mean of the points assigned to j; empty clusters keep ``old[j]``."""
    k = old.shape[0]
    counts = torch.bincount(assign, minlength=k)
    sums = torch.zeros_like(old).index_add_(0, assign, x)
    safe = counts.clamp(min=1).to(x.dtype).unsqueeze(1)
    return torch.where(counts.unsqueeze(1) > 0, sums / safe, old), counts


def _assign(
    x: Tensor, centroids: Tensor, memory_budget_mb: float, *, with_inertia: bool
) -> tuple[Tensor, float]:
    """Nearest-centroid indices and (only if asked, else 0.0) the float64 sum of D^2."""
    if not with_inertia:
        return nearest_code(x, centroids, memory_budget_mb=memory_budget_mb), 0.0
    idx, d2 = nearest_code(x, centroids, memory_budget_mb=memory_budget_mb, return_distance=True)
    return idx, float(d2.sum(dtype=torch.float64))


def kmeans(
    x: Tensor,
    k: int,
    *,
    iters: int = 10,  # Lloyd iterations (assignment + update)
    init: str = "random",  # "random" (SoundStream / vector-quantize-pytorch) or "kmeans++"
    seed: int = 0,  # seeds a torch.Generator on x's device
    memory_budget_mb: float = 64.0,  # cap on the distance block of each assignment
    tol: float = 0.0,  # stop when relative inertia decrease <= tol (0: only at a fixed point)
) -> KMeansResult:
    """Cluster the rows of x (N, D) into k centroids with Lloyd's algorithm.

    Stops early when an assignment equals the previous one (a fixed point) or, if tol > 0,
    when (inertia_prev - inertia) <= tol * inertia_prev. Raises ValueError when k > N or
    k < 1. The data is processed in float32 (float64 if x is float64).
    """
    if x.dim() != 2:
        raise ValueError(f"x must be (N, D); got shape {tuple(x.shape)}")
    n = x.shape[0]
    if k < 1:
        raise ValueError(f"k must be >= 1, got k={k}")
    if k > n:
        raise ValueError(f"k-means needs at least k points: k={k} > N={n}")
    if init not in ("kmeans++", "random"):
        raise ValueError(f"init must be 'kmeans++' or 'random', got {init!r}")
    with torch.no_grad():
        x = x.detach().to(compute_dtype(x))
        gen = torch.Generator(device=x.device).manual_seed(seed)
        centroids = kmeans_plusplus(x, k, gen) if init == "kmeans++" else random_init(x, k, gen)
        assign, prev_inertia = _assign(x, centroids, memory_budget_mb, with_inertia=tol > 0)
        iters_run = 0
        for _ in range(iters):
            centroids, _ = _update(x, assign, centroids)
            iters_run += 1
            new_assign, cur = _assign(x, centroids, memory_budget_mb, with_inertia=tol > 0)
            converged = torch.equal(new_assign, assign)
            assign = new_assign
            if converged or (tol > 0 and prev_inertia - cur <= tol * prev_inertia):
                break
            prev_inertia = cur
        counts = torch.bincount(assign, minlength=k)
        return KMeansResult(centroids=centroids, assignments=assign, counts=counts,
                            inertia=inertia_of(x, centroids, assign), iters_run=iters_run)
