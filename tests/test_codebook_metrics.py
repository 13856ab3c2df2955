"""Codebook geometry/usage and mode-coverage diagnostics against direct definitions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist
from scipy.stats import entropy

from vqshrink.metrics.codebook import (
    code_counts, codebook_report, count_peaks, dead_code_fraction, mean_pairwise_distance,
    mode_assignment, mode_coverage, mode_entropy, modes_covered, peak_positions, perplexity,
    usage_fraction,
)

# ----------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("k,budget", [(2, 64.0), (7, 64.0), (50, 64.0), (50, 1e-3), (33, 1e-9)])
def test_mean_pairwise_distance_matches_loop(k: int, budget: float) -> None:
    c = torch.randn(k, 5, generator=torch.Generator().manual_seed(k)) * 3 + 100.0
    ref = np.mean([np.linalg.norm(c[i].double().numpy() - c[j].double().numpy())
                   for i, j in itertools.combinations(range(k), 2)])
    assert mean_pairwise_distance(c, memory_budget_mb=budget) == pytest.approx(ref, rel=1e-10)


def test_mean_pairwise_distance_large_matches_scipy_and_edge_cases() -> None:
    c = torch.randn(700, 32, generator=torch.Generator().manual_seed(0))
    assert mean_pairwise_distance(c) == pytest.approx(pdist(c.double().numpy()).mean(), rel=1e-10)
    assert mean_pairwise_distance(torch.randn(1, 4)) == 0.0
    assert mean_pairwise_distance(torch.ones(5, 3)) == 0.0  # all codes coincide
    # half precision and a Parameter work
    p = torch.nn.Parameter(c[:50].to(torch.bfloat16))
    assert mean_pairwise_distance(p) == pytest.approx(pdist(p.detach().double().numpy()).mean())


def test_shrunk_codebook_has_smaller_distance() -> None:
    g = torch.Generator().manual_seed(1)
    spread, shrunk = torch.randn(128, 8, generator=g), 0.1 * torch.randn(128, 8, generator=g)
    assert mean_pairwise_distance(shrunk) < 0.2 * mean_pairwise_distance(spread)


# ----------------------------------------------------------------------------- usage


def test_code_counts_and_range_check() -> None:
    idx = torch.tensor([[0, 2], [2, 2]])
    assert code_counts(idx, 4).tolist() == [1, 0, 3, 0]
    assert code_counts(torch.empty(0, dtype=torch.long), 3).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        code_counts(torch.tensor([0, 3]), 3)


def test_perplexity_uniform_onehot_and_scipy() -> None:
    assert perplexity(torch.full((16,), 5)) == pytest.approx(16.0)
    assert perplexity(torch.tensor([0, 9, 0, 0])) == pytest.approx(1.0)
    counts = torch.tensor([5, 0, 3, 1, 0, 11])
    assert perplexity(counts) == pytest.approx(math.exp(entropy(counts.numpy())))
    with pytest.raises(ValueError):
        perplexity(torch.zeros(3, dtype=torch.long))


def test_usage_and_dead_fraction() -> None:
    counts = torch.tensor([3, 0, 1, 0])
    assert usage_fraction(counts) == 0.5 and dead_code_fraction(counts) == 0.5
    assert usage_fraction(torch.ones(7)) == 1.0 and dead_code_fraction(torch.ones(7)) == 0.0


def test_codebook_report_keys_and_values() -> None:
    codebook = torch.tensor([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0], [0.0, 1.0]])
    idx = torch.tensor([0, 1, 1, 2])
    rep = codebook_report(codebook, idx, 4)
    assert set(rep) == {"euclidean", "perplexity", "usage", "dead_fraction"}
    ref_euc = np.mean(pdist(codebook.numpy()))
    assert rep["euclidean"] == pytest.approx(ref_euc)
    assert rep["perplexity"] == pytest.approx(math.exp(entropy([1, 2, 1])))
    assert rep["usage"] == 0.75 and rep["dead_fraction"] == 0.25
    assert codebook_report(codebook, idx) == rep  # k defaults to the codebook size


# ----------------------------------------------------------------------------- modes


def gaussian_modes(m: int = 5, n_per: int = 400, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    means = torch.arange(m, dtype=torch.float32)[:, None] * torch.tensor([[10.0, 0.0]])
    labels = torch.arange(m).repeat_interleave(n_per)
    data = means[labels] + torch.randn(m * n_per, 2, generator=g)
    return data, labels, means


def test_mode_assignment_and_entropy() -> None:
    data, labels, means = gaussian_modes()
    assert torch.equal(mode_assignment(data, means), torch.cdist(data, means).argmin(1))
    assert mode_entropy(data, means) == pytest.approx(math.log(5), abs=1e-3)
    # everything collapsed onto mode 2 -> entropy 0; two balanced modes -> ln 2
    assert mode_entropy(means[2].expand(100, 2), means) == pytest.approx(0.0)
    two = torch.cat([means[0].expand(50, 2), means[4].expand(50, 2)])
    assert mode_entropy(two, means) == pytest.approx(math.log(2))


def test_mode_coverage_and_modes_covered() -> None:
    data, labels, means = gaussian_modes()
    # perfect reconstruction: ~95% of each mode inside its own 95% radius
    frac = mode_coverage(data, labels, data, means)
    assert frac.shape == (5,) and torch.all((frac >= 0.94) & (frac <= 0.96))
    assert modes_covered(data, labels, data, means) == 5
    # collapse modes 3, 4 onto mode 0's mean: those two are lost
    recon = data.clone()
    recon[labels >= 3] = means[0]
    frac = mode_coverage(data, labels, recon, means)
    assert frac[3] == 0 and frac[4] == 0  # mode 3's and 4's points all sit on mode 0's mean
    assert modes_covered(data, labels, recon, means) == 3
    # shift one mode's reconstructions by 1.5 std: a partial loss, the threshold decides
    recon = data.clone()
    recon[labels == 1] += torch.tensor([1.5, 0.0])
    f1 = float(mode_coverage(data, labels, recon, means)[1])
    assert 0.3 < f1 < 0.9
    assert modes_covered(data, labels, recon, means, min_fraction=f1) == 5
    assert modes_covered(data, labels, recon, means, min_fraction=f1 + 1e-6) == 4
    # a brute-force recount of f_k for one mode
    own = labels == 1
    r = torch.quantile((data[own] - means[1]).norm(dim=1).double(), 0.95)
    assert f1 == pytest.approx(((recon[own] - means[1]).norm(dim=1) <= r).double().mean().item())


# ----------------------------------------------------------------------------- peaks


@pytest.mark.parametrize("k", range(1, 11))
def test_count_peaks_on_separated_mixtures(k: int) -> None:
    rng = np.random.default_rng(k)
    locs = rng.permutation(k) * 8.0 + rng.uniform(-1, 1, size=k)
    values = np.concatenate([rng.normal(mu, 1.0, size=rng.integers(600, 1500)) for mu in locs])
    assert count_peaks(values) == k
    pos = peak_positions(torch.from_numpy(values))
    assert np.allclose(np.sort(pos), np.sort(locs), atol=0.5)


def test_count_peaks_single_gaussian_and_edge_cases() -> None:
    for seed, n in itertools.product(range(5), (300, 3000, 30000)):
        v = torch.randn(n, generator=torch.Generator().manual_seed(seed))
        assert count_peaks(v) == 1
    assert count_peaks(np.full(10, 2.5)) == 1
    assert count_peaks(np.array([])) == 0
    # a skewed unimodal distribution with its maximum at the edge of the range
    assert count_peaks(np.random.default_rng(0).exponential(size=5000)) == 1
    # fewer peaks when two modes merge
    rng = np.random.default_rng(1)
    merged = np.concatenate([rng.normal(0, 1, 4000), rng.normal(1.0, 1, 4000)])
    assert count_peaks(merged) == 1
