"""k-means: ``vqshrink.kmeans.kmeans`` vs faiss-cpu at an equal number of Lloyd iterations.

Clusters ``--n`` random float32 vectors of dimension ``--dim`` into ``--k`` centroids with
``--iters`` iterations, side by side in one process, interleaved round by round (best
round counts):

- ours (random init, faiss's default): ``kmeans(x, k, iters, init="random")``; its time
  includes the final assignment that makes the returned assignments/inertia consistent
  with the centroids (one more assignment pass than faiss runs);
- ours (k-means++ init, the option; random centres are the default), timed once, for
  the cost of the seeding;
- faiss: ``faiss.Kmeans(d, k, niter=iters).train(x)`` (optional), timed in a child
  process: the faiss-cpu wheel ships its own libgomp, and two OpenMP runtimes spinning
  in one process slowed the torch side up to 10x in our runs.

Ours stops early at a fixed point (assignments unchanged; further iterations would
change nothing), faiss always runs ``--iters``; seconds per iteration are printed too.

Inertia is reported for every method in the same way: sum_i min_j ||x_i - c_j||^2 of the
RETURNED centroids, exact, float64 (faiss's own ``obj[-1]`` is the objective of its last
assignment, before its last centroid update; printed too). Run (repository root)::

    PYTHONPATH=src python benchmarks/bench_kmeans.py            # 32,768 x 32 -> 16,384
    PYTHONPATH=src python benchmarks/bench_kmeans.py --quick    # 4,096 x 32 -> 1,024
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vqshrink.kmeans import inertia_of, kmeans
from vqshrink.quantizers.search import nearest_code


def final_inertia(x: torch.Tensor, centroids: torch.Tensor) -> float:
    """Exact float64 inertia of ``centroids`` after assigning every point to its nearest."""
    return inertia_of(x, centroids, nearest_code(x, centroids))


FAISS_CHILD = """
import json, sys, time
import numpy as np
try:
    import faiss
except ImportError:
    print(json.dumps(None)); sys.exit()
data, out, k, iters, seed = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
x = np.load(data)
km = faiss.Kmeans(x.shape[1], k, niter=iters, seed=seed, verbose=False)
km.cp.min_points_per_centroid = 1  # silences the "too few points" warning only
t0 = time.perf_counter()
km.train(x)
seconds = time.perf_counter() - t0
np.save(out, km.centroids)
print(json.dumps({"seconds": seconds, "obj": float(km.obj[-1])}))
"""


def faiss_kmeans(data: Path, k: int, iters: int, seed: int) -> tuple[dict, np.ndarray] | None:
    """Time faiss.Kmeans on the saved data in a child process; None if faiss is missing."""
    out = data.with_name(f"faiss_centroids_{seed}.npy")
    proc = subprocess.run([sys.executable, "-c", FAISS_CHILD, str(data), str(out), str(k),
                           str(iters), str(seed)], capture_output=True, text=True, check=True)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return None if result is None else (result, np.load(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=32_768)
    ap.add_argument("--k", type=int, default=16_384)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    ap.add_argument("--quick", action="store_true", help="4,096 x 32 -> 1,024, 2 rounds")
    args = ap.parse_args()
    if args.quick:
        args.n, args.k, args.rounds = 4096, 1024, 2

    x = torch.randn(args.n, args.dim, generator=torch.Generator().manual_seed(0))
    print(f"k-means {args.n:,} x {args.dim} -> {args.k:,} centroids, {args.iters} iterations, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    times: dict[str, float] = {"ours": float("inf"), "faiss": float("inf")}
    ours = None
    faiss_best: tuple[dict, np.ndarray] | None = None
    have_faiss = True
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "x.npy"
        np.save(data, x.numpy())
        for r in range(args.rounds):
            t0 = time.perf_counter()
            ours = kmeans(x, args.k, iters=args.iters, init="random", seed=r)
            times["ours"] = min(times["ours"], time.perf_counter() - t0)
            if have_faiss:
                res = faiss_kmeans(data, args.k, args.iters, seed=r + 1)
                have_faiss = res is not None
                if res is not None and res[0]["seconds"] < times["faiss"]:
                    times["faiss"], faiss_best = res[0]["seconds"], res
    t0 = time.perf_counter()
    ours_pp = kmeans(x, args.k, iters=args.iters, init="kmeans++", seed=0)
    t_pp = time.perf_counter() - t0

    def row(name: str, sec: float, inertia: float, iters: int, empty: int, extra: str = "") -> None:
        print(f"{name:22s} {sec:8.3f} {sec / max(iters, 1):8.3f} {inertia:14.1f} {iters:6d} "
              f"{empty:6d}{extra}")

    print(f"{'method':22s} {'best s':>8s} {'s/iter':>8s} {'inertia':>14s} {'iters':>6s} "
          f"{'empty':>6s}")
    row("ours (random init)", times["ours"], ours.inertia, ours.iters_run,
        int((ours.counts == 0).sum()))
    row("ours (k-means++ init)", t_pp, ours_pp.inertia, ours_pp.iters_run,
        int((ours_pp.counts == 0).sum()))
    if faiss_best is None:
        print("faiss: faiss-cpu not installed")
        return
    info, cents_np = faiss_best
    cents = torch.from_numpy(cents_np)
    f_inertia = final_inertia(x, cents)
    f_empty = int((torch.bincount(nearest_code(x, cents), minlength=args.k) == 0).sum())
    row("faiss (random init)", times["faiss"], f_inertia, args.iters, f_empty,
        f"   (faiss obj[-1] {info['obj']:.1f})")
    per_iter = (times["ours"] / max(ours.iters_run, 1)) / (times["faiss"] / args.iters)
    print(f"ratios: time ours/faiss {times['ours'] / times['faiss']:.2f} (target <= 2), "
          f"per iteration {per_iter:.2f}, "
          f"inertia ours/faiss {ours.inertia / f_inertia:.4f} (target <= 1)")


if __name__ == "__main__":
    main()
