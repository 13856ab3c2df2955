# Helpers shared by all rule files (config resolution, paths, settings, resources).
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

# The package is imported from this repository's src/ (installed or not).
sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from vqshrink import config as vqconfig

# Apply the preset overlay and validate the result before any rule is built.
_resolved = vqconfig.resolve(
    config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml"
)
config.clear()
config.update(_resolved)


def check_results_writable(root="results"):
    """Stop before any job when outputs could not be written (a file in the way, a
    read-only or immutable directory), naming the directory."""
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


check_results_writable()

PRESET = config["preset"]
SYN = config["synthetic"]
STAGE_SCRIPT = "../scripts/stage.py"
ENV = "../../envs/vqshrink.yaml"


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
SYN_MODEL_KEYS = ("hidden", "codebook_size", "beta", "ema_decay")
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
        "schedule": w.schedule,
    }


def stage_resources(section):
    """Standard Snakemake resources of a stage group, from config (cluster names: profile)."""
    return dict(config[section]["resources"])


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


# ---------------------------------------------------------------- targets
def all_targets():
    return [
        "results/tables/synthetic.csv",
        "results/tables/synthetic_claims.csv",
        "results/tables/embeddings_collapse.csv",
        "results/figures/fig2.png",
        "results/figures/fig3.png",
        "results/figures/fig6.png",
        "results/figures/embeddings_collapse.png",
    ]
