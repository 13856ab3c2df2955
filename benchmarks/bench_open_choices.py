"""How much each open choice moves the paper's central measurement (codebook shrinkage).

Four choices are either left open by the paper or change the shrinkage itself:

- k-means seeding: random initial centres (SoundStream / vector-quantize-pytorch, the
  default) vs k-means++;
- the synthetic runs' k-means sample: one training batch (App. A.1's reading, the default)
  vs every point of the data set;
- the EMA codebook update: no smoothing (older version eq. 3-5, the default) vs Laplace
  smoothing (taming, vector-quantize-pytorch);
- SimVQ's k-means init: C := centroids with W = I (the default) vs SimVQ's random C with
  (W, b) fitted to the centroids by least squares.

Each alternative is run one at a time against the defaults of ``config.yaml``, in both arms
(w/o and w/ Deferred), and the codebook's mean pairwise Euclidean distance ("Euc."),
perplexity and usage are put side by side:

- synthetic: the paper-scale runs of every ``synthetic.input_dims`` x ``synthetic.seeds``
  (200 epochs baseline; 100 AE + 100 fine-tuning), choices 1-3 (no SimVQ there);
- demo tokenizers: the demo preset's (``presets.demo``: digits at 16 px, tiny models, 1-2
  epochs) VQ tokenizers ``maskgit`` and ``var`` (seeding), ``var_simvq`` (seeding, SimVQ
  init) and the Fig. 4 EMA VQ-VAE at ``--sweep-sizes`` codes (seeding, EMA smoothing), one
  run per ``--tok-seeds`` seed. Unlike the DAG they keep the final weights (no FID-selected
  checkpoint, so no FID network is trained) and are evaluated on the test split without
  r-FID and LPIPS: only the codebook metrics are needed here.

Every run calls the workflow's own stage functions (``vqshrink.stages.synthetic`` /
``vqshrink.stages.data``, ``.tokenizer``, ``.tokenizer_eval``) with the settings the DAG would
give them; the continuous autoencoder of a (dim, seed) or (architecture, seed) is trained once
and shared, as in the DAG. Work is spread over ``--workers`` processes, one torch thread each.
Run (repository root, under ``nice``)::

    nice -n 10 python benchmarks/bench_open_choices.py --workers 2
    nice -n 10 python benchmarks/bench_open_choices.py --quick     # a smoke run, minutes

Writes ``benchmarks/results/open_choices_runs.csv`` (one row per run; ``cpu_s``: CPU seconds
of the invocation that finished it) and ``open_choices.csv`` / ``open_choices.md`` (mean
and std over seeds per part x choice x arm of the initial codebook's distance, the k-means
inertia, Euc., perplexity and usage; the paired shift of Euc. against the default choice;
and the deferred - baseline gap); ``--out`` changes the directory. Interrupted runs resume
from ``--work``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import torch

from vqshrink import config as vqconfig
from vqshrink.config import deep_merge
from vqshrink.io import load_torch
from vqshrink.metrics.codebook import mean_pairwise_distance
from vqshrink.plan.experiments import SYN_DATA_KEYS, Plan

ROOT = Path(__file__).resolve().parents[1]

SYN_CHOICES = {  # name -> overrides of the synthetic section
    "default": {},
    "kmeans_init=kmeans++": {"kmeans_init": "kmeans++"},
    "kmeans_points=all": {"kmeans_points": None},  # None: every point (set per data set)
    "ema_smoothing=laplace": {"ema_smoothing": "laplace"},
}
# name -> (variants it applies to, overrides of the tokenizers / vqvae_sweep section)
TOK_CHOICES = {
    "default": (None, {}),
    "kmeans.init=kmeans++": (None, {"kmeans": {"init": "kmeans++"}}),
    "simvq_init=lstsq": (("var_simvq",), {"simvq_init": "lstsq"}),
    "ema_smoothing=laplace": (("sweep",), {"ema_smoothing": "laplace"}),
}
TOK_VARIANTS = ("maskgit", "var", "var_simvq")
METRICS = ("euclidean", "perplexity", "usage")
SUMMARY = ("init_euclidean", "kmeans_inertia") + METRICS


def load_config(preset: str | None) -> dict:
    """config.yaml resolved as the workflow does (``preset`` None: the paper's)."""
    return vqconfig.load(ROOT / "config.yaml", ROOT / "workflow/schemas/config.schema.yaml",
                         {"preset": preset} if preset else None)


def quiet() -> None:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING)
    for name in ("vqshrink", "vqshrink.stages"):
        logging.getLogger(name).setLevel(logging.WARNING)


def done(path: Path) -> bool:
    """A finished stage output of an earlier (interrupted) run of this script: reused."""
    return path.exists()


def initial_codebook(init: Path) -> torch.Tensor:
    """The codebook the VQ phase starts from: the k-means centroids, or SimVQ's W(C)."""
    state = load_torch(init)["model"]
    if "quantizer.codebook" in state:
        return state["quantizer.codebook"].float()
    c, w, b = (state[f"quantizer.{k}"].double() for k in ("frozen_codebook", "proj.weight",
                                                         "proj.bias"))
    return (c @ w.T + b).float()


def run_row(run_dir: Path, labels: dict, extra: tuple[str, ...]) -> dict:
    """One finished run: its labels, codebook metrics, k-means record and CPU seconds."""
    met = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    init = json.loads((run_dir / "init.json").read_text())
    cpu = run_dir / "cpu_s.txt"
    return {**labels, **{k: met[k] for k in METRICS + extra},
            "init_euclidean": mean_pairwise_distance(initial_codebook(run_dir / "init.pt")),
            "kmeans_inertia": init["kmeans_inertia"], "kmeans_points": init["kmeans_points"],
            "cpu_s": float(cpu.read_text()) if cpu.exists() else float("nan")}


# ------------------------------------------------------------------------------ synthetic
def syn_unit(job: dict) -> list[dict]:
    """One (dim, seed): the AE once, then every choice x arm: init, VQ training, evaluation."""
    quiet()
    from vqshrink.stages import synthetic as syn

    s, dim, seed, work = job["syn"], job["dim"], job["seed"], Path(job["work"])
    d = work / f"syn_dim{dim}_seed{seed}"
    data = str(work / f"syn_dim{dim}.npz")
    model = {"input_dim": dim, "token_dim": s["token_dims"][str(dim)], "hidden": s["hidden"],
             "encoder_hidden": None, "codebook_size": s["codebook_size"], "beta": s["beta"],
             "ema_decay": s["ema_decay"], "seed": seed}
    train = {k: s[k] for k in ("batch_size", "lr", "weight_decay", "device")}
    run = dict(preset="bench", checkpoint_interval_s=60.0)
    ae = d / "ae"
    if not done(ae / "model.pt"):
        syn.pretrain_ae(data=data, model=str(ae / "model.pt"), curve=str(ae / "curve.csv"),
                        record=str(ae / "run.json"), state_dir=str(ae / "state"),
                        settings={**model, "ema_smoothing": s["ema_smoothing"], **train,
                                  "epochs": s["epochs"]["pretrain"]}, **run)
    rows = []
    for choice in job["choices"]:
        over = dict(SYN_CHOICES[choice])
        if "kmeans_points" in over:
            over["kmeans_points"] = s["n_clusters"] * s["points_per_cluster"]
        c = {**s, **over}
        for arm in ("baseline", "deferred"):
            r = d / choice.replace("=", "_") / arm
            m = {**model, "ema_smoothing": c["ema_smoothing"]}
            init = {**m, "batch_size": c["batch_size"], "kmeans_points": c["kmeans_points"],
                    "kmeans_iters": c["kmeans_iters"], "kmeans_init": c["kmeans_init"],
                    "schedule": arm}
            if not done(r / "metrics.json"):
                t0 = time.process_time()
                syn.init_codebook(data=data, init=str(r / "init.pt"),
                                  embeddings=str(r / "emb.npz"), record=str(r / "init.json"),
                                  settings=init, preset="bench",
                                  ae=str(ae / "model.pt") if arm == "deferred" else None)
                phase = "baseline" if arm == "baseline" else "finetune"
                syn.train_vq(data=data, init=str(r / "init.pt"), model=str(r / "model.pt"),
                             curve=str(r / "curve.csv"), record=str(r / "run.json"),
                             state_dir=str(r / "state"),
                             settings={**m, **train, "epochs": c["epochs"][phase]}, **run)
                syn.evaluate(data=data, model=str(r / "model.pt"),
                             metrics=str(r / "metrics.json"), samples=str(r / "samples.npz"),
                             settings={**m, "schedule": arm}, preset="bench")
                (r / "cpu_s.txt").write_text(f"{time.process_time() - t0}")
            rows.append(run_row(r, {"part": "synthetic", "setup": f"dim {dim}", "seed": seed,
                                    "choice": choice, "arm": arm}, ("mode_entropy",)))
    return rows


def syn_jobs(cfg: dict, work: Path, dims: list[int], seeds: list[int],
             choices: list[str]) -> list[dict]:
    from vqshrink.stages import synthetic as syn

    s = cfg["synthetic"]
    for dim in dims:
        data = work / f"syn_dim{dim}.npz"
        if not data.exists():
            syn.make_data(data=str(data), record=str(data.with_suffix(".json")),
                          settings={"input_dim": dim, **{k: s[k] for k in SYN_DATA_KEYS}},
                          preset="bench")
    return [{"syn": s, "dim": d, "seed": sd, "work": str(work), "choices": choices}
            for d in dims for sd in seeds]


# ------------------------------------------------------------------------------ tokenizers
def tok_settings(cfg: dict, variant: str, over: dict, seed: int, sweep_size: int | None) -> dict:
    """The settings the DAG's tokenizer stages get (the plan's), for one variant of the demo
    preset with ``over`` and ``seed`` merged into its config section; weights are kept at the
    end of training and evaluation skips FID and LPIPS (this study reads MSE and the codes)."""
    sweep = variant == "sweep"
    layer = {"vqvae_sweep" if sweep else "tokenizers": {**over, "seed": seed},
             "datasets": {"digits": {"checkpoint": "final"}}}
    if sweep:
        layer["vqvae_sweep"]["codebook_sizes"] = [sweep_size]
    plan = Plan(deep_merge(cfg, layer))
    v = f"vqvae-k{sweep_size}" if sweep else variant
    arch = plan.variant_spec(v)["architecture"]

    def run(schedule: str) -> SimpleNamespace:
        return SimpleNamespace(dataset="digits", variant=v, schedule=schedule)

    return {
        "ae": plan.tok_ae_settings(SimpleNamespace(dataset="digits", arch=arch)),
        "init": plan.tok_init_settings(run("baseline")),
        "train": {"baseline": plan.tok_train_settings(run("baseline")),
                  "finetune": plan.tok_train_settings(run("deferred"))},
        "eval": {**plan.tok_eval_settings(run("baseline")), "fid": None, "lpips": None},
    }


def tok_unit(job: dict) -> list[dict]:
    """One (variant, codebook size, seed): the AE once, then every choice x arm."""
    quiet()
    from vqshrink.stages import tokenizer as tok
    from vqshrink.stages import tokenizer_eval as tok_eval

    cfg, variant, seed, size = job["cfg"], job["variant"], job["seed"], job["size"]
    work, data = Path(job["work"]), job["data"]
    tag = f"{variant}{size or ''}"
    d = work / f"tok_{tag}_seed{seed}"
    base = tok_settings(cfg, variant, {}, seed, size)
    ae = d / "ae"
    run = dict(preset="bench", checkpoint_interval_s=60.0)
    if not done(ae / "model.pt"):
        tok.pretrain_ae(data=data, model=str(ae / "model.pt"), curve=str(ae / "curve.csv"),
                        record=str(ae / "run.json"), state_dir=str(ae / "state"),
                        settings=base["ae"], **run)
    rows = []
    for choice in job["choices"]:
        applies, over = TOK_CHOICES[choice]
        if applies is not None and variant not in applies:
            continue
        s = tok_settings(cfg, variant, over, seed, size)
        for arm in ("baseline", "deferred"):
            r = d / choice.replace("=", "_") / arm
            if not done(r / "metrics.json"):
                t0 = time.process_time()
                tok.init_codebook(data=data, init=str(r / "init.pt"),
                                  embeddings=str(r / "emb.npz"), record=str(r / "init.json"),
                                  preset="bench", settings={**s["init"], "schedule": arm},
                                  ae=str(ae / "model.pt") if arm == "deferred" else None)
                phase = "baseline" if arm == "baseline" else "finetune"
                tok.train_vq(data=data, init=str(r / "init.pt"), model=str(r / "model.pt"),
                             curve=str(r / "curve.csv"), record=str(r / "run.json"),
                             state_dir=str(r / "state"), settings=s["train"][phase], **run)
                tok_eval.evaluate(data=data, model=str(r / "model.pt"),
                                  metrics=str(r / "metrics.json"),
                                  reconstructions=str(r / "recon.png"), settings=s["eval"],
                                  preset="bench")
                (r / "cpu_s.txt").write_text(f"{time.process_time() - t0}")
            rows.append(run_row(r, {"part": "demo tokenizer", "setup": tag, "seed": seed,
                                    "choice": choice, "arm": arm}, ("mse",)))
    return rows


def tok_jobs(cfg: dict, work: Path, seeds: list[int], sweep_sizes: list[int],
             choices: list[str], variants: tuple[str, ...]) -> list[dict]:
    from vqshrink.stages import data as data_stage

    data = work / "digits"
    if not data.exists():
        d = cfg["datasets"]["digits"]
        data_stage.prepare_data(data=str(data), settings={"name": "digits", **{
            k: v for k, v in d.items() if k != "checkpoint"}}, preset="bench")
    units = [(v, None) for v in variants] + [("sweep", k) for k in sweep_sizes]
    return [{"cfg": cfg, "variant": v, "size": k, "seed": sd, "work": str(work),
             "data": str(data), "choices": choices} for v, k in units for sd in seeds]


# ------------------------------------------------------------------------------ summary
def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per part x setup x choice x arm, plus the deferred - baseline
    gap of Euc. and perplexity (mean over seeds of the paired difference)."""
    keys = ["part", "setup", "choice", "arm"]
    agg = runs.groupby(keys, sort=False)[list(SUMMARY)].agg(["mean", "std"])
    agg.columns = [f"{m}_{s}" for m, s in agg.columns]
    agg = agg.reset_index()
    agg["seeds"] = runs.groupby(keys, sort=False)["seed"].nunique().values
    wide = runs.pivot_table(index=["part", "setup", "choice", "seed"], columns="arm",
                            values=["euclidean", "perplexity"])
    gap = pd.DataFrame({
        "euc_gap": wide[("euclidean", "deferred")] - wide[("euclidean", "baseline")],
        "ppl_gap": wide[("perplexity", "deferred")] - wide[("perplexity", "baseline")],
    }).groupby(level=["part", "setup", "choice"]).mean().reset_index()
    base = runs[runs["choice"] == "default"].set_index(["part", "setup", "arm", "seed"])
    paired = runs.join(base["euclidean"].rename("default_euc"), on=["part", "setup", "arm", "seed"])
    paired["euc_vs_default"] = paired["euclidean"] - paired["default_euc"]
    shift = paired.groupby(keys, sort=False)["euc_vs_default"].agg(["mean", "std"])
    shift.columns = ["euc_vs_default_mean", "euc_vs_default_std"]
    agg = agg.merge(shift.reset_index(), on=keys, how="left")
    return agg.merge(gap, on=["part", "setup", "choice"], how="left")


def markdown(summary: pd.DataFrame) -> str:
    lines = ["| part | setup | choice | arm | seeds | Euc. at init | k-means inertia | Euc. | "
             "Euc. - default's | perplexity | usage | Euc. gap (w/ - w/o) | perplexity gap |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in summary.iterrows():
        def ms(m: str, f: str) -> str:
            std = r[f"{m}_std"]
            return f"{r[f'{m}_mean']:{f}}" + ("" if pd.isna(std) else f" ± {std:{f.lstrip('+')}}")

        lines.append(f"| {r['part']} | {r['setup']} | {r['choice']} | {r['arm']} | "
                     f"{r['seeds']} | {ms('init_euclidean', '.3f')} | "
                     f"{ms('kmeans_inertia', '.4g')} | {ms('euclidean', '.3f')} | "
                     f"{ms('euc_vs_default', '+.3f')} | "
                     f"{ms('perplexity', '.1f')} | "
                     f"{ms('usage', '.3f')} | {r['euc_gap']:+.3f} | {r['ppl_gap']:+.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--dims", type=int, nargs="*", default=None,
                   help="synthetic input dims (default: synthetic.input_dims)")
    p.add_argument("--seeds", type=int, nargs="*", default=None,
                   help="synthetic seeds (default: synthetic.seeds)")
    p.add_argument("--tok-seeds", type=int, nargs="*", default=[0])
    p.add_argument("--sweep-sizes", type=int, nargs="*", default=[1024])
    p.add_argument("--skip", choices=["synthetic", "tokenizers"], action="append", default=[])
    p.add_argument("--choices", nargs="*", default=None,
                   help="run only these choices (default: all; 'default' is the baseline)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 2-D, one seed, 10 + 5 + 5 synthetic epochs")
    p.add_argument("--work", default="/tmp/vqshrink_open_choices",
                   help="run directory; finished runs found there are reused (resume)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)

    quiet()
    work, out = Path(args.work + ("_quick" if args.quick else "")), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    syn_cfg = load_config(None)  # the synthetic runs are the paper's in every preset
    demo = load_config("demo")
    dims = args.dims or syn_cfg["synthetic"]["input_dims"]
    seeds = args.seeds if args.seeds is not None else syn_cfg["synthetic"]["seeds"]
    tok_seeds = args.tok_seeds
    if args.quick:
        syn_cfg = copy.deepcopy(syn_cfg)
        syn_cfg["synthetic"]["epochs"] = {"baseline": 10, "pretrain": 5, "finetune": 5}
        dims, seeds, tok_seeds = [2], [0], [0]
    pick = (lambda names: [n for n in names if n in args.choices]) if args.choices else list
    jobs: list[tuple] = []
    if "synthetic" not in args.skip:
        jobs += [(syn_unit, j) for j in syn_jobs(syn_cfg, work, dims, seeds, pick(SYN_CHOICES))]
    if "tokenizers" not in args.skip:
        jobs += [(tok_unit, j) for j in tok_jobs(demo, work, tok_seeds, args.sweep_sizes,
                                                  pick(TOK_CHOICES), TOK_VARIANTS)]
    t0 = time.perf_counter()
    rows: list[dict] = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = [pool.submit(fn, j) for fn, j in jobs]
        for f in futures:
            rows += f.result()
            print(f"{len(rows)} runs done, {time.perf_counter() - t0:.0f} s", flush=True)
    runs = pd.DataFrame(rows)
    summary = summarise(runs)
    out.mkdir(parents=True, exist_ok=True)
    runs.to_csv(out / "open_choices_runs.csv", index=False)
    summary.to_csv(out / "open_choices.csv", index=False)
    (out / "open_choices.md").write_text(markdown(summary))
    print(markdown(summary))
    print(f"{len(runs)} runs, {time.perf_counter() - t0:.0f} s wall in this invocation; "
          f"{runs['cpu_s'].sum():.0f} s CPU recorded by {runs['cpu_s'].notna().sum()} runs "
          "(a resumed run records only its last part)")


if __name__ == "__main__":
    main()
