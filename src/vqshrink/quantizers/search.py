"""Exact nearest-code search under squared Euclidean distance, in memory-bounded blocks.

For a query z and a code c,

    ||z - c||^2 = ||z||^2 - 2 z.c + ||c||^2 .

The term ||z||^2 is the same for every code of one query, so the nearest code is

    argmin_k ( ||c_k||^2 - 2 z.c_k ),

one ``addmm`` (a GEMM with the code norms as the bias row) followed by a row-wise min.
The (rows x codes) block of these partial distances is the only large temporary; it is
computed for a few query rows at a time so that it never exceeds ``memory_budget_mb``.
On CPU the block is additionally kept near the size of the last-level cache (measured on
a 2-core EPYC with 32 MiB L3: a 4-16 MiB block runs *faster* than one full-matrix GEMM,
because the GEMM output never round-trips through main memory).

The row-wise argmin is two-level: codes are split into groups of G, ``amin`` gives each
group's minimum, ``argmin`` picks the first group holding the row minimum, and a second
``argmin`` over that group's G values gives the index. On CPU ``torch.argmin`` over a
long row is ~15x slower than ``amin`` (it does not vectorise), and it cost as much as the
GEMM itself; the two-level form makes it negligible. The first group holding the minimum
contains its first occurrence, so ties still resolve to the lowest code index, exactly as
``torch.argmin`` over the full matrix. The code axis is padded to a multiple of G with
dummy codes whose distance is +inf.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["nearest_code", "sq_dist_to_codes", "block_shape"]

# Target size of the distance block on CPU, well inside a typical 32 MiB L3 (see module doc).
CPU_BLOCK_BYTES = 16 * 2**20
# On CPU never shrink the block below this many query rows for cache reasons alone: a GEMM
# with very few rows is slow. The memory budget still wins over this floor.
CPU_MIN_ROWS = 64
# Largest code group of the two-level argmin; smaller for small codebooks so that the
# padding stays below 1/8 of the codes. Below MIN_GROUP a plain argmin is used.
MAX_GROUP = 128
MIN_GROUP = 8


def group_size(k: int) -> int:
    """Group size G of the two-level argmin: a power of two <= min(MAX_GROUP, k / 8), or 1."""
    g = MAX_GROUP
    while g > 1 and g * 8 > k:
        g //= 2
    return g if g >= MIN_GROUP else 1


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """float64 if any input is float64, otherwise float32 (half/bfloat16/int are upcast)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def block_shape(
    n: int, k: int, *, elem_bytes: int, memory_budget_mb: float, device: torch.device
) -> tuple[int, int]:
    """(rows, cols) of the distance block: rows*cols*elem_bytes <= budget (and >= 1x1).

    Whole code rows are used whenever one row fits the budget; otherwise one query row is
    split into code tiles of ``budget // elem_bytes`` codes. On CPU the row count is capped
    so that the block stays near ``CPU_BLOCK_BYTES`` but not below ``CPU_MIN_ROWS`` rows.
    """
    budget = max(int(memory_budget_mb * 2**20), elem_bytes)
    row_bytes = k * elem_bytes
    if row_bytes > budget:
        return 1, max(1, budget // elem_bytes)
    rows = budget // row_bytes
    if device.type == "cpu":
        rows = min(rows, max(CPU_BLOCK_BYTES // row_bytes, CPU_MIN_ROWS))
    return max(1, min(rows, n)), k


def sq_dist_to_codes(z: Tensor, codebook: Tensor) -> Tensor:
    """Full (N, K) matrix of ||z_i - c_k||^2, clamped at 0; no autograd graph.

    Materialises N*K values: meant for small inputs and tests, not for large searches.
    """
    with torch.no_grad():
        dt = compute_dtype(z, codebook)
        z = z.detach().to(dt)
        c = codebook.detach().to(dt)
        d = torch.addmm((c * c).sum(1), z, c.T, alpha=-2.0)
        return d.add_((z * z).sum(1, keepdim=True)).clamp_(min=0.0)


def _min_over_code_tiles(
    zb: Tensor, ct: Tensor, cn: Tensor, cols: int, buf: Tensor
) -> tuple[Tensor, Tensor]:
    """Row-wise (min, argmin) of cn - 2 zb @ ct, one tile of ``cols`` codes at a time.

    A later tile replaces the running best only when strictly smaller, so ties keep the
    lowest index.
    """
    k = ct.shape[1]
    best_val = torch.full((zb.shape[0],), float("inf"), dtype=zb.dtype, device=zb.device)
    best_idx = torch.zeros(zb.shape[0], dtype=torch.long, device=zb.device)
    for c0 in range(0, k, cols):
        c1 = min(k, c0 + cols)
        block = torch.addmm(cn[c0:c1], zb, ct[:, c0:c1], alpha=-2.0, out=buf[:, : c1 - c0])
        val, idx = block.min(dim=1)
        better = val < best_val
        best_val = torch.where(better, val, best_val)
        best_idx = torch.where(better, idx + c0, best_idx)
    return best_val, best_idx


def _padded_codes(c: Tensor, kp: int) -> tuple[Tensor, Tensor]:
    """(D, kp) transposed codes and (kp,) norms; the kp - K dummy codes get norm +inf."""
    k, d = c.shape
    ct = torch.zeros(d, kp, dtype=c.dtype, device=c.device)
    ct[:, :k] = c.T
    cn = torch.full((kp,), float("inf"), dtype=c.dtype, device=c.device)
    cn[:k] = (c * c).sum(1)
    return ct, cn


def _row_argmin(block: Tensor, g: int, *, with_values: bool) -> tuple[Tensor, Tensor | None]:
    """Row-wise (argmin, min) of a (B, K) block, K a multiple of g, first index on ties.

    g > 1: group minima m_{b,j} = min_{t<g} block[b, j*g + t]; j* = argmin_j m_{b,j} (the
    first group holding the row minimum); index = j*·g + argmin_t block[b, j*·g + t].
    """
    if g == 1:
        if with_values:
            val, idx = block.min(dim=1)
            return idx, val
        return block.argmin(dim=1), None
    b = block.shape[0]
    grouped = block.view(b, -1, g)
    group_min = grouped.amin(dim=2)  # (B, K/g)
    gi = group_min.argmin(dim=1)  # (B,)
    rows = torch.arange(b, device=block.device)
    within = grouped[rows, gi].argmin(dim=1)  # (B,) position inside the group
    val = group_min[rows, gi] if with_values else None
    return gi * g + within, val


def _search(
    z: Tensor, c: Tensor, indices: Tensor, partial: Tensor | None, memory_budget_mb: float
) -> None:
    """Fill ``indices`` (and ``partial`` = min_k ||c_k||^2 - 2 z.c_k, if given) block by block."""
    n, k = z.shape[0], c.shape[0]
    g = group_size(k)
    kp = -(-k // g) * g  # codes padded to a multiple of the group size
    rows, cols = block_shape(n, kp, elem_bytes=z.element_size(),
                             memory_budget_mb=memory_budget_mb, device=z.device)
    if cols == kp:  # whole (padded) code rows fit: GEMM + two-level argmin per row block
        ct, cn = _padded_codes(c, kp)
        buf = torch.empty(rows, kp, dtype=z.dtype, device=z.device)
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            block = torch.addmm(cn, z[r0:r1], ct, alpha=-2.0, out=buf[: r1 - r0])
            idx, val = _row_argmin(block, g, with_values=partial is not None)
            indices[r0:r1] = idx
            if partial is not None:
                partial[r0:r1] = val
        return
    # budget below one row of codes: code tiles with a running minimum
    ct, cn = c.T.contiguous(), (c * c).sum(1)
    rows, cols = block_shape(n, k, elem_bytes=z.element_size(),
                             memory_budget_mb=memory_budget_mb, device=z.device)
    buf = torch.empty(rows, cols, dtype=z.dtype, device=z.device)
    for r0 in range(0, n, rows):
        r1 = min(n, r0 + rows)
        val, idx = _min_over_code_tiles(z[r0:r1], ct, cn, cols, buf)
        indices[r0:r1] = idx
        if partial is not None:
            partial[r0:r1] = val


def nearest_code(
    z: Tensor,
    codebook: Tensor,
    *,
    memory_budget_mb: float = 64.0,  # upper bound on the distance block, in MiB
    return_distance: bool = False,  # also return ||z_i - c_idx||^2 (clamped at 0)
) -> Tensor | tuple[Tensor, Tensor]:
    """Index of the nearest code for every row of ``z``: argmin_k ||z_i - c_k||^2.

    Args:
        z: (N, D) queries; any float dtype, any device; may require grad (not tracked).
        codebook: (K, D) codes on the same device.
        memory_budget_mb: the (rows x codes) distance block never exceeds this; a budget
            smaller than one code row splits the codes into tiles.
        return_distance: if True also return the (N,) squared distances.

    Returns:
        (N,) long indices, ties to the lowest index; with ``return_distance`` a tuple
        (indices, sq_dist) where sq_dist is in the compute dtype (float32, or float64 when
        an input is float64). Math runs in that dtype even for half/bfloat16 inputs.

    Extra memory besides the block: a transposed, padded copy of the codebook (D*K) and
    its norms (K), i.e. about the size of the input codebook, plus O(rows * K / G) for the
    group minima. Inputs must be finite (a NaN distance may win the argmin).
    """
    if z.dim() != 2 or codebook.dim() != 2:
        raise ValueError(f"z must be (N, D) and codebook (K, D); got {tuple(z.shape)} and "
                         f"{tuple(codebook.shape)}")
    if z.shape[1] != codebook.shape[1]:
        raise ValueError(f"dimension mismatch: z has D={z.shape[1]}, "
                         f"codebook has D={codebook.shape[1]}")
    if codebook.shape[0] == 0:
        raise ValueError("codebook is empty (K=0)")
    with torch.no_grad():
        dt = compute_dtype(z, codebook)
        z = z.detach().to(dt).contiguous()
        c = codebook.detach().to(device=z.device, dtype=dt)
        n = z.shape[0]
        indices = torch.empty(n, dtype=torch.long, device=z.device)
        partial = torch.empty(n, dtype=dt, device=z.device) if return_distance else None
        if n > 0:
            _search(z, c, indices, partial, memory_budget_mb)
        if partial is None:
            return indices
        return indices, partial.add_((z * z).sum(1)).clamp_(min=0.0)
