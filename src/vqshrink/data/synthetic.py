"""The synthetic Gaussian-mixture data of the paper's Sec. 4 / App. A.1.

Ten clusters of 1,000 points each, drawn from Gaussians with one shared standard
deviation and distinct means, then standardised per feature (scikit-learn's
StandardScaler). Means are drawn uniformly in a box and redrawn until every pair is at
least ``min_separation`` standard deviations apart, so that "distinct" holds in every
dimension (the paper gives no box or separation; the box is scikit-learn make_blobs'
default, (-10, 10)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class GaussianMixture:
    x: np.ndarray  # (N, D) float32, standardised
    labels: np.ndarray  # (N,) int64 cluster of each point
    means: np.ndarray  # (M, D) float32, cluster means in the standardised space


def make_gaussian_mixture(
    input_dim: int,
    *,
    n_clusters: int = 10,
    points_per_cluster: int = 1000,
    cluster_std: float = 1.0,
    center_box: tuple[float, float] = (-10.0, 10.0),
    min_separation: float = 4.0,
    seed: int = 0,
    max_tries: int = 10_000,
) -> GaussianMixture:
    if input_dim < 1 or n_clusters < 1 or points_per_cluster < 1:
        raise ValueError("input_dim, n_clusters and points_per_cluster must be positive")
    rng = np.random.default_rng(seed)
    lo, hi = center_box
    for _ in range(max_tries):
        means = rng.uniform(lo, hi, size=(n_clusters, input_dim))
        gaps = np.linalg.norm(means[:, None] - means[None], axis=-1)
        gaps[np.diag_indices(n_clusters)] = np.inf
        if gaps.min() >= min_separation * cluster_std:
            break
    else:
        raise ValueError(
            f"could not place {n_clusters} means {min_separation} std apart in the box "
            f"{center_box} in {input_dim}-D; lower synthetic.min_separation or widen the box"
        )
    labels = np.repeat(np.arange(n_clusters), points_per_cluster)
    x = means[labels] + cluster_std * rng.standard_normal((labels.size, input_dim))
    shift, scale = x.mean(axis=0), x.std(axis=0)
    x = (x - shift) / scale
    means = (means - shift) / scale
    return GaussianMixture(x.astype(np.float32), labels.astype(np.int64), means.astype(np.float32))
