"""Generators: size at paper scale, KV-cache sampling vs recomputing the prefix, train step time.

Side by side in one run:

1. parameters of the paper-scale configs (vocab 16,384, 100 classes, 16x16 tokens; VAR's
   10 scales, 680 tokens) as ``config.yaml`` sets them;
2. sampling LlamaGen and VAR with their KV caches vs a reference sampler that re-runs the
   full (causal / block-causal) forward over the whole prefix for every token / scale, both
   with classifier-free guidance (cond + uncond passes), at a reduced width (``--width``)
   so the reference finishes on a CPU; the tokens of both are checked to be identical
   (greedy: top-k = 1);
3. one training step (forward + backward + AdamW) at paper scale, batch ``--batch``:
   float32, and on CUDA also bf16 autocast and ``torch.compile`` (ratios printed), with
   the peak GPU memory.

Run (repository root)::

    PYTHONPATH=src python benchmarks/bench_generators.py --threads 2          # CPU
    PYTHONPATH=src python benchmarks/bench_generators.py --device cuda --batch 64
"""

from __future__ import annotations

import argparse
import time

import torch

from vqshrink.models.llamagen import LlamaGen, LlamaGenConfig
from vqshrink.models.maskgit import MaskGIT, MaskGITConfig
from vqshrink.models.sampling import cfg_logits
from vqshrink.models.var import VAR, VARConfig, guidance_ramp
from vqshrink.quantizers.multiscale import MultiScaleQuantizer

PATCH_NUMS = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)


def paper_models(width: int | None = None) -> dict:
    """The three generators as config.yaml sets them at paper scale (``width``: reduced)."""
    q = MultiScaleQuantizer(16384, 32, patch_nums=PATCH_NUMS)
    common = {"vocab_size": 16384, "num_classes": 100}
    if width is None:
        return {
            "MaskGIT d24": MaskGIT(MaskGITConfig(**common, depth=24, width=768, heads=16,
                                                 mlp_dim=3072)),
            "VAR d16": VAR(VARConfig(**common, patch_nums=PATCH_NUMS, depth=16), q),
            "LlamaGen GPT-B": LlamaGen(LlamaGenConfig(**common, n_layer=12, n_head=12,
                                                      dim=768)),
        }
    return {
        "VAR": VAR(VARConfig(**common, patch_nums=PATCH_NUMS, depth=4, width=width, heads=4), q),
        "LlamaGen": LlamaGen(LlamaGenConfig(**common, n_layer=4, n_head=4, dim=width)),
    }


def timed(fn, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


@torch.no_grad()
def llamagen_no_cache(model: LlamaGen, labels: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """Greedy guided decoding that re-runs the causal forward over the whole prefix per token
    (conditional and unconditional passes, as the cached sampler's doubled batch)."""
    n = model.cfg.token_shape[0] * model.cfg.token_shape[1]
    tokens = torch.zeros(len(labels), n, dtype=torch.long, device=labels.device)
    null = torch.full_like(labels, model.cfg.num_classes)
    for t in range(n):  # position t sees tokens < t only
        cond, uncond = model.logits(tokens, labels)[:, t], model.logits(tokens, null)[:, t]
        tokens[:, t] = cfg_logits(cond, uncond, cfg_scale - 1.0).argmax(-1)
    return tokens.view(len(labels), *model.cfg.token_shape)


@torch.no_grad()
def var_no_cache(model: VAR, labels: torch.Tensor, cfg: float) -> torch.Tensor:
    """Greedy guided next-scale decoding that re-runs the block-causal forward per scale."""
    sizes = [p * p for p in model.cfg.patch_nums]
    tokens = torch.zeros(len(labels), sum(sizes), dtype=torch.long, device=labels.device)
    start = 0
    for si, size in enumerate(sizes):
        part = slice(start, start + size)
        cond = model.logits(tokens, labels)[:, part]
        uncond = model.logits(tokens, labels, unconditional=True)[:, part]
        w = guidance_ramp(cfg, si, len(sizes))
        tokens[:, part] = cfg_logits(cond, uncond, w).argmax(-1)
        start += size
    return tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2, help="train-step batch at paper scale")
    ap.add_argument("--samples", type=int, default=4, help="sampling batch")
    ap.add_argument("--width", type=int, default=128, help="width of the sampling models")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"device {device}, torch {torch.__version__}, {args.threads} threads")

    print("\n1. parameters at paper scale (trainable; VAR without its frozen quantizer)")
    for name, m in paper_models().items():
        n = sum(p.numel() for p in m.parameters() if p.requires_grad)
        print(f"   {name:16s} {n / 1e6:8.1f} M")

    print(f"\n2. sampling {args.samples} images (guided, greedy top-k 1), width {args.width}, "
          "4 layers: KV cache vs full prefix recomputation")
    labels = torch.arange(args.samples, device=device) % 100
    for name, m in paper_models(args.width).items():
        if name == "LlamaGen":  # its head starts at zero (all logits tie): give it weights
            gen = torch.Generator().manual_seed(0)
            torch.nn.init.normal_(m.output.weight, std=0.02, generator=gen)
        m = m.to(device).eval()
        g = torch.Generator(device).manual_seed(0)
        if name == "VAR":  # guidance as config.yaml sets it, greedy (top-k 1)
            fast = lambda: m.sample(labels, generator=g, cfg=1.5, top_k=1, top_p=0.0)  # noqa: E731
            slow = lambda: var_no_cache(m, labels, 1.5)  # noqa: E731
        else:
            fast = lambda: m.sample(labels, generator=g, cfg_scale=2.0, top_k=1)  # noqa: E731
            slow = lambda: llamagen_no_cache(m, labels, 2.0)  # noqa: E731
        out = {}
        t_fast = timed(lambda: out.__setitem__("fast", fast()), device)
        t_slow = timed(lambda: out.__setitem__("slow", slow()), device)
        same = torch.equal(out["fast"].reshape(len(labels), -1),
                           out["slow"].reshape(len(labels), -1))
        print(f"   {name:9s} cache {t_fast:7.2f} s   recompute {t_slow:7.2f} s   "
              f"speed-up {t_slow / t_fast:5.1f}x   identical tokens: {same}")

    print(f"\n3. one training step at paper scale, batch {args.batch} (s/step, best of 3)")
    modes = [("float32", False, False)]
    if device.type == "cuda":
        modes += [("bf16 autocast", True, False), ("bf16 + compile", True, True)]
    for name, m in paper_models().items():
        m = m.to(device).train()
        shape = (args.batch, 680) if name.startswith("VAR") else (args.batch, 16, 16)
        tokens = torch.randint(0, 16384, shape, device=device)
        y = torch.randint(0, 100, (args.batch,), device=device)
        times = {}
        for mode, amp, compiled in modes:
            net = torch.compile(m) if compiled else m
            opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)

            def step() -> None:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    loss = net(tokens, y)["loss"]
                opt.zero_grad(set_to_none=True)
                loss.float().backward()
                opt.step()

            step()  # warm-up (and compilation)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            times[mode] = min(timed(step, device) for _ in range(3))
            mem = (f", peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"
                   if device.type == "cuda" else "")
            ratio = times["float32"] / times[mode]
            print(f"   {name:16s} {mode:15s} {times[mode]:7.3f} s/step  "
                  f"({ratio:4.2f}x vs float32){mem}")
        m.cpu()


if __name__ == "__main__":
    main()
