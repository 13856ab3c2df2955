# Helpers shared by all rule files (config resolution, paths, settings, resources).
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

# The package is imported from this repository's src/ (installed or not).
sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from vqshrink import config as vqconfig
from vqshrink import launch as vqlaunch
from vqshrink.code_version import code_version

# Layer config.yaml < preset < --configfile files < --config and validate the result,
# before any rule is built (vqshrink.config.layered_config).
_resolved = vqconfig.layered_config(
    workflow, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
)
config.clear()
config.update(_resolved)


def check_results_writable(root="results", below=False):
    """Stop before any job when outputs could not be written (a file in the way, a
    read-only or immutable directory; with ``below``, also one inside ``root``), naming
    the directory."""
    path = Path(root)
    probe = path / f".write-probe-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise WorkflowError(
            f"results directory {path.resolve()} is not writable: {err}"
        )
    for sub in path.rglob("*") if below else []:
        if sub.is_dir() and not os.access(sub, os.W_OK):
            raise WorkflowError(f"results directory {sub.resolve()} is not writable")


check_results_writable()
check_results_writable("results/state", below=True)  # written while stages train

PRESET = config["preset"]
SYN = config["synthetic"]
STAGE_SCRIPT = "../scripts/stage.py"
ENV = "../../envs/vqshrink.yaml"

# Where rules run is decided in one place (vqshrink.launch.placement): these rules (tables,
# figures, the weight download, tiny data steps) run on the submitting machine under every
# launcher and executor (what the `localrules:` directive does); every other rule is a job.
workflow.localrules(*vqlaunch.LOCAL_RULES)


def stage_params(stage):
    """A rule's stage and a fingerprint of the code it runs (vqshrink.code_version):
    a code change reruns the stages running that code and their dependents only."""
    return {"stage": stage, "code": code_version(stage)}


# ---------------------------------------------------------------- paths
def syn_run(w, *parts):
    """results/synthetic/dim{dim}/h{hidden}/seed{seed}[/parts...] for wildcards ``w``."""
    return str(Path(f"results/synthetic/dim{w.dim}/h{w.hidden}/seed{w.seed}", *parts))


def syn_state(w, stage):
    """Training state of a stage: outside its outputs, so reruns can resume."""
    parts = [f"dim{w.dim}", f"h{w.hidden}", f"seed{w.seed}"]
    parts += [w.schedule] if hasattr(w, "schedule") else []
    return str(Path("results", "state", "synthetic", *parts, stage))


def log_path(rule_name, pattern):
    return f"results/logs/{rule_name}/{pattern}.log"


def bench_path(rule_name, pattern):
    return f"results/benchmarks/{rule_name}/{pattern}.tsv"


# ---------------------------------------------------------------- settings
# Each stage gets only the settings it reads, as `params.settings`; changing one
# reruns that stage and what depends on it, nothing else.
SYN_DATA_KEYS = (
    "n_clusters",
    "points_per_cluster",
    "cluster_std",
    "center_box",
    "min_separation",
    "data_seed",
)
SYN_MODEL_KEYS = ("hidden", "codebook_size", "beta", "ema_decay", "ema_smoothing")
SYN_TRAIN_KEYS = ("batch_size", "lr", "weight_decay", "device")


def syn_data_settings(w):
    return {"input_dim": int(w.dim), **{k: SYN[k] for k in SYN_DATA_KEYS}}


def syn_model_settings(w):
    hidden = int(w.hidden)
    return {
        "input_dim": int(w.dim),
        "token_dim": SYN["token_dims"][str(w.dim)],
        "encoder_hidden": None if hidden == SYN["hidden"] else hidden,
        "seed": int(w.seed),
        **{k: SYN[k] for k in SYN_MODEL_KEYS},
    }


def syn_train_settings(w, phase):
    return {
        **syn_model_settings(w),
        **{k: SYN[k] for k in SYN_TRAIN_KEYS},
        "epochs": SYN["epochs"][phase],
    }


def syn_vq_phase(w):
    return "baseline" if w.schedule == "baseline" else "finetune"


def syn_init_settings(w):
    return {
        **syn_model_settings(w),
        "batch_size": SYN["batch_size"],
        "kmeans_points": SYN["kmeans_points"],
        "kmeans_iters": SYN["kmeans_iters"],
        "kmeans_init": SYN["kmeans_init"],
        "schedule": w.schedule,
    }


def stage_resources(section, group=None):
    """Standard Snakemake resources of a stage group, from config (cluster names: profile).
    ``group`` picks one of several groups of a section (e.g. tokenizers' train/init/eval).
    """
    res = config[section]["resources"]
    return dict(res[group] if group else res)


# ---------------------------------------------------------------- input functions
def get_syn_ae(w):
    """The deferred arm's codebook is fitted on the pretrained encoder; baseline's on none."""
    if w.schedule == "deferred":
        return {"ae": syn_run(w, "ae", "model.pt")}
    return {}


def syn_runs(dims, hiddens, seeds, schedules):
    return [
        f"results/synthetic/dim{d}/h{h}/seed{s}/{sched}"
        for d in dims
        for h in hiddens
        for s in seeds
        for sched in schedules
    ]


def main_runs():
    return syn_runs(
        SYN["input_dims"], [SYN["hidden"]], SYN["seeds"], ["baseline", "deferred"]
    )


def collapse_runs():
    ec = SYN["embeddings_collapse"]
    return syn_runs([ec["input_dim"]], ec["encoder_hidden"], ec["seeds"], ["baseline"])


# ---------------------------------------------------------------- image tokenizers (issue 3)
# Paths are keyed by the dataset ACTUALLY used (the demo's substitute), so runs are shared:
#   results/data/{dataset}/                               prepared images (data.smk)
#   results/fid/{dataset}/{split}-{featnet}.npz           FID reference statistics
#   results/tokenizers/{dataset}/ae-{arch}/               ONE autoencoder per architecture
#   results/tokenizers/{dataset}/{variant}/{schedule}/    init/, vq/, eval/, tokens/
# Variants: tokenizers.variants, and vqvae-k{K} for the Fig. 4 sweep (vqvae_sweep).
import functools
import re

from vqshrink import prerequisites as vqprereq
from vqshrink import weights as vqweights

DATASETS = config["datasets"]
SMOKE_ROOT = "results/smoke_data"  # rule smoke_sources; the smoke preset's source paths
METRICS = config["metrics"]
TOK = config["tokenizers"]
SWEEP = config["vqvae_sweep"]
SWEEP_ARCH = "cifar_vqvae"
SWEEP_VARIANT = re.compile(r"vqvae-k(\d+)")
FEATNET = METRICS["fid_feature_net"]
IMAGE_DATASETS = ("imagenet100", "odir", "cifar10", "digits")
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


def used_dataset(paper_dataset):
    """The dataset a run of ``paper_dataset`` actually uses (the demo's substitute)."""
    return DATASETS["substitute"] or paper_dataset


def check_dataset_sources(dataset):
    """A dataset whose source path is null stops the run before any job (see
    stop_for_prerequisites)."""
    null = [k for k in DATASET_SOURCES[dataset] if DATASETS[dataset][k] is None]
    if null:
        stop_for_prerequisites(
            f"dataset {dataset} is needed by the requested targets, but "
            + ", ".join(f"datasets.{dataset}.{k}" for k in null)
            + " is null"
        )


def get_dataset_sources(w):
    """Source paths of a dataset (inputs of its preparation)."""
    check_dataset_sources(w.dataset)
    d = DATASETS[w.dataset]
    sources = {}
    if not (w.dataset == "cifar10" and d["download"]):
        sources = {key: d[key] for key in DATASET_SOURCES[w.dataset]}
    if w.dataset == "imagenet100":
        sources["class_list"] = d["class_list"]
    return sources


def data_settings(w):
    d = {k: v for k, v in DATASETS[w.dataset].items() if k != "checkpoint"}
    if w.dataset in ("imagenet100", "odir"):
        d["workers"] = DATASETS["workers"]
    return {"name": w.dataset, **d}


# ---- metrics: FID reference statistics, substitute classifier, pretrained weights
def fid_settings(dataset):
    return {
        "feature_net": FEATNET,
        "batch_size": METRICS["fid_batch_size"],
        "dataset": dataset,
    }


def fid_ref_path(dataset, split):
    return f"results/fid/{dataset}/{split}-{FEATNET}.npz"


def get_fid_classifier(w):
    if FEATNET == "classifier":
        return {"classifier": f"results/fid/{w.dataset}/classifier.pt"}
    return {}


@functools.cache
def _missing_weights(fid, lpips_net):
    return vqweights.missing_weights(fid, lpips_net, METRICS["weights_dir"])


def require_weights(w, *, fid=False, lpips_net=None):
    """Stop the DAG (before any job) when the job's dataset has no source path, or when
    pretrained weights it needs are missing (see stop_for_prerequisites)."""
    check_dataset_sources(w.dataset)
    missing = _missing_weights(fid, lpips_net)
    if missing:
        stop_for_prerequisites(
            "the requested targets need pretrained weights that are not on disk: "
            + ", ".join(f.name for f in missing)
        )
    return {}


def datasets_needed_by():
    """Dataset actually used -> the paper targets that read it (for the message below)."""
    uses = [(t["dataset"], f"results/tables/{n}.csv") for n, t in TOK["tables"].items()]
    uses += [
        (t["dataset"], f"results/tables/{n}.csv") for n, t in GEN["tables"].items()
    ]
    uses += [(SWEEP["dataset"], "results/figures/fig4.png")]
    uses += [(d, "results/figures/fig5.png") for d in GEN["fig5"]["datasets"]]
    needed = {}
    for paper_dataset, target in uses:
        needed.setdefault(used_dataset(paper_dataset), []).append(target)
    return needed


def stop_for_prerequisites(reason):
    """Stop Snakemake with one message naming everything the configured experiments still
    lack from the user (every null dataset key, every missing weight file with URL and
    target path, the one fetch command), not just what stopped this run."""
    keys = vqprereq.missing_dataset_keys(
        DATASETS, DATASET_SOURCES, datasets_needed_by()
    )
    need = weights_to_fetch()
    files = vqprereq.missing_weight_files(
        need["fid"], need["lpips_nets"], METRICS["weights_dir"]
    )
    raise vqprereq.PrerequisitesMissing(
        vqprereq.message(reason, keys, files, METRICS["weights_dir"], PRESET)
    )


def get_ref_weights(w):
    return require_weights(w, fid=FEATNET == "inception")


def get_train_weights(w):
    """LPIPS trunk of the training loss; Inception when the best val-FID weights are kept."""
    loss = tok_experiment(w)["loss"]
    pretrained = loss["perceptual_weight"] > 0 and loss["lpips_pretrained"]
    require_weights(w, lpips_net=loss["lpips_net"] if pretrained else None)
    if hasattr(w, "variant") and checkpoint_policy(w) == "best_val_fid":
        require_weights(w, fid=FEATNET == "inception")
    return {}


def require_metric_weights(w):
    """The weights of the evaluation metrics: FID's network and LPIPS's trunk."""
    require_weights(w, fid=FEATNET == "inception")
    if METRICS["lpips_pretrained"]:
        require_weights(w, lpips_net=METRICS["lpips_net"])
    return {}


def get_eval_weights(w):
    if variant_spec(w.variant)["sweep"]:
        return require_weights(w)
    return require_metric_weights(w)


def weights_to_fetch():
    """(fid, lpips nets) that the configured metrics and losses load with real weights."""
    nets = set()
    if METRICS["lpips_pretrained"]:
        nets.add(METRICS["lpips_net"])
    if TOK["loss"]["perceptual_weight"] > 0 and TOK["loss"]["lpips_pretrained"]:
        nets.add(TOK["loss"]["lpips_net"])
    return {"fid": FEATNET == "inception", "lpips_nets": sorted(nets)}


# ---- runs: variants, architectures, settings per stage
def variant_spec(variant):
    m = SWEEP_VARIANT.fullmatch(variant)
    if m:
        return {
            "experiment": SWEEP,
            "sweep": True,
            "architecture": SWEEP_ARCH,
            "quantizer": "vq_ema",
            "gan": False,
            "codebook_size": int(m.group(1)),
        }
    v = TOK["variants"][variant]
    return {
        "experiment": TOK,
        "sweep": False,
        **v,
        "codebook_size": TOK["codebook_size"],
    }


def tok_experiment(w):
    """The config section (tokenizers or vqvae_sweep) a job's wildcards belong to."""
    if hasattr(w, "variant"):
        return variant_spec(w.variant)["experiment"]
    return SWEEP if w.arch == SWEEP_ARCH else TOK


def arch_settings(arch, dataset):
    base = SWEEP["architecture"] if arch == SWEEP_ARCH else TOK["architectures"][arch]
    return {**base, "resolution": DATASETS[dataset]["resolution"]}


def model_settings(w):
    spec = variant_spec(w.variant)
    arch = arch_settings(spec["architecture"], w.dataset)
    k = spec["codebook_size"]
    if spec["sweep"]:
        return {
            **arch,
            "codebook_size": k,
            "beta": SWEEP["beta"],
            "ema_decay": SWEEP["ema_decay"],
            "ema_smoothing": SWEEP["ema_smoothing"],
        }
    multiscale = spec["quantizer"].startswith("multiscale")
    extra = {"patch_nums": TOK["patch_nums"]} if multiscale else {}
    return {
        **arch,
        "quantizer": spec["quantizer"],
        "codebook_size": k,
        "beta": TOK["beta"],
        **extra,
    }


def train_settings(exp, phase):
    t = exp["training"]
    common = {k: v for k, v in t.items() if k not in ("epochs", "scheduler")}
    return {**common, "epochs": t["epochs"][phase], "scheduler": t["scheduler"][phase]}


def checkpoint_policy(w):
    """Which VQ weights go downstream: per dataset (App. A.1), the final ones in the sweep."""
    if variant_spec(w.variant)["sweep"]:
        return "final"
    return DATASETS[w.dataset]["checkpoint"]


def tok_ae_settings(w):
    exp = tok_experiment(w)
    return {
        "model": arch_settings(w.arch, w.dataset),
        "loss": {**exp["loss"], "gan": False},
        "train": train_settings(exp, "pretrain"),
        "seed": exp["seed"],
        "checkpoint": "final",
    }


def tok_init_settings(w):
    exp = tok_experiment(w)
    spec = variant_spec(w.variant)
    simvq = "simvq" in spec["quantizer"]
    return {
        "model": model_settings(w),
        "kmeans": exp["kmeans"],
        "seed": exp["seed"],
        "schedule": w.schedule,
        "batch_size": exp["training"]["batch_size"],
        "device": exp["training"]["device"],
        **({"simvq_init": TOK["simvq_init"]} if simvq else {}),
    }


def tok_train_settings(w):
    spec = variant_spec(w.variant)
    exp = spec["experiment"]
    phase = "baseline" if w.schedule == "baseline" else "finetune"
    settings = {
        "model": model_settings(w),
        "loss": {**exp["loss"], "gan": spec["gan"]},
        "train": train_settings(exp, phase),
        "seed": exp["seed"],
        "checkpoint": checkpoint_policy(w),
    }
    if settings["checkpoint"] == "best_val_fid":
        settings["fid"] = fid_settings(w.dataset)
    return settings


def tok_eval_settings(w):
    spec = variant_spec(w.variant)
    full = not spec["sweep"]  # Fig. 4 reports MSE, perplexity and distance only
    lpips = {"net": METRICS["lpips_net"], "pretrained": METRICS["lpips_pretrained"]}
    return {
        "split": "test",
        "fid": fid_settings(w.dataset) if full else None,
        "lpips": lpips if full else None,
        "batch_size": METRICS["fid_batch_size"],
        "device": spec["experiment"]["training"]["device"],
    }


def tok_resources(group):
    """Resources of a stage group, per job: the tokenizers' or the sweep's (config)."""

    def pick(name):
        return lambda wildcards: tok_experiment(wildcards)["resources"][group][name]

    return {name: pick(name) for name in ("gpu", "cpus_per_task", "mem_mb", "runtime")}


def tok_threads(group):
    return lambda wildcards: tok_experiment(wildcards)["resources"][group][
        "cpus_per_task"
    ]


def tok_state(w, stage):
    """Training state of a tokenizer stage, outside its outputs (resumable reruns)."""
    parts = [w.dataset, f"ae-{w.arch}"] if stage == "ae" else [w.dataset, w.variant]
    parts += [w.schedule] if hasattr(w, "schedule") else []
    return str(Path("results", "state", "tokenizers", *parts, stage))


def get_tok_ae(w):
    """Deferred arms start from THE autoencoder of their dataset and architecture."""
    if w.schedule == "deferred":
        arch = variant_spec(w.variant)["architecture"]
        return {"ae": f"results/tokenizers/{w.dataset}/ae-{arch}/model.pt"}
    return {}


def get_val_fid(w):
    if checkpoint_policy(w) != "best_val_fid":
        return {}
    return {"val_ref": fid_ref_path(w.dataset, "val"), **get_fid_classifier(w)}


def get_eval_fid(w):
    if variant_spec(w.variant)["sweep"]:
        return {}
    return {"ref": fid_ref_path(w.dataset, "test"), **get_fid_classifier(w)}


# ---- tables and Fig. 4
def tok_table_rows(table):
    """One row per (variant, schedule) of a table, in the paper's order."""
    spec = TOK["tables"][table]
    dataset = used_dataset(spec["dataset"])
    if spec["group_by"] == "schedule":  # Table 2: w/o Deferred rows first
        pairs = [(v, s) for s in ("baseline", "deferred") for v in spec["variants"]]
    else:  # per model: w/ Deferred, then w/o
        pairs = [(v, s) for v in spec["variants"] for s in ("deferred", "baseline")]
    return [
        {
            "variant": v,
            "schedule": s,
            "run": f"results/tokenizers/{dataset}/{v}/{s}",
            "gan": TOK["variants"][v]["gan"],
            "checkpoint": DATASETS[dataset]["checkpoint"],
            **{f"paper_{k}": x for k, x in TOK["variants"][v]["paper"].items()},
        }
        for v, s in pairs
    ]


def tok_table_settings(w):
    spec = TOK["tables"][w.tok_table]
    return {
        "table": w.tok_table.removeprefix("table"),
        "paper_dataset": spec["dataset"],
        "dataset": used_dataset(spec["dataset"]),
        "rows": tok_table_rows(w.tok_table),
    }


def get_tok_table_inputs(w):
    runs = [row["run"] for row in tok_table_rows(w.tok_table)]
    return {
        "metrics": [f"{r}/eval/metrics.json" for r in runs],
        "records": [f"{r}/vq/run.json" for r in runs],
        "tokens": [f"{r}/tokens/meta.json" for r in runs],
    }


def sweep_runs():
    dataset = used_dataset(SWEEP["dataset"])
    return [
        f"results/tokenizers/{dataset}/vqvae-k{k}/{s}"
        for k in SWEEP["codebook_sizes"]
        for s in ("baseline", "deferred")
    ]


def tokenizer_targets():
    tables = [f"results/tables/{t}.csv" for t in TOK["tables"]]
    return tables + ["results/tables/fig4.csv", "results/figures/fig4.png"]


# ---------------------------------------------------------------- generators (issue 4)
#   results/generators/{dataset}/{generator}/{variant}/{schedule}/  model/ samples/ eval/
# {variant} is the tokenizer variant whose tokens the generator reads (same dataset, schedule).
GEN = config["generators"]
GENERATORS = tuple(GEN["models"])


def gen_run(w):
    return f"results/generators/{w.dataset}/{w.generator}/{w.variant}/{w.schedule}"


def tok_run(w):
    return f"results/tokenizers/{w.dataset}/{w.variant}/{w.schedule}"


def gen_state(w):
    return str(
        Path(
            "results",
            "state",
            "generators",
            w.dataset,
            w.generator,
            w.variant,
            w.schedule,
        )
    )


def gen_device():
    return GEN["training"]["device"]


def gen_train_settings(w):
    spec = GEN["models"][w.generator]
    return {
        "family": w.generator,
        "model": spec["model"],
        "optimizer": spec["optimizer"],
        "training": GEN["training"],
    }


def gen_sample_settings(w):
    return {
        "sampling": GEN["models"][w.generator]["sampling"],
        "per_class": GEN["samples"]["per_class"][w.dataset],
        "seed": GEN["samples"]["seed"],
        "batch_size": GEN["samples"]["batch_size"],
        "grid": GEN["samples"]["grid"],
        "max_images": GEN["samples"]["max_images"],
        "device": gen_device(),
    }


def gen_eval_settings(w):
    e = GEN["eval"]
    return {
        "fid": fid_settings(w.dataset),
        "lpips": {
            "net": METRICS["lpips_net"],
            "pretrained": METRICS["lpips_pretrained"],
        },
        "lpips_images": e["lpips_images"][w.dataset],
        "pixel_norm": e["pixel_norm"],
        "pixel_scale": e["pixel_scale"],
        "batch_size": e["batch_size"],
        "seed": GEN["samples"]["seed"],
        "device": gen_device(),
    }


def get_gen_eval_inputs(w):
    require_metric_weights(w)
    return {"ref": fid_ref_path(w.dataset, "test"), **get_fid_classifier(w)}


def gen_resources(group):
    return stage_resources("generators", group)


def check_generator_keys():
    """Unknown keys under generators.models.<g>.model / .sampling stop the run, named."""
    import inspect

    from vqshrink.stages.generator import config_keys, model_classes

    for g, spec in GEN["models"].items():
        fixed = {"vocab_size", "num_classes", "token_shape", "patch_nums", "token_dim"}
        allowed = set(config_keys(g)) - fixed
        for key in spec["model"]:
            if key not in allowed:
                raise WorkflowError(
                    f"unknown config key generators.models.{g}.model.{key}; allowed keys: "
                    f"{', '.join(sorted(allowed))}"
                )
        params = inspect.signature(model_classes(g)[1].sample).parameters
        allowed = {
            k
            for k, p in params.items()
            if p.kind is p.KEYWORD_ONLY and not k.startswith("_")
        } - {"generator"}
        for key in spec["sampling"]:
            if key not in allowed:
                raise WorkflowError(
                    f"unknown config key generators.models.{g}.sampling.{key}; allowed keys: "
                    f"{', '.join(sorted(allowed))}"
                )


check_generator_keys()


# ---- tables, Fig. 5, training curves
def gen_table_rows(table):
    """Per [generator, tokenizer] pair of a table: w/ Deferred, then w/o (the paper's order)."""
    spec = GEN["tables"][table]
    dataset = used_dataset(spec["dataset"])
    rows = []
    for g, v in spec["runs"]:
        for s in ("deferred", "baseline"):
            rows.append(
                {
                    "generator": g,
                    "variant": v,
                    "schedule": s,
                    "gan": TOK["variants"][v]["gan"],
                    "paper_model": GEN["models"][g]["paper_model"],
                    "paper_variant": TOK["variants"][v]["paper"]["variant"],
                    "run": f"results/generators/{dataset}/{g}/{v}/{s}",
                    "tokenizer": f"results/tokenizers/{dataset}/{v}/{s}",
                }
            )
    return rows


def gen_table_settings(w):
    spec = GEN["tables"][w.gen_table]
    return {
        "table": w.gen_table.removeprefix("table"),
        "paper_dataset": spec["dataset"],
        "dataset": used_dataset(spec["dataset"]),
        "rows": gen_table_rows(w.gen_table),
        "max_samples": GEN["samples"]["max_images"],
    }


def get_gen_table_inputs(w):
    rows = gen_table_rows(w.gen_table)
    inputs = {
        "metrics": [f"{r['run']}/eval/metrics.json" for r in rows],
        "records": [f"{r['run']}/model/run.json" for r in rows],
    }
    if GEN["tables"][w.gen_table].get("tokenizer_metrics"):
        inputs["tokenizer_metrics"] = [
            f"{r['tokenizer']}/eval/metrics.json" for r in rows
        ]
    return inputs


def fig5_panels():
    f = GEN["fig5"]
    return [
        {
            "paper_dataset": d,
            "dataset": used_dataset(d),
            "schedule": s,
            "run": f"results/generators/{used_dataset(d)}/{f['generator']}/{f['tokenizer']}/{s}",
        }
        for d in f["datasets"]
        for s in ("baseline", "deferred")
    ]


def used_image_datasets():
    """Datasets actually used by the tables (the demo: digits only), in a stable order."""
    papers = [t["dataset"] for t in TOK["tables"].values()]
    papers += [t["dataset"] for t in GEN["tables"].values()]
    return list(dict.fromkeys(used_dataset(d) for d in papers))


def tables_on(section, dataset):
    """The table specs of a config section whose runs use ``dataset``."""
    return [
        t for t in section["tables"].values() if used_dataset(t["dataset"]) == dataset
    ]


def curve_runs(group, dataset):
    """(name, schedule, curve.csv) of every trained model of a group on a dataset."""
    runs = []
    if (
        group == "synthetic"
    ):  # one panel per input dim (and collapse encoder): mean over seeds
        main = main_runs()
        for run in main + [r for r in collapse_runs() if r not in main]:
            m = re.search(r"dim(\d+)/h(\d+)/seed\d+/(\w+)$", run)
            dim, hidden, schedule = m.groups()
            name = f"{dim}-D" + (
                "" if int(hidden) == SYN["hidden"] else f", encoder {hidden}"
            )
            if schedule == "deferred":
                runs.append((name, "pretrain", f"{run.rsplit('/', 1)[0]}/ae/curve.csv"))
            runs.append((name, schedule, f"{run}/vq/curve.csv"))
    elif group == "tokenizers":
        variants = sorted(
            {v for t in tables_on(TOK, dataset) for v in t["variants"]}
            | {v for t in tables_on(GEN, dataset) for _, v in t["runs"]}
        )
        archs = sorted({TOK["variants"][v]["architecture"] for v in variants})
        for a in archs:
            runs.append(
                (
                    f"ae-{a}",
                    "pretrain",
                    f"results/tokenizers/{dataset}/ae-{a}/curve.csv",
                )
            )
        for v in variants:
            for s in ("baseline", "deferred"):
                runs.append(
                    (v, s, f"results/tokenizers/{dataset}/{v}/{s}/vq/curve.csv")
                )
    elif group == "sweep":
        runs.append(
            (
                f"ae-{SWEEP_ARCH}",
                "pretrain",
                f"results/tokenizers/{dataset}/ae-{SWEEP_ARCH}/curve.csv",
            )
        )
        for k in SWEEP["codebook_sizes"]:
            for s in ("baseline", "deferred"):
                runs.append(
                    (
                        f"K={k}",
                        s,
                        f"results/tokenizers/{dataset}/vqvae-k{k}/{s}/vq/curve.csv",
                    )
                )
    else:
        pairs = sorted({tuple(p) for t in tables_on(GEN, dataset) for p in t["runs"]})
        for g, v in pairs:
            for s in ("baseline", "deferred"):
                runs.append(
                    (
                        f"{g} / {v}",
                        s,
                        f"results/generators/{dataset}/{g}/{v}/{s}/model/curve.csv",
                    )
                )
    return runs


CURVE_METRICS = {
    "synthetic": {"loss": "train loss"},
    "tokenizers": {"loss": "train loss", "val_rec": "val reconstruction loss"},
    "sweep": {"loss": "train loss", "val_rec": "val reconstruction loss"},
    "generators": {"loss": "train loss", "val_loss": "val loss"},
}


def curve_datasets(group):
    if group == "synthetic":
        return ["gaussians"]
    if group == "sweep":
        return [used_dataset(SWEEP["dataset"])]
    return used_image_datasets()


def generator_targets():
    tables = [f"results/tables/{t}.csv" for t in GEN["tables"]]
    curves = [
        f"results/figures/curves/{g}-{d}.png"
        for g in CURVE_METRICS
        for d in curve_datasets(g)
        if curve_runs(g, d)
    ]
    return tables + ["results/figures/fig5.png"] + curves


# ---------------------------------------------------------------- plan: budget and checks
# Every training run of the targets, with the settings its stage gets, goes through the
# package's plan (vqshrink.plan.budget: no torch): the budget table, and checks that refuse
# before any job a schedule that would void an experiment on the dataset's real size.
from types import SimpleNamespace

from vqshrink.plan import budget as vqbudget

PLAN = config["plan"]
RUN_PATTERNS = {
    "tokenizer_pretrain_ae": r"results/tokenizers/(?P<dataset>[^/]+)/ae-(?P<arch>[^/]+)",
    "tokenizer_train_vq": r"results/tokenizers/(?P<dataset>[^/]+)/(?P<variant>[^/]+)/"
    r"(?P<schedule>baseline|deferred)",
    "generator_train": r"results/generators/(?P<dataset>[^/]+)/(?P<generator>[^/]+)/"
    r"(?P<variant>[^/]+)/(?P<schedule>baseline|deferred)",
    "synthetic_train_vq": r"results/synthetic/dim(?P<dim>\d+)/h(?P<hidden>\d+)/"
    r"seed(?P<seed>\d+)/(?P<schedule>baseline|deferred)",
}


def planned_run(rule_name, run):
    """The plan's view of one training run directory (its stage's settings)."""
    w = SimpleNamespace(**re.fullmatch(RUN_PATTERNS[rule_name], run).groupdict())
    if rule_name == "synthetic_train_vq":
        phase = syn_vq_phase(w)
        return vqbudget.synthetic_run(
            rule_name=rule_name,
            run=run,
            settings=syn_train_settings(w, phase),
            phase=phase,
            resources=stage_resources("synthetic"),
            kmeans_points=SYN["kmeans_points"],
        )
    if rule_name == "generator_train":
        return vqbudget.generator_run(
            run=run,
            dataset=w.dataset,
            resolution=DATASETS[w.dataset]["resolution"],
            settings=gen_train_settings(w),
            resources=gen_resources("train"),
        )
    exp = tok_experiment(w)
    common = {
        "rule_name": rule_name,
        "run": run,
        "dataset": w.dataset,
        "section": "vqvae_sweep" if exp is SWEEP else "tokenizers",
        "resources": exp["resources"]["train"],
    }
    if rule_name == "tokenizer_pretrain_ae":
        return vqbudget.tokenizer_run(
            **common,
            model=f"{w.arch}/ae",
            settings=tok_ae_settings(w),
            phase="pretrain",
        )
    spec = variant_spec(w.variant)
    model = f"{spec['architecture']}/{spec['quantizer']}"
    if spec["gan"]:
        model = f"{spec['architecture']}/{spec['quantizer']}+gan"
    return vqbudget.tokenizer_run(
        **common,
        model=model,
        settings=tok_train_settings(w),
        phase="baseline" if w.schedule == "baseline" else "finetune",
        kmeans=tok_init_settings(w),
    )


def planned_runs():
    """Every training run of the targets (the curve inventories and Fig. 5), in DAG order."""
    runs = {}
    for run in main_runs() + collapse_runs():
        w = SimpleNamespace(
            **re.fullmatch(RUN_PATTERNS["synthetic_train_vq"], run).groupdict()
        )
        if w.schedule == "deferred":
            ae = syn_run(w, "ae")
            runs[ae] = vqbudget.synthetic_run(
                rule_name="synthetic_pretrain_ae",
                run=ae,
                settings=syn_train_settings(w, "pretrain"),
                phase="pretrain",
                resources=stage_resources("synthetic"),
            )
        runs[run] = planned_run("synthetic_train_vq", run)
    curves = [
        c
        for group in ("tokenizers", "sweep", "generators")
        for d in curve_datasets(group)
        for _, _, c in curve_runs(group, d)
    ]
    curves.extend(f"{p['run']}/model/curve.csv" for p in fig5_panels())
    for curve in curves:
        run = re.sub(r"(/vq|/model)?/curve\.csv$", "", curve)
        name = next(r for r, pat in RUN_PATTERNS.items() if re.fullmatch(pat, run))
        runs.setdefault(run, planned_run(name, run))
    return list(runs.values())


def planned_split_sizes(runs):
    """({dataset: split sizes}, {dataset: where they come from}) of the planned runs."""
    sizes, sources = {}, {}
    n = SYN["n_clusters"] * SYN["points_per_cluster"]
    for run in runs:
        d = run.dataset
        if d in sizes:
            continue
        if d.startswith("gaussians-"):
            sizes[d] = {"train": n}
            sources[d] = "synthetic.n_clusters x synthetic.points_per_cluster"
        else:
            sizes[d], sources[d] = vqbudget.split_sizes(
                d, DATASETS[d], PLAN["known_sizes"].get(d)
            )
    return sizes, sources


@functools.cache
def budget_plan():
    """(runs, split sizes, sources) of the targets; refuses impossible schedules."""
    runs = planned_runs()
    try:
        sizes, sources = planned_split_sizes(runs)
        vqbudget.check(runs, sizes)
    except vqbudget.PlanError as err:
        raise WorkflowError(str(err))
    return runs, sizes, sources


def budget_settings():
    return {"rows": vqbudget.budget_rows(*budget_plan())}


def get_step_times(w):
    """The measured step times of plan.gpu (benchmarks/gpu/<gpu>.csv; null: the only one)."""
    folder = Path("benchmarks/gpu")
    if PLAN["gpu"]:
        found = [folder / f"{PLAN['gpu']}.csv"]
    else:
        found = sorted(folder.glob("*.csv"))
    found = [f for f in found if f.is_file()]
    return {"step_times": str(found[0])} if len(found) == 1 else {}


budget_plan()


# ---------------------------------------------------------------- targets
def all_targets():
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
        *tokenizer_targets(),
        *generator_targets(),
    ]
