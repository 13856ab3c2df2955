"""Mean pairwise LPIPS over N images: closed form (one feature pass) vs the lpips package's pairs.

The package way forms every pair: N(N-1)/2 = 12,497,500 forward calls for N = 5,000.
:func:`vqshrink.metrics.diversity.mean_pairwise_lpips` runs one feature pass per image and
uses mean_{i<j} d = 2/(N-1) sum_{l,c,p} u_{l,c,p} sum_i (a_i - abar)^2. This script, in ONE
run: times the closed form on all N images; times the package on a random subset of pairs,
both one call per pair (the plain loop) and pairs batched per call; extrapolates both to all
pairs; prints the ratios, the max abs error of the feature formula on the subset pairs, and
(unless --no-matrix) the closed-form mean vs the mean of the full blockwise matrix.

Offline: LPIPS(net='alex', pretrained=True, pnet_rand=True), i.e. the shipped lin heads on
a random AlexNet trunk; the timings do not depend on the trunk's weight values.

    python benchmarks/bench_lpips_diversity.py            # N=5,000 64x64 (about 3 minutes)
    python benchmarks/bench_lpips_diversity.py --quick    # N=500, fewer pairs
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings

import numpy as np
import torch

from vqshrink.metrics.diversity import (
    lpips_features,
    lpips_layer_weights,
    mean_pairwise_lpips,
    pairwise_lpips_matrix,
)

warnings.filterwarnings("ignore", category=UserWarning)


def smooth_images(n: int, size: int, seed: int) -> np.ndarray:
    """uint8 N x size x size x 3: bicubic-upsampled random 8x8 colour fields plus noise."""
    g = torch.Generator().manual_seed(seed)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for s in range(0, n, 500):
        b = min(500, n - s)
        low = torch.rand(b, 3, 8, 8, generator=g)
        x = torch.nn.functional.interpolate(
            low, size=(size, size), mode="bicubic", align_corners=False
        )
        x = (x + 0.05 * torch.randn(b, 3, size, size, generator=g)).clamp(0, 1)
        out[s : s + b] = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


def to_lpips(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def feature_pair_distances(model, x: torch.Tensor, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """d(i, j) = sum_l sum_{c,p} u (a_i - a_j)^2 from features, for the given pairs."""
    idx = np.unique(np.concatenate([i, j]))
    pos = {k: r for r, k in enumerate(idx)}
    feats = lpips_features(model, x[idx])
    u = lpips_layer_weights(model, feats, tuple(x.shape[2:]))
    ri = torch.as_tensor([pos[k] for k in i])
    rj = torch.as_tensor([pos[k] for k in j])
    d = torch.zeros(len(i), dtype=torch.float64)
    for f, w in zip(feats, u):
        f = f.double()
        d += ((f[ri] - f[rj]).square() * w).flatten(1).sum(1)
    return d.numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--loop-pairs", type=int, default=200, help="pairs timed one call each")
    ap.add_argument("--batched-pairs", type=int, default=2000, help="pairs timed in batches")
    ap.add_argument("--pair-batch", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=100, help="closed-form feature batch")
    ap.add_argument("--no-matrix", action="store_true", help="skip the full-matrix check")
    ap.add_argument("--quick", action="store_true", help="N=500, 50/500 pairs")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.n, args.loop_pairs, args.batched_pairs = 500, 50, 500

    import lpips

    torch.manual_seed(0)
    model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    images = smooth_images(args.n, args.size, seed=0)
    x = to_lpips(images)
    n_pairs = args.n * (args.n - 1) // 2
    print(
        f"N={args.n} images {args.size}x{args.size}, {n_pairs:,} pairs, alex (pnet_rand), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}"
    )

    t0 = time.perf_counter()
    mean_cf = mean_pairwise_lpips(images, model, batch_size=args.batch_size)
    t_cf = time.perf_counter() - t0
    print(f"closed form, all {args.n} images: {t_cf:.2f} s  mean LPIPS {mean_cf:.8f}")

    rng = np.random.default_rng(0)
    k = max(args.loop_pairs, args.batched_pairs)
    i = rng.integers(0, args.n, size=4 * k)
    j = rng.integers(0, args.n, size=4 * k)
    keep = i < j
    i, j = i[keep][:k], j[keep][:k]

    with torch.no_grad():
        li, lj = i[: args.loop_pairs], j[: args.loop_pairs]
        model(x[:1], x[1:2])  # warm-up
        t0 = time.perf_counter()
        loop_vals = [float(model(x[a : a + 1], x[b : b + 1])) for a, b in zip(li, lj)]
        t_loop = (time.perf_counter() - t0) / len(li)

        bi, bj = i[: args.batched_pairs], j[: args.batched_pairs]
        t0 = time.perf_counter()
        batched_vals = []
        for s in range(0, len(bi), args.pair_batch):
            batched_vals.append(
                model(x[bi[s : s + args.pair_batch]], x[bj[s : s + args.pair_batch]]).flatten()
            )
        t_batched = (time.perf_counter() - t0) / len(bi)
        batched_vals = torch.cat(batched_vals).double().numpy()

    ours = feature_pair_distances(model, x, bi, bj)
    err_batched = float(np.abs(ours - batched_vals).max())
    err_loop = float(np.abs(ours[: len(li)] - np.asarray(loop_vals)).max())
    est_loop, est_batched = t_loop * n_pairs, t_batched * n_pairs
    for what, per_pair, timed, est in [
        ("one call per pair", t_loop, len(li), est_loop),
        (f"{args.pair_batch} pairs per call", t_batched, len(bi), est_batched),
    ]:
        print(
            f"lpips package, {what}: {per_pair * 1e3:.3f} ms/pair on {timed} pairs -> "
            f"{est:,.0f} s = {est / 3600:.2f} h for all pairs; speed-up {est / t_cf:,.0f}x"
        )
    print(
        f"max |feature formula - package| on the subset pairs: {max(err_batched, err_loop):.3e} "
        f"(values ~{np.abs(batched_vals).mean():.3f})"
    )

    result = {
        "n": args.n,
        "size": args.size,
        "pairs": n_pairs,
        "closed_form_s": t_cf,
        "mean": mean_cf,
        "loop_ms_per_pair": t_loop * 1e3,
        "loop_extrapolated_s": est_loop,
        "batched_ms_per_pair": t_batched * 1e3,
        "batched_extrapolated_s": est_batched,
        "speedup_vs_loop": est_loop / t_cf,
        "speedup_vs_batched": est_batched / t_cf,
        "max_abs_err_subset": max(err_batched, err_loop),
    }
    if not args.no_matrix:
        t0 = time.perf_counter()
        mat = pairwise_lpips_matrix(images, model, block=1024, batch_size=args.batch_size)
        t_mat = time.perf_counter() - t0
        iu = np.triu_indices(args.n, 1)
        mean_mat = float(mat[iu].mean())
        rel = abs(mean_mat - mean_cf) / abs(mean_cf)
        print(
            f"full blockwise matrix: {t_mat:.2f} s, its mean {mean_mat:.8f}, "
            f"rel. diff to closed form {rel:.2e}"
        )
        result.update(matrix_s=t_mat, matrix_mean=mean_mat, matrix_rel_diff=rel)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
