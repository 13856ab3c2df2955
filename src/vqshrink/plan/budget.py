"""The budget table and the schedule checks, from config alone (``results/plan/budget.csv``).

One :class:`Run` per training run of the targets (the workflow builds them from the same
settings its stages get). :func:`budget_rows` turns each into steps per epoch, maximum
steps, warm-up and GAN start in steps, the k-means sample and the job's resources;
:func:`problems` lists every schedule that would void an experiment on the dataset's real
size, naming the config key and the numbers:

- a batch larger than the training split (0 steps per epoch);
- a GAN variant whose discriminator cannot start within its phase;
- a warm-up longer than :data:`MAX_WARMUP_FRACTION` of the run's maximum steps;
- an early-stopping or plateau patience that can never act within the run's evaluations;
- a k-means sample larger than the embeddings the training split gives.

Split sizes come from the prepared dataset (``results/data/<dataset>/meta.json``) when it
exists, else from the source sizes in config (``plan.known_sizes``, each with its source),
split by the same rule as the dataset's preparation.

GPU-hours (``est_gpu_hours``) need measured step times: a CSV in ``benchmarks/gpu/``
(written by ``benchmarks/gpu_check.py``) with the columns of :data:`STEP_TIME_COLUMNS`,
one row per measured configuration. A budget row takes the ``step_s`` of the row with its
``rule``, ``model``, ``resolution``, ``batch_per_gpu``, ``amp`` and ``compile``, and
``est_gpu_hours = max_steps x step_s x gpus / 3600`` (training steps only, evaluation
excluded; DDP assumed to keep the per-GPU step time). Without a match it stays empty. Rows
of other kinds (sampling, search: column ``kind``) and failed measurements (no ``step_s``)
are not read.

Beside each run, the paper's own budget (App. A.1: 2 A100-40GB, 1.5-3 days per tokenizer,
3-6 days per generator; GPU-hours = 2 x 24 x days) where the paper gives one: the
``tokenizers`` section's VQ runs (a deferred tokenizer's autoencoder phase counted within its
days) and the ``generators`` section's runs. :func:`summary_rows` (``budget_summary.csv``)
sums both per config section and for the whole DAG, with the goal: the DAG's estimated
GPU-hours at most :data:`GOAL_FRACTION` of the paper's (its low end, 1.5 and 3 days).
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from vqshrink.plan.schedule import epochs_to_steps, steps_per_epoch

MAX_WARMUP_FRACTION = 0.1  # a warm-up longer than this share of the maximum steps is refused

BUDGET_COLUMNS = [
    "rule", "run", "dataset", "train_images", "split_source", "batch_size", "steps_per_epoch",
    "max_epochs", "max_steps", "warmup_steps", "disc_start_step", "kmeans_embeddings",
    "evaluations", "gpus", "runtime_min", "model", "resolution", "batch_per_gpu", "amp",
    "compile", "step_s", "step_times", "est_gpu_hours", "section", "paper_gpu_hours_low",
    "paper_gpu_hours_high",
]
# The paper's budget (App. A.1): 2 A100-40GB per run, days per run by config section and rule.
PAPER_GPUS = 2
PAPER_DAYS = {("tokenizers", "tokenizer_train_vq"): (1.5, 3.0),
              ("generators", "generator_train"): (3.0, 6.0)}
GOAL_FRACTION = 0.25  # the whole DAG in at most a quarter of the paper's GPU-hours
SUMMARY_COLUMNS = ["scope", "runs", "gpu_runs", "measured_runs", "est_gpu_hours",
                   "paper_gpu_hours_low", "paper_gpu_hours_high", "goal_gpu_hours",
                   "meets_goal", "note"]
# Columns of benchmarks/gpu/<device>.csv (one row per measured configuration):
#   rule          the budget's rule (tokenizer_pretrain_ae, tokenizer_train_vq, generator_train)
#   model         the budget's model key (e.g. maskgit/vq+gan, var/multiscale, var/ae, maskgit)
#   resolution    image size in pixels of the dataset the run trains on
#   batch_per_gpu images (token maps) per GPU per step
#   amp           none | bf16
#   compile       true | false (torch.compile)
#   step_s        seconds per optimiser step, training only
STEP_TIME_COLUMNS = ("rule", "model", "resolution", "batch_per_gpu", "amp", "compile", "step_s")


class PlanError(ValueError):
    """A schedule that would void an experiment; the message names the keys and numbers."""


@dataclass
class Run:
    """One training run as the budget and the checks see it.

    ``keys`` maps each setting (batch_size, epochs, warmup, disc_start, plateau_patience,
    early_stopping_patience, kmeans) to the config key that sets it.
    """

    rule_name: str  # the Snakemake rule that trains it (column "rule")
    run: str
    dataset: str
    model: str
    resolution: int
    batch_size: int
    max_epochs: int
    keys: dict
    eval_every: int = 0  # 0: no evaluation (synthetic runs)
    drop_last: bool = True
    warmup_epochs: float = 0.0  # generators (scales with the data)
    warmup_steps: int = 0  # tokenizers' cosine warm-up
    scheduler: str = "none"  # none | plateau | cosine
    plateau_patience: int = 0
    early_stopping_patience: int = 0
    gan: bool = False
    disc_start_epochs: float = 0.0
    kmeans_embeddings: int | None = None
    embeddings_per_image: int = 1
    gpus: int = 0
    runtime_min: int = 0
    amp: str = "none"
    compile: bool = False
    train_cap: int | None = None  # <section>.training.train_images (null: the whole split)
    extra: dict = field(default_factory=dict)

    def train_images(self, split: int) -> int:
        """Training images the run uses of a ``split``-image train split."""
        return split if self.train_cap is None else min(split, self.train_cap)


# ---------------------------------------------------------------- builders (from settings)
def latent_positions(model: dict) -> int:
    """Embeddings one image gives the k-means (its latent map's positions)."""
    if model["family"] == "cifar_vqvae":
        down = 4
    else:
        down = 2 ** (len(model["ch_mult"]) - 1)
    return (model["resolution"] // down) ** 2


def tokenizer_run(*, rule_name: str, run: str, dataset: str, model: str, settings: dict,
                  section: str, phase: str, resources: dict, kmeans: dict | None = None) -> Run:
    """A tokenizer phase (``settings``: the stage's; ``kmeans``: its codebook init's)."""
    tr, loss = settings["train"], settings["loss"]
    t = f"{section}.training"
    k = None
    if kmeans is not None:
        k = kmeans["kmeans"]["ratio"] * kmeans["model"]["codebook_size"]
    return Run(
        rule_name=rule_name, run=run, dataset=dataset, model=model,
        resolution=settings["model"]["resolution"], batch_size=tr["batch_size"],
        max_epochs=tr["epochs"], eval_every=tr["eval_every_epochs"],
        # the warm-up belongs to the cosine schedule (tokenizer._fit)
        warmup_steps=tr["warmup_steps"] if tr["scheduler"] == "cosine" else 0,
        scheduler=tr["scheduler"],
        plateau_patience=tr["plateau_patience"],
        early_stopping_patience=tr["early_stopping_patience"],
        gan=bool(loss["gan"]), disc_start_epochs=loss["disc_start_epochs"],
        kmeans_embeddings=k, embeddings_per_image=latent_positions(settings["model"]),
        gpus=resources["gpu"], runtime_min=resources["runtime"], amp=tr["amp"],
        compile=tr["compile"], train_cap=tr.get("train_images"),
        keys={"batch_size": f"{t}.batch_size", "epochs": f"{t}.epochs.{phase}",
              "warmup": f"{t}.warmup_steps", "plateau_patience": f"{t}.plateau_patience",
              "early_stopping_patience": f"{t}.early_stopping_patience",
              "disc_start": f"{section}.loss.disc_start_epochs",
              "kmeans": f"{section}.kmeans.ratio"},
    )


def generator_run(*, run: str, dataset: str, resolution: int, settings: dict,
                  resources: dict) -> Run:
    """A generator training run (``settings``: the stage's)."""
    g, opt, tr = settings["family"], settings["optimizer"], settings["training"]
    o = f"generators.models.{g}.optimizer"
    return Run(
        rule_name="generator_train", run=run, dataset=dataset, model=g, resolution=resolution,
        batch_size=opt["batch_size"], max_epochs=tr["epochs"], eval_every=tr["eval_every_epochs"],
        warmup_epochs=opt["warmup_epochs"], scheduler=tr["scheduler"],
        plateau_patience=tr["plateau_patience"],
        early_stopping_patience=tr["early_stopping_patience"],
        gpus=resources["gpu"], runtime_min=resources["runtime"], amp=tr["amp"],
        compile=tr["compile"], train_cap=tr.get("train_images"),
        keys={"batch_size": f"{o}.batch_size", "epochs": "generators.training.epochs",
              "warmup": f"{o}.warmup_epochs",
              "plateau_patience": "generators.training.plateau_patience",
              "early_stopping_patience": "generators.training.early_stopping_patience"},
    )


def synthetic_run(*, rule_name: str, run: str, settings: dict, phase: str, resources: dict,
                  kmeans_points: int | None = None) -> Run:
    """A synthetic phase: whole-data epochs with the last partial batch, no evaluation."""
    return Run(
        rule_name=rule_name, run=run, dataset=f"gaussians-{settings['input_dim']}d", model="mlp",
        resolution=0, batch_size=settings["batch_size"], max_epochs=settings["epochs"],
        drop_last=False, kmeans_embeddings=kmeans_points, gpus=resources["gpu"],
        runtime_min=resources["runtime"],
        keys={"batch_size": "synthetic.batch_size", "epochs": f"synthetic.epochs.{phase}",
              "kmeans": "synthetic.kmeans_points"},
    )


# ---------------------------------------------------------------- split sizes
def known_split_sizes(dataset: str, data_cfg: dict, known: dict) -> dict:
    """Split sizes from a dataset's source size (``plan.known_sizes``) and its split rule in
    config, as its preparation would make them (vqshrink.data: imagenet100 carves test and
    val from the ILSVRC train folders; odir and digits split by fractions, train taking the
    rest; cifar10 carves val from the official train set)."""
    n = known["images"]
    if dataset == "imagenet100":
        return {"train": n - data_cfg["test_size"] - data_cfg["val_size"],
                "val": data_cfg["val_size"], "test": data_cfg["test_size"]}
    if dataset == "cifar10":
        return {"train": n - data_cfg["val_size"], "val": data_cfg["val_size"],
                "test": known["test_images"]}
    fractions = data_cfg.get("fractions") or {"train": 0.7, "val": 0.1, "test": 0.2}
    sizes = {k: int(round(v * n)) for k, v in fractions.items() if k != "train"}
    return {"train": n - sum(sizes.values()), **sizes}


# The source paths a prepared dataset's meta.json records (vqshrink.data), per dataset.
SOURCE_KEYS = {"imagenet100": ("root",), "odir": ("image_dir", "annotation"),
               "cifar10": ("root",)}


def _same_sources(dataset: str, data_cfg: dict, recorded: dict) -> bool:
    """Whether a prepared dataset came from the configured sources (paths compared resolved;
    a null configured path matches no recorded one)."""
    for key in SOURCE_KEYS.get(dataset, ()):
        if key not in recorded:
            continue
        if data_cfg.get(key) is None or \
                Path(data_cfg[key]).resolve() != Path(recorded[key]).resolve():
            return False
    return True


def split_sizes(dataset: str, data_cfg: dict, known: dict | None,
                data_root: str | Path = "results/data") -> tuple[dict, str]:
    """(split sizes, where they come from): the prepared ``meta.json`` when it exists and
    was made from the configured sources (one from other sources, e.g. the smoke preset's,
    is prepared again), else the known source size in config. A dataset with neither is an
    error naming the key."""
    meta = Path(data_root) / dataset / "meta.json"
    if meta.is_file():
        prepared = json.loads(meta.read_text())
        if _same_sources(dataset, data_cfg, prepared.get("source", {})):
            return dict(prepared["split_sizes"]), str(meta)
    if not known:
        raise PlanError(f"config key plan.known_sizes.{dataset} is not set and {meta} does not "
                        "exist: the budget needs the dataset's size (give its image count and "
                        "source, or prepare the dataset)")
    return known_split_sizes(dataset, data_cfg, known), f"config plan.known_sizes.{dataset}: " \
        f"{known['source']}"


# ---------------------------------------------------------------- schedule in steps
def schedule(run: Run, train_images: int) -> dict:
    """Steps per epoch, maximum steps, warm-up and GAN start in steps, and the evaluations
    at which plateau and early stopping are updated (end-of-epoch step counts)."""
    spe = steps_per_epoch(train_images, run.batch_size, drop_last=run.drop_last)
    warmup = epochs_to_steps(run.warmup_epochs, spe) if run.warmup_epochs else run.warmup_steps
    disc = epochs_to_steps(run.disc_start_epochs, spe) if run.gan else None
    evals = []
    if run.eval_every:
        evals = [e * spe for e in range(1, run.max_epochs + 1)
                 if e % run.eval_every == 0 or e == run.max_epochs]
    return {"steps_per_epoch": spe, "max_steps": spe * run.max_epochs, "warmup_steps": warmup,
            "disc_start_step": disc, "eval_steps": evals}


def _never_acts(key: str, patience: int, needed: int, counted: int, why: str) -> list[tuple]:
    if counted < needed:
        return [(key, f"patience {patience} can never act: {why} gives {counted} "
                      f"evaluation(s), and acting needs at least {needed}")]
    return []


def run_problems(run: Run, split: int) -> list[tuple[str, str]]:
    """(config key, what is wrong with its numbers) for one run on a ``split``-image train
    split (of which an epoch uses ``run.train_images(split)``; the k-means sample, all)."""
    k = run.keys
    train_images = run.train_images(split)
    where = f"{train_images:,} {run.dataset} train images"
    if train_images < split:
        where += f" of {split:,}: the train_images cap"
    if run.drop_last and run.batch_size > train_images:
        return [(k["batch_size"], f"batch_size {run.batch_size} is larger than the training "
                                  f"split ({where}): 0 steps per epoch")]
    s = schedule(run, train_images)
    spe, max_steps = s["steps_per_epoch"], s["max_steps"]
    steps = f"{run.max_epochs} epochs x {spe} steps ({where} at batch {run.batch_size})"
    out = []
    if run.gan and s["disc_start_step"] >= max_steps:
        out.append((k["disc_start"],
                    f"the discriminator starts at step {s['disc_start_step']:,} "
                    f"({run.disc_start_epochs:g} epochs; the step counter restarts in every VQ "
                    f"phase) but the phase has at most {max_steps:,} steps ({steps}): the GAN "
                    "loss would never be used"))
    if s["warmup_steps"] > MAX_WARMUP_FRACTION * max_steps:
        out.append((k["warmup"],
                    f"warm-up of {s['warmup_steps']:,} steps is longer than "
                    f"{MAX_WARMUP_FRACTION:.0%} of the run's {max_steps:,} maximum steps "
                    f"({steps})"))
    evals = s["eval_steps"]
    # Early stopping: the first counted evaluation sets the best; `patience` worse ones in a
    # row stop the run unless it is the last evaluation anyway. GAN runs count evaluations
    # only once the discriminator has trained (the loss changes when it starts).
    if run.gan:
        counted = [e for e in evals if e > s["disc_start_step"]]
        why = f"{steps}, counted after the GAN starts at step {s['disc_start_step']:,},"
    else:
        counted, why = evals, f"{steps}, evaluated every {run.eval_every} epoch(s),"
    if run.early_stopping_patience:  # 0: off
        out += _never_acts(k["early_stopping_patience"], run.early_stopping_patience,
                           run.early_stopping_patience + 2, len(counted), why)
    if run.scheduler == "plateau":
        # ReduceLROnPlateau lowers the rate at its (patience + 2)-th update at the earliest;
        # training must go on after that. Generators update it after the warm-up only.
        counted = [e for e in evals if e >= s["warmup_steps"]]
        why = f"{steps}, counted after {s['warmup_steps']:,} warm-up steps," \
            if s["warmup_steps"] else f"{steps}, evaluated every {run.eval_every} epoch(s),"
        out += _never_acts(k["plateau_patience"], run.plateau_patience,
                           run.plateau_patience + 3, len(counted), why)
    if run.kmeans_embeddings is not None:
        have = split * run.embeddings_per_image
        if run.kmeans_embeddings > have:
            out.append((k["kmeans"],
                        f"the k-means sample of {run.kmeans_embeddings:,} embeddings is larger "
                        f"than the training split gives ({split:,} {run.dataset} train images "
                        f"x {run.embeddings_per_image} "
                        f"per image = {have:,})"))
    return out


def problems(runs: list[Run], sizes: dict[str, dict]) -> list[str]:
    """Every problem of ``runs`` (``sizes``: split sizes per dataset), one line per key and
    finding, naming the first run it concerns and how many others share it."""
    found: dict[tuple[str, str], list[str]] = {}
    for run in runs:
        for key, what in run_problems(run, sizes[run.dataset]["train"]):
            found.setdefault((key, what), []).append(f"{run.rule_name} {run.run}")
    lines = []
    for (key, what), where in found.items():
        more = f" and {len(where) - 1} more run(s)" if len(where) > 1 else ""
        lines.append(f"config key {key}: {what} (in {where[0]}{more})")
    return lines


def check(runs: list[Run], sizes: dict[str, dict]) -> None:
    """Raise :class:`PlanError` listing every problem of the planned runs."""
    lines = problems(runs, sizes)
    if lines:
        raise PlanError("the planned schedules would void experiments (nothing was run):\n  "
                        + "\n  ".join(lines))


# ---------------------------------------------------------------- the table
def budget_rows(runs: list[Run], sizes: dict[str, dict], sources: dict[str, str]) -> list[dict]:
    rows = []
    for run in runs:
        n = run.train_images(sizes[run.dataset]["train"])
        s = schedule(run, n)
        rows.append({
            "rule": run.rule_name, "run": run.run, "dataset": run.dataset, "train_images": n,
            "split_source": sources[run.dataset], "batch_size": run.batch_size,
            "steps_per_epoch": s["steps_per_epoch"], "max_epochs": run.max_epochs,
            "max_steps": s["max_steps"], "warmup_steps": s["warmup_steps"],
            "disc_start_step": s["disc_start_step"], "kmeans_embeddings": run.kmeans_embeddings,
            "evaluations": len(s["eval_steps"]), "gpus": run.gpus,
            "runtime_min": run.runtime_min, "model": run.model, "resolution": run.resolution,
            "batch_per_gpu": run.batch_size // max(run.gpus, 1), "amp": run.amp,
            "compile": run.compile, **paper_budget(run),
        })
    return rows


def paper_budget(run: Run) -> dict:
    """The run's config section and the paper's GPU-hours for it (empty where none is given)."""
    section = run.keys["batch_size"].split(".")[0]
    days = PAPER_DAYS.get((section, run.rule_name))
    low, high = (None, None) if days is None else (PAPER_GPUS * 24 * d for d in days)
    return {"section": section, "paper_gpu_hours_low": low, "paper_gpu_hours_high": high}


def _key(row: dict) -> tuple:
    return (str(row["rule"]), str(row["model"]), int(row["resolution"]),
            int(row["batch_per_gpu"]), str(row["amp"]), str(row["compile"]).lower())


def read_step_times(path: str | Path) -> dict[tuple, float]:
    """``benchmarks/gpu/<device>.csv`` as {join key: seconds per step}; missing columns are
    an error naming the file."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in STEP_TIME_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise PlanError(f"{path}: step-time CSV lacks column(s) {', '.join(missing)}; "
                            f"expected {', '.join(STEP_TIME_COLUMNS)}")
        return {_key(r): float(r["step_s"]) for r in reader
                if r["step_s"] and r.get("kind", "train") in ("", "train")}


def with_step_times(rows: list[dict], step_times: str | Path | None) -> list[dict]:
    """Fill ``step_s`` and ``est_gpu_hours`` from measured step times (empty without)."""
    times = read_step_times(step_times) if step_times else {}
    out = []
    for row in rows:
        step_s = times.get(_key(row)) if row["gpus"] else None
        est = None if step_s is None else row["max_steps"] * step_s * row["gpus"] / 3600
        out.append({**row, "step_s": step_s, "step_times": str(step_times or ""),
                    "est_gpu_hours": None if est is None else round(est, 3)})
    return out


def write_budget(rows: list[dict], path: str | Path, step_times: str | Path | None) -> list[dict]:
    """Write the budget CSV (columns :data:`BUDGET_COLUMNS`) atomically; returns its rows."""
    full = with_step_times(rows, step_times)
    _write_csv(full, path, BUDGET_COLUMNS)
    return full


def _write_csv(rows: list[dict], path: str | Path, columns: list[str]) -> None:
    """``rows`` as a CSV of ``columns`` (None: empty), written atomically."""
    from vqshrink.io import atomic_path  # imports torch: at job time only, never at parse time

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in columns})


def summary_rows(rows: list[dict]) -> list[dict]:
    """Per config section and for the whole DAG: runs, estimated GPU-hours (empty unless every
    GPU run of the scope has one), the paper's GPU-hours (low, high) and the goal."""
    scopes = {f"section {s}": [r for r in rows if r["section"] == s]
              for s in dict.fromkeys(r["section"] for r in rows)}
    scopes["whole DAG"] = rows
    out = []
    for scope, members in scopes.items():
        gpu = [r for r in members if r["gpus"]]
        measured = [r for r in gpu if r["est_gpu_hours"] is not None]
        est = math.fsum(r["est_gpu_hours"] for r in gpu) if gpu and len(measured) == len(gpu) \
            else None
        low = [r["paper_gpu_hours_low"] for r in members if r["paper_gpu_hours_low"] is not None]
        high = [r["paper_gpu_hours_high"] for r in members if r["paper_gpu_hours_high"] is not None]
        paper_low = math.fsum(low) if low else None
        goal = GOAL_FRACTION * paper_low if paper_low else None
        out.append({
            "scope": scope, "runs": len(members), "gpu_runs": len(gpu),
            "measured_runs": len(measured), "est_gpu_hours": None if est is None else round(est, 3),
            "paper_gpu_hours_low": paper_low, "paper_gpu_hours_high": math.fsum(high) if high else None,
            "goal_gpu_hours": goal,
            "meets_goal": None if est is None or goal is None else est <= goal,
            "note": "no GPU runs" if not gpu else "" if est is not None else
            f"{len(gpu) - len(measured)} GPU run(s) without a measured step time",
        })
    return out


def write_summary(rows: list[dict], path: str | Path) -> list[dict]:
    """Write :func:`summary_rows` of the budget's rows (columns :data:`SUMMARY_COLUMNS`)."""
    out = summary_rows(rows)
    _write_csv(out, path, SUMMARY_COLUMNS)
    return out
