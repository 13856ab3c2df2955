"""The experiment design, from the resolved config alone: which runs make each table and
figure, where each run lives, and the settings each stage gets.

The workflow builds one :class:`Plan` at parse time (``workflow/rules/common.smk``) and its
rules call its methods as input and params functions, with the rule's wildcards; tests call
them directly with a ``SimpleNamespace``. Nothing here imports torch, and nothing reads data:
a plan is known (and checked) before any job.

Paths are keyed by the dataset ACTUALLY used (the demo's substitute), so runs are shared::

    results/synthetic/dim{dim}/h{hidden}/seed{seed}/[ae|{schedule}]/  synthetic runs
    results/data/{dataset}/                               prepared images
    results/fid/{dataset}/{split}-{featnet}.npz           FID reference statistics
    results/tokenizers/{dataset}/ae-{arch}/               ONE autoencoder per architecture
    results/tokenizers/{dataset}/{variant}/{schedule}/    init/ vq/ eval/ tokens/
    results/generators/{dataset}/{generator}/{variant}/{schedule}/  model/ samples/ eval/
    results/state/...                                     training state (resumable reruns)

Tokenizer variants are ``tokenizers.variants`` and ``vqvae-k{K}`` for the Fig. 4 sweep
(``vqvae_sweep``); a generator's ``{variant}`` is the tokenizer whose tokens it reads.

Each stage gets only the settings it reads (a Snakemake param): changing one reruns that
stage and what depends on it, nothing else. The dicts built here are what the stages and
their records see, so their keys and order are part of the runs' identity.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from vqshrink import prerequisites as vqprereq
from vqshrink import weights as vqweights
from vqshrink.plan import budget as vqbudget
from vqshrink.plan.budget import PlanError
from vqshrink.plan.models import TOKEN_FIELDS, model_config_fields, sampling_keywords

SCHEDULES = ("baseline", "deferred")
SWEEP_ARCH = "cifar_vqvae"
IMAGE_DATASETS = ("imagenet100", "odir", "cifar10", "digits")
SMOKE_ROOT = "results/smoke_data"  # rule smoke_sources; the smoke preset's source paths

# What each dataset needs from you: config key under datasets.<name> -> what to put there.
DATASET_SOURCES = {
    "imagenet100": {"root": "the ILSVRC-2012 train directory (<root>/<wnid>/*.JPEG)"},
    "odir": {
        "image_dir": "the ODIR-5K image directory",
        "annotation": "its annotation file (Kaggle full_df.csv, or data.xlsx)",
    },
    "cifar10": {
        "root": "a directory holding cifar-10-batches-py/ "
        "(or where to download it, with datasets.cifar10.download: true)"
    },
    "digits": {},
}

# The metrics each group's training-curve figure draws (curve.csv column -> label).
CURVE_METRICS = {
    "synthetic": {"loss": "train loss"},
    "tokenizers": {"loss": "train loss", "val_rec": "val reconstruction loss"},
    "sweep": {"loss": "train loss", "val_rec": "val reconstruction loss"},
    "generators": {"loss": "train loss", "val_loss": "val loss"},
}

# Training runs by rule: the directory pattern whose groups are the rule's wildcards.
RUN_PATTERNS = {
    "tokenizer_pretrain_ae": r"results/tokenizers/(?P<dataset>[^/]+)/ae-(?P<arch>[^/]+)",
    "tokenizer_train_vq": r"results/tokenizers/(?P<dataset>[^/]+)/(?P<variant>[^/]+)/"
    r"(?P<schedule>baseline|deferred)",
    "generator_train": r"results/generators/(?P<dataset>[^/]+)/(?P<generator>[^/]+)/"
    r"(?P<variant>[^/]+)/(?P<schedule>baseline|deferred)",
    "synthetic_train_vq": r"results/synthetic/dim(?P<dim>\d+)/h(?P<hidden>\d+)/"
    r"seed(?P<seed>\d+)/(?P<schedule>baseline|deferred)",
}

SYN_DATA_KEYS = ("n_clusters", "points_per_cluster", "cluster_std", "center_box",
                 "min_separation", "data_seed")
SYN_MODEL_KEYS = ("hidden", "codebook_size", "beta", "ema_decay", "ema_smoothing")
SYN_TRAIN_KEYS = ("batch_size", "lr", "weight_decay", "device")


def vq_phase(schedule: str) -> str:
    """The training phase of a VQ run: from scratch (baseline) or fine-tuning (deferred)."""
    return "baseline" if schedule == "baseline" else "finetune"


def _runs(dims, hiddens, seeds, schedules) -> list[str]:
    return [f"results/synthetic/dim{d}/h{h}/seed{s}/{sched}"
            for d in dims for h in hiddens for s in seeds for sched in schedules]


class Plan:
    """The runs, paths and stage settings of one resolved config (see module docstring).

    Methods taking ``w`` read the rule's wildcards as attributes (``w.dataset``, ...)."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = config
        self.preset = config["preset"]
        self.syn = config["synthetic"]
        self.datasets = config["datasets"]
        self.metrics = config["metrics"]
        self.tok = config["tokenizers"]
        self.sweep = config["vqvae_sweep"]
        self.gen = config["generators"]
        self.featnet = self.metrics["fid_feature_net"]
        self.generators = tuple(self.gen["models"])
        # the Fig. 4 sweep's runs, one tokenizer variant per configured codebook size
        self.sweep_variants = {f"vqvae-k{k}": k for k in self.sweep["codebook_sizes"]}

    def check(self) -> None:
        """Every check the config alone allows (PlanError naming the key): unknown generator
        keys, then the schedules of every planned run against the datasets' real sizes."""
        self.check_generator_keys()
        self.check_token_cap()
        self.budget_plan()

    # ================================================================ shared
    def used_dataset(self, paper_dataset: str) -> str:
        """The dataset a run of ``paper_dataset`` actually uses (the demo's substitute)."""
        return self.datasets["substitute"] or paper_dataset

    def stage_resources(self, section: str, group: str | None = None) -> dict:
        """Standard Snakemake resources of a stage group (cluster names: profile); ``group``
        picks one of several groups of a section (e.g. the tokenizers' train/init/eval)."""
        res = self.config[section]["resources"]
        return dict(res[group] if group else res)

    # ---- prerequisites: dataset sources and pretrained weights
    def check_dataset_sources(self, dataset: str) -> None:
        """A dataset whose source path is null stops the run before any job."""
        null = [k for k in DATASET_SOURCES[dataset] if self.datasets[dataset][k] is None]
        if null:
            self.stop_for_prerequisites(
                f"dataset {dataset} is needed by the requested targets, but "
                + ", ".join(f"datasets.{dataset}.{k}" for k in null) + " is null")

    def get_dataset_sources(self, w) -> dict:
        """Source paths of a dataset (inputs of its preparation)."""
        self.check_dataset_sources(w.dataset)
        d = self.datasets[w.dataset]
        sources = {}
        if not (w.dataset == "cifar10" and d["download"]):
            sources = {key: d[key] for key in DATASET_SOURCES[w.dataset]}
        if w.dataset == "imagenet100":
            sources["class_list"] = d["class_list"]
        return sources

    def data_settings(self, w) -> dict:
        d = {k: v for k, v in self.datasets[w.dataset].items() if k != "checkpoint"}
        if w.dataset in ("imagenet100", "odir"):
            d["workers"] = self.datasets["workers"]
        return {"name": w.dataset, **d}

    @functools.cache
    def _missing_weights(self, fid: bool, lpips_net: str | None) -> list:
        return vqweights.missing_weights(fid, lpips_net, self.metrics["weights_dir"])

    def require_weights(self, w, *, fid: bool = False, lpips_net: str | None = None) -> dict:
        """Stop the DAG (before any job) when the job's dataset has no source path, or when
        pretrained weights it needs are missing."""
        self.check_dataset_sources(w.dataset)
        missing = self._missing_weights(fid, lpips_net)
        if missing:
            self.stop_for_prerequisites(
                "the requested targets need pretrained weights that are not on disk: "
                + ", ".join(f.name for f in missing))
        return {}

    def require_metric_weights(self, w) -> dict:
        """The weights of the evaluation metrics: FID's network and LPIPS's trunk."""
        self.require_weights(w, fid=self.featnet == "inception")
        if self.metrics["lpips_pretrained"]:
            self.require_weights(w, lpips_net=self.metrics["lpips_net"])
        return {}

    def weights_to_fetch(self) -> dict:
        """(fid, lpips nets) that the configured metrics and losses load with real weights."""
        nets = set()
        if self.metrics["lpips_pretrained"]:
            nets.add(self.metrics["lpips_net"])
        loss = self.tok["loss"]
        if loss["perceptual_weight"] > 0 and loss["lpips_pretrained"]:
            nets.add(loss["lpips_net"])
        return {"fid": self.featnet == "inception", "lpips_nets": sorted(nets)}

    def datasets_needed_by(self) -> dict[str, list[str]]:
        """Dataset actually used -> the paper targets that read it."""
        uses = [(t["dataset"], f"results/tables/{n}.csv") for n, t in self.tok["tables"].items()]
        uses += [(t["dataset"], f"results/tables/{n}.csv") for n, t in self.gen["tables"].items()]
        uses += [(self.sweep["dataset"], "results/figures/fig4.png")]
        uses += [(d, "results/figures/fig5.png") for d in self.gen["fig5"]["datasets"]]
        needed: dict[str, list[str]] = {}
        for paper_dataset, target in uses:
            needed.setdefault(self.used_dataset(paper_dataset), []).append(target)
        return needed

    def stop_for_prerequisites(self, reason: str) -> None:
        """Stop with one message naming everything the configured experiments still lack
        from the user (every null dataset key, every missing weight file with URL and target
        path, the one fetch command), not just what stopped this run."""
        keys = vqprereq.missing_dataset_keys(self.datasets, DATASET_SOURCES,
                                             self.datasets_needed_by())
        need = self.weights_to_fetch()
        files = vqprereq.missing_weight_files(need["fid"], need["lpips_nets"],
                                              self.metrics["weights_dir"])
        raise vqprereq.PrerequisitesMissing(
            vqprereq.message(reason, keys, files, self.metrics["weights_dir"], self.preset))

    # ---- metrics: FID reference statistics and the substitute classifier
    def fid_settings(self, dataset: str) -> dict:
        return {"feature_net": self.featnet, "batch_size": self.metrics["fid_batch_size"],
                "dataset": dataset}

    def fid_ref_path(self, dataset: str, split: str) -> str:
        return f"results/fid/{dataset}/{split}-{self.featnet}.npz"

    def get_fid_classifier(self, w) -> dict:
        if self.featnet == "classifier":
            return {"classifier": f"results/fid/{w.dataset}/classifier.pt"}
        return {}

    def get_ref_weights(self, w) -> dict:
        return self.require_weights(w, fid=self.featnet == "inception")

    def fid_reference_settings(self, w) -> dict:
        return {"split": w.split, "fid": self.fid_settings(w.dataset),
                "device": self.tok["training"]["device"]}

    def classifier_settings(self, w) -> dict:
        return {**self.metrics["classifier"], "dataset": w.dataset}

    # ================================================================ synthetic
    def syn_run(self, w, *parts: str) -> str:
        """results/synthetic/dim{dim}/h{hidden}/seed{seed}[/parts...] for wildcards ``w``."""
        return str(Path(f"results/synthetic/dim{w.dim}/h{w.hidden}/seed{w.seed}", *parts))

    def syn_state(self, w, stage: str) -> str:
        """Training state of a stage: outside its outputs, so reruns can resume."""
        parts = [f"dim{w.dim}", f"h{w.hidden}", f"seed{w.seed}"]
        parts += [w.schedule] if hasattr(w, "schedule") else []
        return str(Path("results", "state", "synthetic", *parts, stage))

    def syn_data_settings(self, w) -> dict:
        return {"input_dim": int(w.dim), **{k: self.syn[k] for k in SYN_DATA_KEYS}}

    def syn_model_settings(self, w) -> dict:
        hidden = int(w.hidden)
        return {
            "input_dim": int(w.dim),
            "token_dim": self.syn["token_dims"][str(w.dim)],
            "encoder_hidden": None if hidden == self.syn["hidden"] else hidden,
            "seed": int(w.seed),
            **{k: self.syn[k] for k in SYN_MODEL_KEYS},
        }

    def syn_train_settings(self, w, phase: str) -> dict:
        return {**self.syn_model_settings(w), **{k: self.syn[k] for k in SYN_TRAIN_KEYS},
                "epochs": self.syn["epochs"][phase]}

    def syn_ae_settings(self, w) -> dict:
        return self.syn_train_settings(w, "pretrain")

    def syn_vq_settings(self, w) -> dict:
        return self.syn_train_settings(w, vq_phase(w.schedule))

    def syn_init_settings(self, w) -> dict:
        return {
            **self.syn_model_settings(w),
            "batch_size": self.syn["batch_size"],
            "kmeans_points": self.syn["kmeans_points"],
            "kmeans_iters": self.syn["kmeans_iters"],
            "kmeans_init": self.syn["kmeans_init"],
            "schedule": w.schedule,
        }

    def syn_eval_settings(self, w) -> dict:
        return {**self.syn_model_settings(w), "schedule": w.schedule}

    def get_syn_ae(self, w) -> dict:
        """The deferred arm's codebook is fitted on the pretrained encoder; baseline's on none."""
        if w.schedule == "deferred":
            return {"ae": self.syn_run(w, "ae", "model.pt")}
        return {}

    def main_runs(self) -> list[str]:
        return _runs(self.syn["input_dims"], [self.syn["hidden"]], self.syn["seeds"], SCHEDULES)

    def collapse_runs(self) -> list[str]:
        ec = self.syn["embeddings_collapse"]
        return _runs([ec["input_dim"]], ec["encoder_hidden"], ec["seeds"], ["baseline"])

    # ================================================================ image tokenizers
    def tokenizer_variants(self) -> list[str]:
        """Every tokenizer variant: the tables' (tokenizers.variants) and the sweep's."""
        return [*self.tok["variants"], *self.sweep_variants]

    def variant_spec(self, variant: str) -> dict:
        if variant in self.sweep_variants:
            return {"experiment": self.sweep, "sweep": True, "architecture": SWEEP_ARCH,
                    "quantizer": "vq_ema", "gan": False,
                    "codebook_size": self.sweep_variants[variant]}
        v = self.tok["variants"][variant]
        return {"experiment": self.tok, "sweep": False, **v,
                "codebook_size": self.tok["codebook_size"]}

    def tok_experiment(self, w) -> Mapping:
        """The config section (tokenizers or vqvae_sweep) a job's wildcards belong to."""
        if hasattr(w, "variant"):
            return self.variant_spec(w.variant)["experiment"]
        return self.sweep if w.arch == SWEEP_ARCH else self.tok

    def arch_settings(self, arch: str, dataset: str) -> dict:
        base = self.sweep["architecture"] if arch == SWEEP_ARCH else self.tok["architectures"][arch]
        return {**base, "resolution": self.datasets[dataset]["resolution"]}

    def model_settings(self, w) -> dict:
        spec = self.variant_spec(w.variant)
        arch = self.arch_settings(spec["architecture"], w.dataset)
        k = spec["codebook_size"]
        if spec["sweep"]:
            return {**arch, "codebook_size": k, "beta": self.sweep["beta"],
                    "ema_decay": self.sweep["ema_decay"],
                    "ema_smoothing": self.sweep["ema_smoothing"]}
        multiscale = spec["quantizer"].startswith("multiscale")
        extra = {"patch_nums": self.tok["patch_nums"]} if multiscale else {}
        return {**arch, "quantizer": spec["quantizer"], "codebook_size": k,
                "beta": self.tok["beta"], **extra}

    @staticmethod
    def train_settings(exp: Mapping, phase: str) -> dict:
        t = exp["training"]
        common = {k: v for k, v in t.items() if k not in ("epochs", "scheduler")}
        return {**common, "epochs": t["epochs"][phase], "scheduler": t["scheduler"][phase]}

    def checkpoint_policy(self, w) -> str:
        """Which VQ weights go downstream: per dataset (App. A.1), the final ones in the sweep."""
        if self.variant_spec(w.variant)["sweep"]:
            return "final"
        return self.datasets[w.dataset]["checkpoint"]

    def tok_ae_settings(self, w) -> dict:
        exp = self.tok_experiment(w)
        return {"model": self.arch_settings(w.arch, w.dataset),
                "loss": {**exp["loss"], "gan": False},
                "train": self.train_settings(exp, "pretrain"),
                "seed": exp["seed"], "checkpoint": "final"}

    def tok_init_settings(self, w) -> dict:
        exp = self.tok_experiment(w)
        simvq = "simvq" in self.variant_spec(w.variant)["quantizer"]
        return {
            "model": self.model_settings(w),
            "kmeans": exp["kmeans"],
            "seed": exp["seed"],
            "schedule": w.schedule,
            "batch_size": exp["training"]["batch_size"],
            "device": exp["training"]["device"],
            **({"simvq_init": self.tok["simvq_init"]} if simvq else {}),
        }

    def tok_train_settings(self, w) -> dict:
        spec = self.variant_spec(w.variant)
        exp = spec["experiment"]
        settings = {"model": self.model_settings(w),
                    "loss": {**exp["loss"], "gan": spec["gan"]},
                    "train": self.train_settings(exp, vq_phase(w.schedule)),
                    "seed": exp["seed"], "checkpoint": self.checkpoint_policy(w)}
        if settings["checkpoint"] == "best_val_fid":
            settings["fid"] = self.fid_settings(w.dataset)
        return settings

    def tok_eval_settings(self, w) -> dict:
        spec = self.variant_spec(w.variant)
        full = not spec["sweep"]  # Fig. 4 reports MSE, perplexity and distance only
        lpips = {"net": self.metrics["lpips_net"], "pretrained": self.metrics["lpips_pretrained"]}
        return {"split": "test", "fid": self.fid_settings(w.dataset) if full else None,
                "lpips": lpips if full else None, "batch_size": self.metrics["fid_batch_size"],
                "device": spec["experiment"]["training"]["device"]}

    def tok_tokens_settings(self, w) -> dict:
        return {"batch_size": self.metrics["fid_batch_size"],
                "device": self.tok_experiment(w)["training"]["device"],
                "max_images": self.tok["tokens"]["max_images"]}

    def check_token_cap(self) -> None:
        """A cap on the exported token maps must cover the generators' own caps: a generator
        asking for every token map (null) or more maps than exported would train and validate
        on fewer than its settings say."""
        cap = self.tok["tokens"]["max_images"]
        if cap is None:
            return
        tr = self.gen["training"]
        for key in ("train_images", "val_images"):
            if tr.get(key) is None or tr[key] > cap:
                raise PlanError(
                    f"tokenizers.tokens.max_images is {cap}, so each split has at most {cap} "
                    f"token maps, but generators.training.{key} is {tr.get(key)}: set it to at "
                    f"most {cap}, or raise the cap")

    def tok_resources(self, group: str) -> dict:
        """Resources of a stage group, per job: the tokenizers' or the sweep's (config)."""

        def pick(name):
            return lambda wildcards: self.tok_experiment(wildcards)["resources"][group][name]

        return {name: pick(name) for name in ("gpu", "cpus_per_task", "mem_mb", "runtime")}

    def tok_threads(self, group: str):
        return lambda wildcards: self.tok_experiment(wildcards)["resources"][group]["cpus_per_task"]

    def tok_state(self, w, stage: str) -> str:
        """Training state of a tokenizer stage, outside its outputs (resumable reruns)."""
        parts = [w.dataset, f"ae-{w.arch}"] if stage == "ae" else [w.dataset, w.variant]
        parts += [w.schedule] if hasattr(w, "schedule") else []
        return str(Path("results", "state", "tokenizers", *parts, stage))

    def get_tok_ae(self, w) -> dict:
        """Deferred arms start from THE autoencoder of their dataset and architecture."""
        if w.schedule == "deferred":
            arch = self.variant_spec(w.variant)["architecture"]
            return {"ae": f"results/tokenizers/{w.dataset}/ae-{arch}/model.pt"}
        return {}

    def get_train_weights(self, w) -> dict:
        """LPIPS trunk of the training loss; Inception when the best val-FID weights are kept."""
        loss = self.tok_experiment(w)["loss"]
        pretrained = loss["perceptual_weight"] > 0 and loss["lpips_pretrained"]
        self.require_weights(w, lpips_net=loss["lpips_net"] if pretrained else None)
        if hasattr(w, "variant") and self.checkpoint_policy(w) == "best_val_fid":
            self.require_weights(w, fid=self.featnet == "inception")
        return {}

    def get_val_fid(self, w) -> dict:
        if self.checkpoint_policy(w) != "best_val_fid":
            return {}
        return {"val_ref": self.fid_ref_path(w.dataset, "val"), **self.get_fid_classifier(w)}

    def get_eval_fid(self, w) -> dict:
        if self.variant_spec(w.variant)["sweep"]:
            return {}
        return {"ref": self.fid_ref_path(w.dataset, "test"), **self.get_fid_classifier(w)}

    def get_eval_weights(self, w) -> dict:
        if self.variant_spec(w.variant)["sweep"]:
            return self.require_weights(w)
        return self.require_metric_weights(w)

    # ---- tables and Fig. 4
    def tok_table_rows(self, table: str) -> list[dict]:
        """One row per (variant, schedule) of a table, in the paper's order."""
        spec = self.tok["tables"][table]
        dataset = self.used_dataset(spec["dataset"])
        if spec["group_by"] == "schedule":  # Table 2: w/o Deferred rows first
            pairs = [(v, s) for s in SCHEDULES for v in spec["variants"]]
        else:  # per model: w/ Deferred, then w/o
            pairs = [(v, s) for v in spec["variants"] for s in ("deferred", "baseline")]
        variants = self.tok["variants"]
        return [{"variant": v, "schedule": s, "run": f"results/tokenizers/{dataset}/{v}/{s}",
                 "gan": variants[v]["gan"], "checkpoint": self.datasets[dataset]["checkpoint"],
                 **{f"paper_{k}": x for k, x in variants[v]["paper"].items()}}
                for v, s in pairs]

    def tok_table_settings(self, w) -> dict:
        spec = self.tok["tables"][w.tok_table]
        return {"table": w.tok_table.removeprefix("table"), "paper_dataset": spec["dataset"],
                "dataset": self.used_dataset(spec["dataset"]),
                "rows": self.tok_table_rows(w.tok_table)}

    def get_tok_table_inputs(self, w) -> dict:
        runs = [row["run"] for row in self.tok_table_rows(w.tok_table)]
        return {"metrics": [f"{r}/eval/metrics.json" for r in runs],
                "records": [f"{r}/vq/run.json" for r in runs],
                "tokens": [f"{r}/tokens/meta.json" for r in runs]}

    def sweep_runs(self) -> list[str]:
        dataset = self.used_dataset(self.sweep["dataset"])
        return [f"results/tokenizers/{dataset}/{v}/{s}"
                for v in self.sweep_variants for s in SCHEDULES]

    def fig4_settings(self) -> dict:
        return {"paper_dataset": self.sweep["dataset"],
                "dataset": self.used_dataset(self.sweep["dataset"]),
                "codebook_sizes": self.sweep["codebook_sizes"]}

    def tokenizer_targets(self) -> list[str]:
        tables = [f"results/tables/{t}.csv" for t in self.tok["tables"]]
        return tables + ["results/tables/fig4.csv", "results/figures/fig4.png"]

    # ================================================================ generators
    def gen_state(self, w) -> str:
        return str(Path("results", "state", "generators", w.dataset, w.generator, w.variant,
                        w.schedule))

    def gen_resources(self, group: str) -> dict:
        return self.stage_resources("generators", group)

    def gen_train_settings(self, w) -> dict:
        spec = self.gen["models"][w.generator]
        return {"family": w.generator, "model": spec["model"], "optimizer": spec["optimizer"],
                "training": self.gen["training"]}

    def gen_sample_settings(self, w) -> dict:
        s = self.gen["samples"]
        return {"sampling": self.gen["models"][w.generator]["sampling"],
                "per_class": s["per_class"][w.dataset], "seed": s["seed"],
                "batch_size": s["batch_size"], "grid": s["grid"],
                "max_images": s["max_images"], "device": self.gen["training"]["device"]}

    def gen_eval_settings(self, w) -> dict:
        e = self.gen["eval"]
        return {
            "fid": self.fid_settings(w.dataset),
            "lpips": {"net": self.metrics["lpips_net"],
                      "pretrained": self.metrics["lpips_pretrained"]},
            "lpips_images": e["lpips_images"][w.dataset],
            "pixel_norm": e["pixel_norm"],
            "pixel_scale": e["pixel_scale"],
            "batch_size": e["batch_size"],
            "seed": self.gen["samples"]["seed"],
            "device": self.gen["training"]["device"],
        }

    def get_gen_eval_inputs(self, w) -> dict:
        self.require_metric_weights(w)
        return {"ref": self.fid_ref_path(w.dataset, "test"), **self.get_fid_classifier(w)}

    def check_generator_keys(self) -> None:
        """Unknown keys under generators.models.<g>.model / .sampling stop the run, named:
        the allowed ones are the fields of the model's config dataclass and the options of
        its ``sample`` (read from their source, so the models stay the one source)."""
        for g, spec in self.gen["models"].items():
            for section, allowed in (
                ("model", set(model_config_fields(g)) - TOKEN_FIELDS),
                ("sampling", set(sampling_keywords(g))),
            ):
                for key in spec[section]:
                    if key not in allowed:
                        raise PlanError(
                            f"unknown config key generators.models.{g}.{section}.{key}; "
                            f"allowed keys: {', '.join(sorted(allowed))}")

    # ---- tables, Fig. 5
    def gen_table_rows(self, table: str) -> list[dict]:
        """Per [generator, tokenizer] pair of a table: w/ Deferred, then w/o (paper's order)."""
        spec = self.gen["tables"][table]
        dataset = self.used_dataset(spec["dataset"])
        variants = self.tok["variants"]
        return [{"generator": g, "variant": v, "schedule": s, "gan": variants[v]["gan"],
                 "paper_model": self.gen["models"][g]["paper_model"],
                 "paper_variant": variants[v]["paper"]["variant"],
                 "run": f"results/generators/{dataset}/{g}/{v}/{s}",
                 "tokenizer": f"results/tokenizers/{dataset}/{v}/{s}"}
                for g, v in spec["runs"] for s in ("deferred", "baseline")]

    def gen_table_settings(self, w) -> dict:
        spec = self.gen["tables"][w.gen_table]
        return {"table": w.gen_table.removeprefix("table"), "paper_dataset": spec["dataset"],
                "dataset": self.used_dataset(spec["dataset"]),
                "rows": self.gen_table_rows(w.gen_table),
                "max_samples": self.gen["samples"]["max_images"]}

    def get_gen_table_inputs(self, w) -> dict:
        rows = self.gen_table_rows(w.gen_table)
        inputs = {"metrics": [f"{r['run']}/eval/metrics.json" for r in rows],
                  "records": [f"{r['run']}/model/run.json" for r in rows]}
        if self.gen["tables"][w.gen_table].get("tokenizer_metrics"):
            inputs["tokenizer_metrics"] = [f"{r['tokenizer']}/eval/metrics.json" for r in rows]
        return inputs

    def fig5_panels(self) -> list[dict]:
        f = self.gen["fig5"]
        return [{"paper_dataset": d, "dataset": self.used_dataset(d), "schedule": s,
                 "run": f"results/generators/{self.used_dataset(d)}/{f['generator']}/"
                 f"{f['tokenizer']}/{s}"}
                for d in f["datasets"] for s in SCHEDULES]

    def fig5_settings(self) -> dict:
        f = self.gen["fig5"]
        return {"panels": self.fig5_panels(),
                "generator": self.gen["models"][f["generator"]]["paper_model"],
                "classes": f["classes"], "per_class": f["per_class"]}

    # ================================================================ training curves
    def used_image_datasets(self) -> list[str]:
        """Datasets actually used by the tables (the demo: digits only), in a stable order."""
        papers = [t["dataset"] for t in self.tok["tables"].values()]
        papers += [t["dataset"] for t in self.gen["tables"].values()]
        return list(dict.fromkeys(self.used_dataset(d) for d in papers))

    def tables_on(self, section: Mapping, dataset: str) -> list[Mapping]:
        """The table specs of a config section whose runs use ``dataset``."""
        return [t for t in section["tables"].values()
                if self.used_dataset(t["dataset"]) == dataset]

    def curve_runs(self, group: str, dataset: str) -> list[tuple[str, str, str]]:
        """(name, schedule, curve.csv) of every trained model of a group on a dataset."""
        runs = []
        if group == "synthetic":  # one panel per input dim (and collapse encoder)
            main = self.main_runs()
            for run in main + [r for r in self.collapse_runs() if r not in main]:
                dim, hidden, schedule = re.search(r"dim(\d+)/h(\d+)/seed\d+/(\w+)$",
                                                  run).groups()
                name = f"{dim}-D" + ("" if int(hidden) == self.syn["hidden"]
                                     else f", encoder {hidden}")
                if schedule == "deferred":
                    runs.append((name, "pretrain", f"{run.rsplit('/', 1)[0]}/ae/curve.csv"))
                runs.append((name, schedule, f"{run}/vq/curve.csv"))
        elif group == "tokenizers":
            variants = sorted({v for t in self.tables_on(self.tok, dataset) for v in t["variants"]}
                              | {v for t in self.tables_on(self.gen, dataset)
                                 for _, v in t["runs"]})
            archs = sorted({self.tok["variants"][v]["architecture"] for v in variants})
            for a in archs:
                runs.append((f"ae-{a}", "pretrain",
                             f"results/tokenizers/{dataset}/ae-{a}/curve.csv"))
            for v in variants:
                for s in SCHEDULES:
                    runs.append((v, s, f"results/tokenizers/{dataset}/{v}/{s}/vq/curve.csv"))
        elif group == "sweep":
            runs.append((f"ae-{SWEEP_ARCH}", "pretrain",
                         f"results/tokenizers/{dataset}/ae-{SWEEP_ARCH}/curve.csv"))
            for v, k in self.sweep_variants.items():
                for s in SCHEDULES:
                    runs.append((f"K={k}", s,
                                 f"results/tokenizers/{dataset}/{v}/{s}/vq/curve.csv"))
        else:
            pairs = sorted({tuple(p) for t in self.tables_on(self.gen, dataset)
                            for p in t["runs"]})
            for g, v in pairs:
                for s in SCHEDULES:
                    runs.append((f"{g} / {v}", s,
                                 f"results/generators/{dataset}/{g}/{v}/{s}/model/curve.csv"))
        return runs

    def curve_datasets(self, group: str) -> list[str]:
        if group == "synthetic":
            return ["gaussians"]
        if group == "sweep":
            return [self.used_dataset(self.sweep["dataset"])]
        return self.used_image_datasets()

    def get_curves(self, w) -> list[str]:
        return [c for _, _, c in self.curve_runs(w.group, w.dataset)]

    def curves_settings(self, w) -> dict:
        return {"title": f"{w.group} on {w.dataset}",
                "runs": [{"name": n, "schedule": s}
                         for n, s, _ in self.curve_runs(w.group, w.dataset)],
                "metrics": CURVE_METRICS[w.group]}

    # ================================================================ targets
    def generator_targets(self) -> list[str]:
        tables = [f"results/tables/{t}.csv" for t in self.gen["tables"]]
        curves = [f"results/figures/curves/{g}-{d}.png"
                  for g in CURVE_METRICS for d in self.curve_datasets(g)
                  if self.curve_runs(g, d)]
        return tables + ["results/figures/fig5.png"] + curves

    def image_tables(self) -> list[str]:
        """Every image table (the claims read them)."""
        return [f"results/tables/{t}.csv" for t in [*self.tok["tables"], *self.gen["tables"]]]

    def all_targets(self) -> list[str]:
        # Not results/plan/budget.csv: it is asked for on its own, and its split sizes change
        # once a dataset is prepared, so inside `all` it would be stale after every first build.
        return [
            "results/tables/synthetic.csv",
            "results/tables/synthetic_claims.csv",
            "results/tables/claims.csv",
            "results/tables/embeddings_collapse.csv",
            "results/figures/fig2.png",
            "results/figures/fig3.png",
            "results/figures/fig6.png",
            "results/figures/embeddings_collapse.png",
            *self.tokenizer_targets(),
            *self.generator_targets(),
        ]

    # ================================================================ budget
    def planned_run(self, rule_name: str, run: str) -> vqbudget.Run:
        """The plan's view of one training run directory (its stage's settings)."""
        w = SimpleNamespace(**re.fullmatch(RUN_PATTERNS[rule_name], run).groupdict())
        if rule_name == "synthetic_train_vq":
            phase = vq_phase(w.schedule)
            return vqbudget.synthetic_run(
                rule_name=rule_name, run=run, settings=self.syn_train_settings(w, phase),
                phase=phase, resources=self.stage_resources("synthetic"),
                kmeans_points=self.syn["kmeans_points"])
        if rule_name == "generator_train":
            return vqbudget.generator_run(
                run=run, dataset=w.dataset, resolution=self.datasets[w.dataset]["resolution"],
                settings=self.gen_train_settings(w), resources=self.gen_resources("train"))
        exp = self.tok_experiment(w)
        common = {"rule_name": rule_name, "run": run, "dataset": w.dataset,
                  "section": "vqvae_sweep" if exp is self.sweep else "tokenizers",
                  "resources": exp["resources"]["train"]}
        if rule_name == "tokenizer_pretrain_ae":
            return vqbudget.tokenizer_run(**common, model=f"{w.arch}/ae",
                                          settings=self.tok_ae_settings(w), phase="pretrain")
        spec = self.variant_spec(w.variant)
        model = f"{spec['architecture']}/{spec['quantizer']}" + ("+gan" if spec["gan"] else "")
        return vqbudget.tokenizer_run(**common, model=model,
                                      settings=self.tok_train_settings(w),
                                      phase=vq_phase(w.schedule),
                                      kmeans=self.tok_init_settings(w))

    def planned_runs(self) -> list[vqbudget.Run]:
        """Every training run of the targets (the curve inventories and Fig. 5), DAG order."""
        runs = {}
        for run in self.main_runs() + self.collapse_runs():
            w = SimpleNamespace(**re.fullmatch(RUN_PATTERNS["synthetic_train_vq"],
                                               run).groupdict())
            if w.schedule == "deferred":
                ae = self.syn_run(w, "ae")
                runs[ae] = vqbudget.synthetic_run(
                    rule_name="synthetic_pretrain_ae", run=ae,
                    settings=self.syn_train_settings(w, "pretrain"), phase="pretrain",
                    resources=self.stage_resources("synthetic"))
            runs[run] = self.planned_run("synthetic_train_vq", run)
        curves = [c for group in ("tokenizers", "sweep", "generators")
                  for d in self.curve_datasets(group) for _, _, c in self.curve_runs(group, d)]
        curves.extend(f"{p['run']}/model/curve.csv" for p in self.fig5_panels())
        for curve in curves:
            run = re.sub(r"(/vq|/model)?/curve\.csv$", "", curve)
            name = next(r for r, pat in RUN_PATTERNS.items() if re.fullmatch(pat, run))
            runs.setdefault(run, self.planned_run(name, run))
        return list(runs.values())

    def planned_split_sizes(self, runs) -> tuple[dict, dict]:
        """({dataset: split sizes}, {dataset: where they come from}) of the planned runs."""
        sizes, sources = {}, {}
        n = self.syn["n_clusters"] * self.syn["points_per_cluster"]
        for run in runs:
            d = run.dataset
            if d in sizes:
                continue
            if d.startswith("gaussians-"):
                sizes[d] = {"train": n}
                sources[d] = "synthetic.n_clusters x synthetic.points_per_cluster"
            else:
                sizes[d], sources[d] = vqbudget.split_sizes(
                    d, self.datasets[d], self.config["plan"]["known_sizes"].get(d))
        return sizes, sources

    @functools.cache
    def budget_plan(self) -> tuple[list, dict, dict]:
        """(runs, split sizes, sources) of the targets; refuses impossible schedules."""
        runs = self.planned_runs()
        sizes, sources = self.planned_split_sizes(runs)
        vqbudget.check(runs, sizes)
        return runs, sizes, sources

    def budget_settings(self) -> dict:
        return {"rows": vqbudget.budget_rows(*self.budget_plan())}

    def get_step_times(self, w, folder: str | Path = "benchmarks/gpu") -> dict:
        """The measured step times of plan.gpu (benchmarks/gpu/<gpu>.csv; null: the only one)."""
        folder = Path(folder)
        gpu = self.config["plan"]["gpu"]
        found = [folder / f"{gpu}.csv"] if gpu else sorted(folder.glob("*.csv"))
        found = [f for f in found if f.is_file()]
        return {"step_times": str(found[0])} if len(found) == 1 else {}
