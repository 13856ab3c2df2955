"""Exact nearest-code search and k-means against brute-force references."""

from __future__ import annotations

import pytest
import torch

from vqshrink.kmeans import KMeansResult, kmeans, kmeans_plusplus
from vqshrink.quantizers import nearest_code
from vqshrink.quantizers.search import CPU_BLOCK_BYTES, block_shape, group_size, sq_dist_to_codes


def brute_force(z: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: float64 differences, argmin over the full matrix."""
    d = ((z.double()[:, None, :] - c.double()[None, :, :]) ** 2).sum(-1)
    return d.argmin(1), d.min(1).values


# ----------------------------------------------------------------------------- search


@pytest.mark.parametrize("n,k,d,budget", [
    *[(n, k, d, b) for n, k, d in [(1, 1, 1), (97, 13, 3), (300, 257, 16), (64, 1000, 8)]
      for b in (64.0, 1e-3)],  # whole-row chunks: 1 chunk; a few rows per chunk
    (40, 257, 16, 1e-6), (9, 1000, 8, 5e-4),  # budget below one row: code tiles
])
def test_nearest_code_matches_brute_force(n: int, k: int, d: int, budget: float) -> None:
    g = torch.Generator().manual_seed(n + k)
    z = torch.randn(n, d, generator=g, dtype=torch.float64)
    c = torch.randn(k, d, generator=g, dtype=torch.float64)
    idx, dist = nearest_code(z, c, memory_budget_mb=budget, return_distance=True)
    ref_idx, ref_dist = brute_force(z, c)
    assert idx.dtype == torch.long and idx.shape == (n,)
    assert torch.equal(idx, ref_idx)
    torch.testing.assert_close(dist, ref_dist, rtol=1e-9, atol=1e-9)
    assert torch.equal(nearest_code(z, c, memory_budget_mb=budget), idx)


def test_nearest_code_float32_agrees_with_cdist() -> None:
    g = torch.Generator().manual_seed(0)
    z, c = torch.randn(2000, 32, generator=g), torch.randn(500, 32, generator=g)
    idx, dist = nearest_code(z, c, return_distance=True)
    assert dist.dtype == torch.float32
    ref = torch.cdist(z.double(), c.double()).argmin(1)
    # float32 rounding may flip genuine near-ties; they must be near-ties
    flips = idx != ref
    assert flips.float().mean() < 1e-3
    d_ours = ((z[flips].double() - c[idx[flips]].double()) ** 2).sum(1)
    d_ref = ((z[flips].double() - c[ref[flips]].double()) ** 2).sum(1)
    torch.testing.assert_close(d_ours, d_ref, rtol=1e-4, atol=1e-5)


def test_block_shape_respects_budget() -> None:
    cpu = torch.device("cpu")
    # budget below one row: one row, code tiles of budget // 4 codes
    assert block_shape(10, 1000, elem_bytes=4, memory_budget_mb=1000 / 2**20,
                       device=cpu) == (1, 250)
    # generous budget, CPU: cache-sized block, never more rows than N
    rows, cols = block_shape(100_000, 16_384, elem_bytes=4, memory_budget_mb=1024,
                             device=cpu)
    assert cols == 16_384 and rows * cols * 4 <= CPU_BLOCK_BYTES
    assert block_shape(7, 16, elem_bytes=4, memory_budget_mb=64, device=cpu) == (7, 16)
    # on an accelerator the whole budget is used
    rows, _ = block_shape(100_000, 16_384, elem_bytes=4, memory_budget_mb=64,
                          device=torch.device("cuda"))
    assert rows * 16_384 * 4 == 64 * 2**20
    # the budget always wins over the CPU minimum row count
    rows, cols = block_shape(1000, 4096, elem_bytes=4, memory_budget_mb=0.05, device=cpu)
    assert rows * cols * 4 <= 0.05 * 2**20


def test_ties_go_to_lowest_index_across_tiles() -> None:
    # integer-valued data: every distance is exact, duplicated codes tie exactly
    c = torch.tensor([[3.0, 0.0], [1.0, 1.0], [5.0, 5.0], [1.0, 1.0], [1.0, 1.0]])
    z = torch.tensor([[1.0, 1.0], [2.0, 1.0], [4.0, 4.0], [0.0, 2.0]])
    expected = torch.cdist(z, c).argmin(1)
    assert expected.tolist() == [1, 1, 2, 1]
    for budget in (64.0, 8 / 2**20, 4 / 2**20):  # whole rows, 2-code tiles, 1-code tiles
        assert nearest_code(z, c, memory_budget_mb=budget).tolist() == expected.tolist()
    # equidistant from codes 0 and 1 (no duplicate): lowest index
    c2 = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert nearest_code(torch.zeros(3, 2), c2, memory_budget_mb=4 / 2**20).tolist() == [0, 0, 0]


@pytest.mark.parametrize("k", [1000, 1024, 2049])
def test_grouped_argmin_ties_and_padding(k: int) -> None:
    # group_size(k) > 1 here, and k = 1000 / 2049 are padded with +inf dummy codes
    assert group_size(k) > 1
    g = torch.Generator().manual_seed(k)
    c = torch.randint(-20, 21, (k, 4), generator=g).double()
    target = torch.tensor([50.0, 50.0, 50.0, 50.0], dtype=torch.float64)
    dups = [7, 130, 511, k - 1]  # the same code in several groups, last one in the pad group
    c[dups] = target
    z = torch.stack([target, torch.zeros_like(target), torch.tensor([100.0, 0, 0, 0]).double()])
    idx, dist = nearest_code(z, c, return_distance=True)
    ref_idx, ref_dist = brute_force(z, c)
    assert idx[0] == 7 and torch.equal(idx, ref_idx) and dist[0] == 0
    torch.testing.assert_close(dist, ref_dist)
    # every code equidistant from the query: index 0
    ring = torch.zeros(k, 2)
    ring[:, 0] = torch.where(torch.arange(k) % 2 == 0, 1.0, -1.0)
    assert nearest_code(torch.zeros(5, 2), ring).tolist() == [0] * 5
    # the nearest code in the last, partly padded group is found
    far = torch.full((k, 3), 100.0)
    far[k - 1] = 0.0
    assert nearest_code(torch.zeros(1, 3), far).tolist() == [k - 1]


def test_n_not_divisible_by_chunk_and_tiny_budget() -> None:
    g = torch.Generator().manual_seed(1)
    z, c = torch.randn(1001, 4, generator=g).double(), torch.randn(33, 4, generator=g).double()
    ref, _ = brute_force(z, c)
    for budget in (33 * 8 * 7 / 2**20, 1e-9):  # 7 rows per chunk; below one element
        assert torch.equal(nearest_code(z, c, memory_budget_mb=budget), ref)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_use_float32_math(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(2)
    z = torch.randn(256, 8, generator=g).to(dtype)
    c = torch.randn(40, 8, generator=g).to(dtype)
    idx, dist = nearest_code(z, c, return_distance=True)
    assert dist.dtype == torch.float32
    ref, ref_d = brute_force(z.float(), c.float())
    assert torch.equal(idx, ref)
    torch.testing.assert_close(dist.double(), ref_d, rtol=1e-4, atol=1e-4)


def test_no_autograd_graph_and_errors() -> None:
    z = torch.randn(10, 3, requires_grad=True)
    c = torch.nn.Parameter(torch.randn(4, 3))
    idx, dist = nearest_code(z, c, return_distance=True)
    assert not idx.requires_grad and not dist.requires_grad and dist.grad_fn is None
    assert nearest_code(torch.empty(0, 3), c).shape == (0,)
    with pytest.raises(ValueError, match="dimension"):
        nearest_code(torch.randn(2, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match="empty"):
        nearest_code(torch.randn(2, 3), torch.empty(0, 3))


def test_sq_dist_to_codes_matches_cdist() -> None:
    g = torch.Generator().manual_seed(3)
    z, c = torch.randn(50, 6, generator=g).double(), torch.randn(20, 6, generator=g).double()
    torch.testing.assert_close(sq_dist_to_codes(z, c), torch.cdist(z, c) ** 2)


# ----------------------------------------------------------------------------- k-means


def blobs(n_per: int = 200, centres: int = 8, d: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(centres, d, generator=g) * 10
    return (mu[:, None, :] + torch.randn(centres, n_per, d, generator=g)).reshape(-1, d)


@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_kmeans_inertia_close_to_sklearn(init: str) -> None:
    from sklearn.cluster import KMeans

    x = blobs()
    sk_init = "k-means++" if init == "kmeans++" else "random"
    ours = [kmeans(x, 8, iters=50, init=init, seed=s) for s in range(5)]
    assert isinstance(ours[0], KMeansResult)
    assert all(r.inertia == r.inertia and r.inertia > 0 for r in ours)  # never NaN
    sk = [KMeans(8, init=sk_init, n_init=1, random_state=s, max_iter=50).fit(x.numpy())
          for s in range(5)]
    # seeds differ, so compare the best of 5 restarts of the same initialisation scheme
    assert min(r.inertia for r in ours) <= 1.03 * min(m.inertia_ for m in sk)


def test_kmeans_result_is_consistent() -> None:
    x = blobs(seed=1)
    res = kmeans(x, 16, iters=10, seed=0)
    assert res.centroids.shape == (16, 2) and res.centroids.dtype == torch.float32
    assert res.assignments.shape == (x.shape[0],) and res.counts.sum() == x.shape[0]
    assert torch.equal(res.assignments, nearest_code(x, res.centroids))
    assert torch.equal(res.counts, torch.bincount(res.assignments, minlength=16))
    ref = ((x.double() - res.centroids.double()[res.assignments]) ** 2).sum().item()
    assert res.inertia == pytest.approx(ref, rel=1e-12)
    assert 1 <= res.iters_run <= 10


def test_kmeans_monotone_in_iterations() -> None:
    x = blobs(n_per=100, centres=20, seed=2)
    inertias = [kmeans(x, 20, iters=i, init="random", seed=5).inertia for i in (0, 1, 3, 10)]
    assert all(b <= a * (1 + 1e-6) for a, b in zip(inertias, inertias[1:]))


def test_kmeans_deterministic_by_seed() -> None:
    x = blobs(seed=3)
    for init in ("kmeans++", "random"):
        a, b = kmeans(x, 10, seed=7, init=init), kmeans(x, 10, seed=7, init=init)
        assert torch.equal(a.centroids, b.centroids) and a.inertia == b.inertia
        c = kmeans(x, 10, seed=8, init=init)
        assert not torch.equal(a.centroids, c.centroids)


def test_kmeans_k_equals_n_and_k_too_large() -> None:
    x = torch.randn(12, 3, generator=torch.Generator().manual_seed(4))
    for init in ("kmeans++", "random"):
        res = kmeans(x, 12, init=init)
        assert res.inertia == pytest.approx(0.0, abs=1e-10)
        assert torch.equal(res.counts, torch.ones(12, dtype=torch.long))
        assert torch.equal(torch.sort(res.centroids, dim=0).values, torch.sort(x, dim=0).values)
    with pytest.raises(ValueError, match=r"k=13.*N=12"):
        kmeans(x, 13)
    with pytest.raises(ValueError):
        kmeans(x, 2, init="bogus")


def test_empty_cluster_keeps_previous_centroid() -> None:
    # 4 identical points and k=2: random init picks two copies of the same point, one
    # cluster takes every point (ties -> lowest index), the other stays empty.
    x = torch.ones(4, 2)
    res = kmeans(x, 2, init="random", iters=3)
    assert res.counts.tolist() == [4, 0]
    torch.testing.assert_close(res.centroids, torch.ones(2, 2))
    # an unreachable centroid keeps its value through updates
    from vqshrink.kmeans import _update

    old = torch.tensor([[0.0, 0.0], [100.0, 100.0]])
    pts = torch.tensor([[1.0, 1.0], [3.0, 3.0]])
    new, counts = _update(pts, torch.tensor([0, 0]), old)
    assert counts.tolist() == [2, 0]
    torch.testing.assert_close(new, torch.tensor([[2.0, 2.0], [100.0, 100.0]]))


def test_kmeans_plusplus_picks_distinct_points_and_spreads() -> None:
    x = blobs(n_per=50, centres=10, seed=5)
    g = torch.Generator().manual_seed(0)
    centres = kmeans_plusplus(x, 10, g)
    # every centre is a data point, all different
    assert (centres[:, None, :] == x[None, :, :]).all(-1).any(1).all()
    assert torch.unique(centres, dim=0).shape[0] == 10
    # D^2 seeding on well-separated blobs hits nearly every blob
    blob_of = (centres[:, None, :] == x[None, :, :]).all(-1).float().argmax(1) // 50
    assert torch.unique(blob_of).numel() >= 9


def test_kmeans_half_input_and_tol() -> None:
    x = blobs(seed=6).to(torch.bfloat16)
    res = kmeans(x, 8, iters=100, tol=1e-3)
    assert res.centroids.dtype == torch.float32 and res.iters_run < 100
    assert res.inertia == res.inertia
