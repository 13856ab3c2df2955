"""The smoke preset: the paper's shapes with shrunk budgets, its budget caps, and a plan
that passes the schedule checks on the generated sources."""

from __future__ import annotations

import json

import numpy as np
import yaml

from vqshrink import config as vqconfig
from vqshrink.config import deep_merge
from vqshrink.plan import budget as pb
from vqshrink.stages.generator import capped_labels, sample_labels

from repo_helpers import ROOT, copy_repo, planned_jobs, snakemake

CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text())
SMOKE = deep_merge(CONFIG, CONFIG["presets"]["smoke"])

# What must stay exactly as in the paper preset (the point of the smoke preset).
SHAPE_KEYS = [
    ("tokenizers", "architectures"), ("tokenizers", "codebook_size"),
    ("tokenizers", "patch_nums"), ("tokenizers", "variants"), ("tokenizers", "tables"),
    ("vqvae_sweep", "architecture"), ("vqvae_sweep", "codebook_sizes"),
    ("generators", "tables"), ("generators", "fig5"),
    ("datasets", "imagenet100", "resolution"), ("datasets", "odir", "resolution"),
    ("datasets", "odir", "fractions"), ("datasets", "cifar10", "resolution"),
    ("metrics", "lpips_net"), ("tokenizers", "loss", "lpips_net"),
    ("tokenizers", "loss", "perceptual_weight"), ("tokenizers", "loss", "disc_layers"),
]


def _get(cfg, keys):
    for k in keys:
        cfg = cfg[k]
    return cfg


def test_smoke_keeps_every_paper_shape():
    """Compared as the stages see them: resolved, the models filled from their dataclasses."""
    schema = ROOT / "workflow" / "schemas" / "config.schema.yaml"
    paper, smoke = (vqconfig.resolve(CONFIG, schema, [{"preset": p}]) for p in ("paper", "smoke"))
    for keys in SHAPE_KEYS:
        assert _get(smoke, keys) == _get(paper, keys), ".".join(keys)
    for g in ("maskgit", "var", "llamagen"):
        assert smoke["generators"]["models"][g]["model"] == paper["generators"]["models"][g][
            "model"], g
    assert smoke["datasets"]["substitute"] is None


def test_budget_caps_are_null_at_paper_scale():
    assert CONFIG["generators"]["training"]["train_images"] is None
    assert CONFIG["generators"]["samples"]["max_images"] is None


def test_known_sizes_match_the_generated_sources():
    d, k = SMOKE["smoke_data"], SMOKE["plan"]["known_sizes"]
    assert k["imagenet100"]["images"] == 100 * d["imagenet100_per_class"]
    assert k["odir"]["images"] == d["odir_images"]
    assert k["cifar10"]["images"] == 5 * d["cifar10_per_batch"]
    assert k["cifar10"]["test_images"] == d["cifar10_test_images"]


def test_capped_labels_spread_over_the_classes():
    ys = sample_labels(np.repeat(np.arange(100), 2), 100, 1, seed=0)
    assert len(ys) == 100
    capped = capped_labels(ys, 8)
    assert len(capped) == 8 and len(set(capped.tolist())) == 8
    assert capped[0] == 0 and capped[-1] == 99 and np.all(np.diff(capped) > 0)
    assert capped_labels(ys, None) is ys and capped_labels(ys, 500) is ys


def test_generator_train_cap_sets_the_planned_steps():
    settings = {"family": "var", "optimizer": {"batch_size": 2, "warmup_epochs": 0},
                "training": {"epochs": 1, "eval_every_epochs": 1, "scheduler": "none",
                             "plateau_patience": 3, "early_stopping_patience": 0,
                             "amp": "none", "compile": False, "train_images": 4}}
    run = pb.generator_run(run="results/generators/odir/var/var/baseline", dataset="odir",
                           resolution=128, settings=settings, resources={"gpu": 0, "runtime": 60})
    sizes = {"odir": {"train": 70}}
    [row] = pb.budget_rows([run], sizes, {"odir": "test"})
    assert row["train_images"] == 4 and row["steps_per_epoch"] == 2 and row["max_steps"] == 2
    # a batch larger than the capped split is refused, naming the key
    settings["optimizer"]["batch_size"] = 8
    run = pb.generator_run(run="results/generators/odir/var/var/baseline", dataset="odir",
                           resolution=128, settings=settings, resources={"gpu": 0, "runtime": 60})
    assert "generators.models.var.optimizer.batch_size" in "\n".join(pb.problems([run], sizes))


def test_smoke_plan_passes_the_checks_and_generates_its_sources(tmp_path):
    repo = copy_repo(tmp_path)
    out = snakemake("-n", "-c1", "results/tables/table4.csv", "results/figures/fig4.png",
                    "--config", "preset=smoke", cwd=repo).stdout
    jobs = planned_jobs(out)
    assert jobs["smoke_sources"] == 1 and jobs["prepare_dataset"] == 2
    assert jobs["tokenizer_init_codebook"] == 4 + 2 * 13   # table 4 variants + Fig. 4's sizes


def test_tokenizer_train_cap_shortens_epochs_but_not_the_kmeans_sample():
    run = pb.Run(rule_name="tokenizer_train_vq", run="results/tokenizers/odir/var/baseline",
                 dataset="odir", model="var/multiscale", resolution=128, batch_size=8,
                 max_epochs=2, eval_every=1, kmeans_embeddings=16384, embeddings_per_image=256,
                 train_cap=16, keys={"batch_size": "b", "kmeans": "tokenizers.kmeans.ratio"})
    assert pb.problems([run], {"odir": {"train": 70}}) == []   # 70 x 256 >= 16,384
    [row] = pb.budget_rows([run], {"odir": {"train": 70}}, {"odir": "test"})
    assert (row["train_images"], row["steps_per_epoch"], row["max_steps"]) == (16, 2, 4)
    # the k-means sample still needs the whole split
    assert "tokenizers.kmeans.ratio" in "\n".join(pb.problems([run], {"odir": {"train": 60}}))


def test_prepared_metadata_of_other_sources_is_not_used(tmp_path):
    """A dataset prepared from other sources (the smoke preset's, in the same results/) does
    not set the paper plan's split sizes: its preparation reruns, so the plan uses the
    configured source's known size."""
    (tmp_path / "odir").mkdir()
    (tmp_path / "odir" / "meta.json").write_text(json.dumps(
        {"split_sizes": {"train": 70, "val": 10, "test": 20},
         "source": {"image_dir": str(tmp_path / "smoke" / "images"),
                    "annotation": str(tmp_path / "smoke" / "full_df.csv")}}))
    known = CONFIG["plan"]["known_sizes"]["odir"]
    paper = {**CONFIG["datasets"]["odir"], "image_dir": "/data/odir/images",
             "annotation": "/data/odir/full_df.csv"}
    sizes, source = pb.split_sizes("odir", paper, known, data_root=tmp_path)
    assert sizes["train"] == 4475 and source.startswith("config plan.known_sizes.odir")
    unset = {**paper, "image_dir": None, "annotation": None}   # the paper preset's default
    sizes, source = pb.split_sizes("odir", unset, known, data_root=tmp_path)
    assert sizes["train"] == 4475 and source.startswith("config plan.known_sizes.odir")
    smoke = {**paper, "image_dir": str(tmp_path / "smoke" / "images"),
             "annotation": str(tmp_path / "smoke" / "full_df.csv")}
    sizes, source = pb.split_sizes("odir", smoke, known, data_root=tmp_path)
    assert sizes["train"] == 70 and source.endswith("odir/meta.json")
