"""The plan: budget table and schedule checks from config alone (vqshrink.plan.budget)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch
import yaml

from vqshrink.data.prepared import fraction_sizes
from vqshrink.plan import budget as pb
from vqshrink.plan.schedule import epochs_to_steps, steps_per_epoch
from vqshrink.training import early_stopping_update

from repo_helpers import ROOT, copy_repo, snakemake

ODIR_TRAIN = 4475  # 6,392 Kaggle rows, 70% (train takes the rest of 20% test, 10% val)


def tok(**kw) -> pb.Run:
    """A tokenizer VQ phase on ODIR at the paper preset's settings (overridable)."""
    base = dict(rule_name="tokenizer_train_vq", run="results/tokenizers/odir/var_gan/deferred",
                dataset="odir", model="var/multiscale+gan", resolution=128, batch_size=128,
                max_epochs=50, eval_every=1, scheduler="plateau", plateau_patience=3,
                early_stopping_patience=10, gan=True, disc_start_epochs=12,
                kmeans_embeddings=32768, embeddings_per_image=256, gpus=2, runtime_min=1440,
                amp="bf16",
                keys={"batch_size": "tokenizers.training.batch_size",
                      "epochs": "tokenizers.training.epochs.finetune",
                      "warmup": "tokenizers.training.warmup_steps",
                      "plateau_patience": "tokenizers.training.plateau_patience",
                      "early_stopping_patience": "tokenizers.training.early_stopping_patience",
                      "disc_start": "tokenizers.loss.disc_start_epochs",
                      "kmeans": "tokenizers.kmeans.ratio"})
    return pb.Run(**{**base, **kw})


def gen(**kw) -> pb.Run:
    settings = {"family": "var",
                "optimizer": {"batch_size": 256, "warmup_epochs": 6},
                "training": {"epochs": 300, "eval_every_epochs": 1, "scheduler": "plateau",
                             "plateau_patience": 3, "early_stopping_patience": 10,
                             "amp": "bf16", "compile": False}}
    for k, v in kw.items():
        (settings["optimizer"] if k in settings["optimizer"] else settings["training"])[k] = v
    return pb.generator_run(run="results/generators/odir/var/var/baseline", dataset="odir",
                            resolution=128, settings=settings,
                            resources={"gpu": 2, "runtime": 1440})


def messages(run: pb.Run, train: int = ODIR_TRAIN) -> str:
    return "\n".join(pb.problems([run], {run.dataset: {"train": train}}))


# ---------------------------------------------------------------- split sizes
def test_known_sizes_split_like_the_datasets_preparation():
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    data, known = cfg["datasets"], cfg["plan"]["known_sizes"]
    assert pb.known_split_sizes("imagenet100", data["imagenet100"], known["imagenet100"]) == \
        {"train": 126689 - 25000, "val": 5000, "test": 20000}
    assert pb.known_split_sizes("cifar10", data["cifar10"], known["cifar10"]) == \
        {"train": 45000, "val": 5000, "test": 10000}
    # odir and digits: the preparation's own fraction rounding is the reference
    for name, fractions in (("odir", data["odir"]["fractions"]),
                            ("digits", {"train": 0.7, "val": 0.1, "test": 0.2})):
        n = known[name]["images"]
        ref = fraction_sizes(n, fractions, rest="train")
        ref["train"] = n - ref["test"] - ref["val"]
        assert pb.known_split_sizes(name, data[name], known[name]) == ref
    assert ref == {"train": 1258, "val": 180, "test": 359}  # digits, as the demo's val_images


def test_prepared_metadata_wins_and_a_missing_size_names_the_key(tmp_path):
    (tmp_path / "odir").mkdir()
    (tmp_path / "odir" / "meta.json").write_text(json.dumps(
        {"split_sizes": {"train": 4000, "val": 600, "test": 1200}}))
    sizes, source = pb.split_sizes("odir", {}, None, data_root=tmp_path)
    assert sizes["train"] == 4000 and source.endswith("odir/meta.json")
    with pytest.raises(pb.PlanError, match=r"plan\.known_sizes\.cifar10"):
        pb.split_sizes("cifar10", {}, None, data_root=tmp_path)


# ---------------------------------------------------------------- steps
def test_schedule_in_steps_scales_with_the_data():
    assert steps_per_epoch(ODIR_TRAIN, 128) == 34 and steps_per_epoch(10000, 256,
                                                                       drop_last=False) == 40
    s = pb.schedule(tok(max_epochs=100), ODIR_TRAIN)
    assert (s["steps_per_epoch"], s["max_steps"], s["disc_start_step"]) == (34, 3400, 408)
    assert pb.schedule(tok(), 101689)["disc_start_step"] == 12 * 794  # ImageNet-100: ~10,000
    assert pb.schedule(gen(), ODIR_TRAIN)["warmup_steps"] == 6 * 17
    assert pb.schedule(gen(), 101689)["warmup_steps"] == 6 * 397
    assert epochs_to_steps(0.5, 39) == 20  # the demo's GAN start, as its 20 steps before


# ---------------------------------------------------------------- each refused mistake
def test_gan_that_cannot_start_within_its_phase_is_refused():
    # taming's 10,000 steps on ODIR's 50-epoch fine-tuning (34 steps per epoch)
    msg = messages(tok(disc_start_epochs=10000 / 34))
    assert "config key tokenizers.loss.disc_start_epochs" in msg
    assert "starts at step 10,000" in msg and "at most 1,700 steps" in msg
    assert "restarts in every VQ phase" in msg
    assert messages(tok()) == ""


def test_warmup_longer_than_a_tenth_of_the_run_is_refused():
    msg = messages(gen(warmup_epochs=5000 / 17))  # 5,000 steps on ODIR
    assert "config key generators.models.var.optimizer.warmup_epochs" in msg
    assert "warm-up of 5,000 steps" in msg and "10% of the run's 5,100 maximum steps" in msg
    assert "warmup_epochs" not in messages(gen(warmup_epochs=30))  # exactly 10%: accepted
    assert "warmup_epochs" in messages(gen(warmup_epochs=31))
    # a tokenizer's warm-up only exists under the cosine schedule
    cosine = tok(gan=False, scheduler="cosine", warmup_steps=500, early_stopping_patience=0)
    assert "config key tokenizers.training.warmup_steps" in messages(cosine)


def _stops(evals: int, patience: int) -> bool:
    """Brute force: does early stopping end a run whose val loss only gets worse?"""
    book = {"best_val": math.inf, "bad_evals": 0, "stopped_early": False, "done": False}
    for i in range(evals):
        early_stopping_update(book, float(i), patience=patience, last_epoch=i == evals - 1)
        if book["done"]:
            return True
    return False


def _plateau_acts(evals: int, patience: int) -> bool:
    """Brute force: does ReduceLROnPlateau lower the rate before the last evaluation?"""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=patience)
    for i in range(evals - 1):  # a reduction at the last evaluation changes no step
        sched.step(float(i))
    return opt.param_groups[0]["lr"] < 1.0


@pytest.mark.parametrize("patience", [0, 1, 3, 10])
@pytest.mark.parametrize("epochs", [1, 2, 4, 5, 11, 12, 13, 14])
def test_patience_checks_match_the_training_code(epochs, patience):
    es = tok(gan=False, max_epochs=epochs, early_stopping_patience=patience, scheduler="none")
    refused = "early_stopping_patience" in messages(es)
    assert refused == (patience > 0 and not _stops(epochs, patience))
    pl = tok(gan=False, max_epochs=epochs, plateau_patience=patience,
             early_stopping_patience=0)
    assert ("plateau_patience" in messages(pl)) == (not _plateau_acts(epochs, patience))


def test_patience_counts_after_the_warmup_and_the_gan_start():
    msg = messages(gen(warmup_epochs=30, epochs=34))  # 5 evaluations from the warm-up's end
    assert "config key generators.training.plateau_patience: patience 3 can never act" in msg
    assert "counted after 510 warm-up steps" in msg
    # GAN from epoch 45 of 50: 5 evaluations count for early stopping (patience 10 needs 12)
    msg = messages(tok(disc_start_epochs=45))
    assert "config key tokenizers.training.early_stopping_patience: patience 10" in msg
    assert "counted after the GAN starts at step 1,530" in msg


def test_kmeans_sample_and_batch_larger_than_the_split_are_refused():
    msg = messages(tok(batch_size=32), train=100)  # 100 images x 256 positions < 2 x 16,384
    assert "config key tokenizers.kmeans.ratio" in msg and "= 25,600" in msg
    msg = messages(tok(batch_size=5000))
    assert "config key tokenizers.training.batch_size: batch_size 5000 is larger than the " \
           "training split (4,475 odir train images): 0 steps per epoch" in msg
    assert "generators.models.var.optimizer.batch_size" in messages(gen(batch_size=5000))


def test_problems_shared_by_runs_are_listed_once():
    runs = [tok(run=f"r{i}", disc_start_epochs=60) for i in range(3)]
    lines = pb.problems(runs, {"odir": {"train": ODIR_TRAIN}})
    assert len([x for x in lines if "disc_start_epochs" in x]) == 1
    assert "(in tokenizer_train_vq r0 and 2 more run(s))" in lines[0]
    with pytest.raises(pb.PlanError, match="nothing was run"):
        pb.check(runs, {"odir": {"train": ODIR_TRAIN}})


# ---------------------------------------------------------------- step times -> GPU-hours
def test_measured_step_times_fill_gpu_hours(tmp_path):
    rows = pb.budget_rows([tok(), gen()], {"odir": {"train": ODIR_TRAIN}}, {"odir": "test"})
    csv = tmp_path / "h200.csv"
    csv.write_text("rule,model,resolution,batch_per_gpu,amp,compile,step_s,peak_mem_gb\n"
                   "tokenizer_train_vq,var/multiscale+gan,128,64,none,false,0.5,30\n"
                   "tokenizer_train_vq,var/multiscale+gan,128,64,bf16,false,0.25,20\n")
    out = pb.write_budget(rows, tmp_path / "budget.csv", csv)
    assert out[0]["step_s"] == 0.25
    assert out[0]["est_gpu_hours"] == pytest.approx(1700 * 0.25 * 2 / 3600, abs=1e-3)
    assert out[1]["est_gpu_hours"] is None  # no measurement of the generator
    frame = pd.read_csv(tmp_path / "budget.csv")
    assert list(frame.columns) == pb.BUDGET_COLUMNS and frame["est_gpu_hours"].isna()[1]
    bad = tmp_path / "bad.csv"
    bad.write_text("rule,model,step_s\n")
    with pytest.raises(pb.PlanError, match="bad.csv: step-time CSV lacks column"):
        pb.write_budget(rows, tmp_path / "b2.csv", bad)


# ---------------------------------------------------------------- the workflow
def test_paper_budget_builds_without_any_dataset(tmp_path):
    repo = copy_repo(tmp_path)
    snakemake("-c1", "results/plan/budget.csv", cwd=repo)
    b = pd.read_csv(repo / "results/plan/budget.csv")
    odir_gan = b[(b["dataset"] == "odir") & b["model"].str.endswith("+gan")]
    assert len(odir_gan) == 4 and (odir_gan["disc_start_step"] == 408).all()
    assert (odir_gan["disc_start_step"] < odir_gan["max_steps"]).all()
    odir_gen = b[(b["dataset"] == "odir") & (b["rule"] == "generator_train")]
    assert (odir_gen["warmup_steps"] <= 0.1 * odir_gen["max_steps"]).all()
    assert set(odir_gen["warmup_steps"]) == {102, 204}
    assert (b.loc[b["dataset"] == "imagenet100", "train_images"] == 101689).all()
    assert b["est_gpu_hours"].isna().all()
    assert b["split_source"].str.contains("plan.known_sizes.odir").any()


def test_paper_preset_refuses_each_mistake_before_any_job(tmp_path):
    """Every mistake at once (one parse): each is named with its key."""
    repo = copy_repo(tmp_path)
    bad = {"tokenizers": {"loss": {"disc_start_epochs": 60}, "kmeans": {"ratio": 5000},
                          "training": {"batch_size": 5000}},
           "generators": {"models": {"maskgit": {"optimizer": {"warmup_epochs": 40}}},
                          "training": {"early_stopping_patience": 400}}}
    (repo / "bad.yaml").write_text(yaml.safe_dump(bad))
    proc = snakemake("-n", "results/plan/budget.csv", "--configfile", "config.yaml", "bad.yaml",
                     cwd=repo, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for key in ("tokenizers.loss.disc_start_epochs", "tokenizers.kmeans.ratio",
                "tokenizers.training.batch_size", "generators.training.early_stopping_patience",
                "generators.models.maskgit.optimizer.warmup_epochs"):
        assert f"config key {key}" in out, key
    assert "batch_size 5000 is larger than the training split (4,475 odir train images)" in out
    assert not (repo / "results" / "plan").exists()

