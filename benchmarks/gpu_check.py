"""GPU cost of the paper DAG: step time and peak memory of every training stage at paper shapes.

Builds each model from config.yaml's paper preset through the builders the stages use
(``registry.build_model``, ``generator_registry.build_generator``) at the paper preset's per-GPU
batch (global batch / GPUs of the stage's train resources) and times its training step
(forward, loss, backward, gradient clipping, optimiser step; the GAN variants also the
discriminator step), the median of the timed steps after a warm-up, with peak memory
(``torch.cuda.max_memory_allocated``), for fp32 and bf16 autocast, eager and ``torch.compile``
(what ``amp`` / ``compile`` in config switch). Also sampling throughput of each generator
(images/s including the tokenizer's decode; LlamaGen and VAR with their KV caches) and the
nearest-code search and k-means at 16,384 codes.

Writes ``<out>/<device>.csv``: the columns of ``vqshrink.plan.budget.STEP_TIME_COLUMNS``
(the keys the budget joins on: rule, model, resolution, batch_per_gpu, amp, compile,
step_s), then kind (train | sample | nearest | kmeans), peak_mem_gb, images_per_s,
measured_batch, steps_timed, params_m, device, torch, note and error. A configuration that
fails (out of memory, compile error) is a row with its error, not a crash; the budget reads
only ``kind == train`` rows with a step time. A time guard starts no measurement after
``--time-budget-s`` (default 420 s; the paper settings run first, the compiled variants
last), so the whole run stays under 8 minutes on one H100 / H200; the rest are rows
"skipped: time budget".

LPIPS runs with a random VGG trunk (``lpips_pretrained: false``): the machine is offline and
the cost does not depend on the weights. Tokens, labels and images are random.

``--quick`` checks the plumbing on CPU: every measurement once, one step at batch 1 (the
paper's shapes otherwise; k-means one Lloyd iteration), fp32 eager only (the stages use bf16 and compile only on CUDA),
written to ``benchmarks/gpu/quick/`` unless ``--out`` says otherwise: never beside the GPU
CSVs, whose only CSV the budget reads.

    PYTHONPATH=src python benchmarks/gpu_check.py              # on the GPU machine
    PYTHONPATH=src python benchmarks/gpu_check.py --quick      # CPU plumbing check
"""

from __future__ import annotations

import argparse
import csv
import gc
import math
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch

from vqshrink.config import load as load_config
from vqshrink.plan.budget import STEP_TIME_COLUMNS
from vqshrink.plan.experiments import Plan

ROOT = Path(__file__).resolve().parents[1]

EXTRA_COLUMNS = ("kind", "peak_mem_gb", "images_per_s", "measured_batch", "steps_timed",
                 "params_m", "device", "torch", "note", "error")
COLUMNS = (*STEP_TIME_COLUMNS, *EXTRA_COLUMNS)
SEARCH_CODES = 16384


@dataclass
class Job:
    """One measurement: ``run(batch, steps, amp, compile)`` returns its numbers."""

    kind: str
    rule: str
    model: str
    resolution: int
    batch_per_gpu: int
    run: Callable[..., dict]
    variants: bool = True  # measured in every amp x compile variant (training steps)


# ---------------------------------------------------------------- settings (paper preset)
def paper_config() -> dict:
    return load_config(ROOT / "config.yaml", ROOT / "workflow/schemas/config.schema.yaml")


def tokenizer_model_cfg(cfg: dict, variant: str | None, dataset: str, arch: str = "") -> dict:
    """The tokenizer config the stages get (the plan's ``model_settings``; ``variant`` None:
    the continuous autoencoder of ``arch``)."""
    plan = Plan(cfg)
    if variant is None:
        return plan.arch_settings(arch, dataset)
    return plan.model_settings(SimpleNamespace(variant=variant, dataset=dataset))


def per_gpu(batch: int, resources: dict) -> int:
    return batch // max(resources["gpu"], 1)


# ---------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], None], device: torch.device, *, warmup: int,
          steps: int) -> tuple[float, list[float]]:
    """Median seconds of ``steps`` calls after ``warmup`` calls, and all of them."""
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def _autocast(device: torch.device, amp: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16")


def _params_m(*modules: torch.nn.Module) -> float:
    return sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad) / 1e6


# ---------------------------------------------------------------- training steps
def tokenizer_step(cfg: dict, model_cfg: dict, *, continuous: bool, gan: bool,
                   device: torch.device, batch: int, amp: str, compile: bool):
    """The tokenizer stage's step (``tokenizer._fit``), GAN active from step 0."""
    from vqshrink.models.registry import build_model
    from vqshrink.stages.tokenizer import make_loss

    tok = cfg["tokenizers"] if model_cfg["family"] == "vqgan" else cfg["vqvae_sweep"]
    loss_cfg = {**tok["loss"], "lpips_pretrained": False}
    tr = tok["training"]
    model = build_model(model_cfg, continuous=continuous).to(device).train()
    loss_fn = make_loss(loss_cfg, gan=gan, weights_dir=None, disc_start_step=0).to(device)
    if compile:
        model.encoder.compile()
        model.decoder.compile()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=tr["lr"], betas=tuple(tr["betas"]),
                           weight_decay=tr["weight_decay"], amsgrad=tr["amsgrad"])
    d_opt = (torch.optim.Adam(loss_fn.discriminator.parameters(), lr=tr["lr"],
                              betas=tuple(loss_cfg["disc_betas"])) if gan else None)
    res = model_cfg["resolution"]
    x = torch.rand(batch, 3, res, res, device=device) * 2 - 1

    def step() -> None:
        with _autocast(device, amp):
            out = model(x, quantize=not continuous)
            parts = loss_fn(x, out.x_hat, out.vq_loss, step=1, last_layer=model.last_layer)
        opt.zero_grad(set_to_none=True)
        parts["loss"].backward()
        if tr["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(params, tr["grad_clip"])
        opt.step()
        if gan:
            with _autocast(device, amp):
                d = loss_fn.discriminator_loss(x, out.x_hat, step=1)
            d_opt.zero_grad(set_to_none=True)
            d["loss"].backward()
            d_opt.step()

    modules = [model] + ([loss_fn.discriminator] if gan else [])
    return step, _params_m(*modules)


def _tokenizer(cfg: dict, variant: str, dataset: str) -> torch.nn.Module:
    from vqshrink.models.registry import build_model

    return build_model(tokenizer_model_cfg(cfg, variant, dataset)).eval()


def generator_parts(cfg: dict, family: str, device: torch.device):
    """(generator, its tokenizer, token shape) at the paper's shapes (ImageNet-100 classes)."""
    from vqshrink.models.generator_registry import build_generator

    res = cfg["datasets"]["imagenet100"]["resolution"]
    variant = "var" if family == "var" else "maskgit"  # VAR's / MaskGIT's own tokenizer
    arch = cfg["tokenizers"]["variants"][variant]["architecture"]
    tok = _tokenizer(cfg, variant, "imagenet100")
    if family == "var":
        shape = (tok.quantizer.num_tokens,)
    else:
        side = res // 2 ** (len(cfg["tokenizers"]["architectures"][arch]["ch_mult"]) - 1)
        shape = (side, side)
    classes = len(Path(ROOT / cfg["datasets"]["imagenet100"]["class_list"]).read_text().split())
    net, _ = build_generator(family, cfg["generators"]["models"][family]["model"],
                             tokenizer=tok, token_shape=shape, num_classes=classes,
                             vocab_size=cfg["tokenizers"]["codebook_size"])
    return net.to(device), tok.to(device), shape, classes


def generator_step(cfg: dict, family: str, *, device: torch.device, batch: int, amp: str,
                   compile: bool):
    """The generator stage's step (``generator.train``)."""
    from vqshrink.stages.generator import param_groups

    net, _, shape, classes = generator_parts(cfg, family, device)
    net.train()
    opt_cfg = cfg["generators"]["models"][family]["optimizer"]
    if compile:
        net.compile()
    opt = torch.optim.AdamW(param_groups(net, opt_cfg["weight_decay"]), lr=opt_cfg["lr"],
                            betas=tuple(opt_cfg["betas"]))
    k = cfg["tokenizers"]["codebook_size"]
    tokens = torch.randint(0, k, (batch, *shape), device=device)
    labels = torch.randint(0, classes, (batch,), device=device)

    def step() -> None:
        with _autocast(device, amp):
            out = net(tokens, labels)
        opt.zero_grad(set_to_none=True)
        out["loss"].float().backward()
        if opt_cfg["grad_clip"]:
            torch.nn.utils.clip_grad_norm_(net.parameters(), opt_cfg["grad_clip"])
        opt.step()

    return step, _params_m(net)


# ---------------------------------------------------------------- jobs
def training_jobs(cfg: dict) -> list[Job]:
    """Every (rule, model) the paper budget has a GPU row for, at its per-GPU batch."""
    tok, sweep, gens = cfg["tokenizers"], cfg["vqvae_sweep"], cfg["generators"]
    res = cfg["datasets"]["imagenet100"]["resolution"]
    tb = per_gpu(tok["training"]["batch_size"], tok["resources"]["train"])
    jobs = []
    for arch in tok["architectures"]:
        mc = tokenizer_model_cfg(cfg, None, "imagenet100", arch)
        jobs.append(Job("train", "tokenizer_pretrain_ae", f"{arch}/ae", res, tb,
                        lambda mc=mc, **kw: tokenizer_step(cfg, mc, continuous=True,
                                                           gan=False, **kw)))
    seen = set()
    for variant, spec in tok["variants"].items():
        model = f"{spec['architecture']}/{spec['quantizer']}" + ("+gan" if spec["gan"] else "")
        if model in seen:
            continue
        seen.add(model)
        mc = tokenizer_model_cfg(cfg, variant, "imagenet100")
        jobs.append(Job("train", "tokenizer_train_vq", model, res, tb,
                        lambda mc=mc, gan=spec["gan"], **kw: tokenizer_step(
                            cfg, mc, continuous=False, gan=gan, **kw)))
    # the CIFAR-10 codebook-size sweep: one row for all sizes, timed at 16,384 codes
    sres = cfg["datasets"][sweep["dataset"]]["resolution"]
    sb = per_gpu(sweep["training"]["batch_size"], sweep["resources"]["train"])
    smc = tokenizer_model_cfg(cfg, f"vqvae-k{SEARCH_CODES}", sweep["dataset"])
    jobs.append(Job("train", "tokenizer_pretrain_ae", f"{sweep['architecture']['family']}/ae",
                    sres, sb, lambda **kw: tokenizer_step(cfg, smc, continuous=True, gan=False,
                                                          **kw)))
    jobs.append(Job("train", "tokenizer_train_vq", f"{sweep['architecture']['family']}/vq_ema",
                    sres, sb, lambda **kw: tokenizer_step(cfg, smc, continuous=False, gan=False,
                                                          **kw)))
    gb = {f: per_gpu(gens["models"][f]["optimizer"]["batch_size"], gens["resources"]["train"])
          for f in gens["models"]}
    for family in gens["models"]:
        jobs.append(Job("train", "generator_train", family, res, gb[family],
                        lambda family=family, **kw: generator_step(cfg, family, **kw)))
    return jobs


def sampling_job(cfg: dict, family: str) -> Job:
    res = cfg["datasets"]["imagenet100"]["resolution"]

    def run(*, device: torch.device, batch: int, amp: str, compile: bool, steps: int,
            warmup: int) -> dict:
        net, tok, _, classes = generator_parts(cfg, family, device)
        net.eval()
        labels = torch.arange(batch, device=device) % classes
        sampling = cfg["generators"]["models"][family]["sampling"]

        @torch.no_grad()
        def once() -> None:
            g = torch.Generator(device).manual_seed(0)
            tok.decode_tokens(net.sample(labels, generator=g, **sampling))

        # a batch takes seconds (LlamaGen: 256 cached decoding steps): 1 warm-up, 2 timed
        median, _ = timed(once, device, warmup=min(warmup, 1), steps=min(steps, 2))
        return {"step_s": median, "images_per_s": batch / median, "params_m": _params_m(net)}

    return Job("sample", "generator_sample", family, res,
               cfg["generators"]["samples"]["batch_size"], run, variants=False)


def search_jobs(cfg: dict) -> list[Job]:
    from vqshrink.kmeans import kmeans
    from vqshrink.quantizers.search import nearest_code

    tok = cfg["tokenizers"]
    res = cfg["datasets"]["imagenet100"]["resolution"]
    tb = per_gpu(tok["training"]["batch_size"], tok["resources"]["train"])
    jobs = []
    for arch, a in tok["architectures"].items():
        dim = a["embed_dim"]
        side = res // 2 ** (len(a["ch_mult"]) - 1)

        def nearest(*, device, batch, amp, compile, steps, warmup, dim=dim, side=side):
            z = torch.randn(batch * side * side, dim, device=device)
            c = torch.randn(SEARCH_CODES, dim, device=device)
            median, _ = timed(lambda: nearest_code(z, c), device, warmup=warmup, steps=steps)
            return {"step_s": median, "note": f"{len(z)} queries x {SEARCH_CODES} codes, "
                                              f"dim {dim}"}

        def cluster(*, device, batch, amp, compile, steps, warmup, dim=dim):
            km = tok["kmeans"]
            n = km["ratio"] * SEARCH_CODES
            x = torch.randn(n, dim, device=device)
            iters = 1 if steps <= 1 else km["iters"]
            median, _ = timed(lambda: kmeans(x, SEARCH_CODES, iters=iters, init=km["init"],
                                             tol=0.0), device, warmup=0, steps=1)
            return {"step_s": median, "note": f"{n} points x {SEARCH_CODES} codes, dim {dim}, "
                                              f"{iters} Lloyd iterations"}

        jobs.append(Job("nearest", "nearest_code", f"{arch}/dim{dim}", res, tb, nearest,
                        variants=False))
        jobs.append(Job("kmeans", "kmeans", f"{arch}/dim{dim}", res, tb, cluster,
                        variants=False))
    return jobs


def all_jobs(cfg: dict) -> list[Job]:
    return [*training_jobs(cfg), *(sampling_job(cfg, f) for f in cfg["generators"]["models"]),
            *search_jobs(cfg)]


# ---------------------------------------------------------------- running
def device_slug(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def measure(job: Job, *, device: torch.device, amp: str, compile: bool, quick: bool) -> dict:
    """One row: the job's numbers, or its error (out of memory, compile failure, ...)."""
    batch = 1 if quick else job.batch_per_gpu
    steps, warmup = (1, 0) if quick else (5, 2)
    row = {"rule": job.rule, "model": job.model, "resolution": job.resolution,
           "batch_per_gpu": job.batch_per_gpu, "amp": amp, "compile": str(compile).lower(),
           "kind": job.kind, "measured_batch": batch, "steps_timed": steps,
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "torch": torch.__version__}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        if job.kind == "train":
            step, params = job.run(device=device, batch=batch, amp=amp, compile=compile)
            median, _ = timed(step, device, warmup=warmup, steps=steps)
            row.update(step_s=median, params_m=params, images_per_s=batch / median)
        else:
            row.update(job.run(device=device, batch=batch, amp=amp, compile=compile,
                               steps=steps, warmup=warmup))
    except Exception as err:  # noqa: BLE001 - an OOM or compile failure is a row
        row["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
    if device.type == "cuda":
        row["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    if quick:
        row["note"] = ((row.get("note") or "") + f"; quick: CPU, batch {batch} of "
                       f"{job.batch_per_gpu}, not a GPU time").lstrip("; ")
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def plan(jobs: list[Job], *, quick: bool) -> list[tuple[Job, str, bool]]:
    """(job, amp, compile) in priority order: the paper's settings (bf16, eager) of every
    job first, then fp32 eager, then the compiled variants; --quick: fp32 eager only."""
    if quick:
        return [(j, "none", False) for j in jobs]
    order = [(j, "bf16", False) for j in jobs]
    variants = [j for j in jobs if j.variants]
    order += [(j, "none", False) for j in variants]
    order += [(j, "bf16", True) for j in variants]
    order += [(j, "none", True) for j in variants]
    return order


def run(jobs: list[Job], out: Path, *, device: torch.device, quick: bool,
        time_budget_s: float, log: Callable[[str], None] = print) -> Path:
    """Measure ``jobs`` and write ``out/<device>.csv`` (rewritten after every row)."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{device_slug(device)}.csv"
    rows: list[dict] = []
    t0 = time.perf_counter()
    for job, amp, comp in plan(jobs, quick=quick):
        if time.perf_counter() - t0 > time_budget_s:
            row = {"rule": job.rule, "model": job.model, "resolution": job.resolution,
                   "batch_per_gpu": job.batch_per_gpu, "amp": amp,
                   "compile": str(comp).lower(), "kind": job.kind,
                   "error": f"skipped: time budget of {time_budget_s:.0f} s spent"}
        else:
            row = measure(job, device=device, amp=amp, compile=comp, quick=quick)
        rows.append(row)
        log(f"{time.perf_counter() - t0:7.1f}s {job.kind:8s} {job.rule:22s} {job.model:26s} "
            f"{amp:4s} compile={comp!s:5s} " + (f"error {row['error']}" if row.get("error")
                                                else f"{row.get('step_s', math.nan):.4f} s"))
        write_rows(rows, path)
    return path


def write_rows(rows: list[dict], path: Path) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(row.get(k)) for k in COLUMNS})
    tmp.replace(path)


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="CPU plumbing check: every measurement once, batch 1, fp32 eager")
    ap.add_argument("--out", type=Path, default=None,
                    help="output folder (default benchmarks/gpu/, --quick benchmarks/gpu/quick/)")
    ap.add_argument("--time-budget-s", type=float, default=None,
                    help="start no measurement after this many seconds (default 420; "
                         "--quick: none, every measurement runs)")
    ap.add_argument("--only", default=None, help="regex on 'kind rule model' to run a subset")
    args = ap.parse_args(argv)
    device = torch.device("cpu" if args.quick or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.quick:
        ap.error("no CUDA device: run on the GPU machine, or --quick for the CPU check")
    out = args.out or ROOT / "benchmarks" / "gpu" / ("quick" if args.quick else "")
    jobs = all_jobs(paper_config())
    if args.only:
        jobs = [j for j in jobs if re.search(args.only, f"{j.kind} {j.rule} {j.model}")]
    t0 = time.perf_counter()
    budget = args.time_budget_s
    if budget is None:
        budget = math.inf if args.quick else 420.0
    path = run(jobs, out, device=device, quick=args.quick, time_budget_s=budget)
    print(f"wrote {path} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
