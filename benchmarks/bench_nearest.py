"""Nearest-code search: ``nearest_code`` vs a bare GEMM, cdist+argmin and vector-quantize-pytorch.

Times, side by side in one process and interleaved round by round (best round counts, so
a shared machine's load hits every method alike), the search of ``--n`` random float32
vectors among ``--k`` codes of dimension ``--dim``:

- ours: ``vqshrink.quantizers.nearest_code`` (chunked addmm + argmin, memory-bounded);
- gemm: the bare ``z @ c.T`` (distances' dominant term only, no argmin; the lower bound);
- cdist: ``torch.cdist(z, c).argmin(1)``;
- vqp: ``vector_quantize_pytorch.VectorQuantize`` eval forward with the same codebook
  (optional import; "not installed" otherwise).

Peak extra memory per method is the process's resident high-water mark above its
resident size before the call (Linux /proc: clear_refs + VmHWM), measured once for each
method, ours first. Run (repository root)::

    PYTHONPATH=src python benchmarks/bench_nearest.py            # 16,384 x 16,384, dim 32
    PYTHONPATH=src python benchmarks/bench_nearest.py --quick    # 2,048 x 2,048
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import torch

from vqshrink.quantizers.search import block_shape, nearest_code


def _status_kib(field: str) -> int | None:
    """A ``VmRSS``/``VmHWM``-style field of /proc/self/status in KiB (None off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_extra_mib(fn: Callable[[], object]) -> float | None:
    """Resident high-water mark during ``fn()`` minus the resident size before, in MiB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    except OSError:
        return None
    before = _status_kib("VmRSS")
    out = fn()
    peak = _status_kib("VmHWM")
    del out
    return None if before is None or peak is None else (peak - before) / 1024


def vqp_lookup(codebook: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """vector-quantize-pytorch's eval forward with ``codebook`` as its codes, or None."""
    try:
        from vector_quantize_pytorch import VectorQuantize
    except ImportError:
        return None
    vq = VectorQuantize(dim=codebook.shape[1], codebook_size=codebook.shape[0])
    vq._codebook.embed.data.copy_(codebook[None])
    vq.eval()

    def lookup(z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return vq(z[None])[1][0]

    return lookup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=16_384, help="query vectors")
    ap.add_argument("--k", type=int, default=16_384, help="codes")
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--budget-mb", type=float, default=64.0, help="nearest_code memory budget")
    ap.add_argument("--quick", action="store_true", help="2,048 x 2,048, 3 rounds")
    args = ap.parse_args()
    if args.quick:
        args.n, args.k, args.rounds = 2048, 2048, 3

    g = torch.Generator().manual_seed(0)
    z = torch.randn(args.n, args.dim, generator=g)
    c = torch.randn(args.k, args.dim, generator=g)
    methods: dict[str, Callable[[], object]] = {
        "ours": lambda: nearest_code(z, c, memory_budget_mb=args.budget_mb),
        "gemm": lambda: z @ c.T,
        "cdist": lambda: torch.cdist(z, c).argmin(1),
    }
    vqp = vqp_lookup(c)
    if vqp is not None:
        methods["vqp"] = lambda: vqp(z)

    print(f"{args.n:,} vectors x {args.k:,} codes, dim {args.dim}, float32, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows, cols = block_shape(args.n, args.k, elem_bytes=4, memory_budget_mb=args.budget_mb,
                             device=z.device)
    print(f"ours: distance block {rows} x {cols} = {rows * cols * 4 / 2**20:.1f} MiB "
          f"(budget {args.budget_mb:g} MiB)")
    memory = {name: peak_extra_mib(fn) for name, fn in methods.items()}

    best = {name: float("inf") for name in methods}
    for _ in range(args.rounds):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)

    ref = torch.cdist(z.double(), c.double()).argmin(1)
    agree = {"ours": (nearest_code(z, c) == ref).float().mean().item()}
    if vqp is not None:
        agree["vqp"] = (vqp(z) == ref).float().mean().item()
    if vqp is None:
        print("vqp: vector-quantize-pytorch not installed")
    print(f"{'method':8s} {'best s':>8s} {'peak extra MiB':>15s} {'ours / it':>10s}")
    for name in methods:
        mem = memory[name]
        mem_s = f"{mem:15.1f}" if mem is not None else f"{'n/a':>15s}"
        print(f"{name:8s} {best[name]:8.3f} {mem_s} {best['ours'] / best[name]:10.2f}")
    print("agreement with float64 brute force: " +
          ", ".join(f"{k} {v:.5f}" for k, v in agree.items()))
    print(f"ratios: ours/gemm {best['ours'] / best['gemm']:.2f} (target <= 1.3), "
          f"cdist/ours {best['cdist'] / best['ours']:.2f}"
          + (f", vqp/ours {best['vqp'] / best['ours']:.2f}" if vqp is not None else ""))


if __name__ == "__main__":
    main()
