"""Generator stages at tiny size on CPU: every generator trains on real token maps
of a tiny tokenizer, samples a fixed number per class and is evaluated; seeded sampling;
step-exact resume; the tables' paper columns; config errors; the SLURM plan's resources."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from vqshrink.data.prepared import PreparedImages
from vqshrink.io import load_json, load_torch
from vqshrink.metrics import diversity
from vqshrink.models import generator_registry, registry
from vqshrink.stages import generator as gen
from vqshrink.stages import generator_report as grep
from vqshrink.stages import tokenizer as tok
from vqshrink.stages import tokenizer_eval as tok_eval

from image_fixtures import (FID, count_host_reads, data, fid_net, kill_at_step,  # noqa: F401
                            nan_at_step,
                            one_thread)
from repo_helpers import ROOT, copy_repo, fake_sources, snakemake

ARCH = {"family": "vqgan", "resolution": 16, "ch": 32, "ch_mult": [1, 1], "num_res_blocks": 1,
        "attn_resolutions": [], "dropout": 0.0, "z_channels": 32, "embed_dim": 8}
LOSS = {"pixel_weight": 1.0, "perceptual_weight": 0.0, "codebook_weight": 1.0,
        "lpips_net": "vgg", "lpips_pretrained": False, "gan": False, "disc_start_epochs": 0,
        "disc_weight": 0.8, "adaptive": True, "disc_betas": [0.5, 0.9], "disc_layers": 2}
TOK_TRAIN = {"batch_size": 32, "lr": 1e-3, "min_lr": 1e-5, "betas": [0.9, 0.95],
             "weight_decay": 0.0, "amsgrad": False, "grad_clip": 1.0, "scheduler": "none",
             "plateau_factor": 0.5, "plateau_patience": 1, "warmup_steps": 0,
             "early_stopping_patience": 0, "eval_every_epochs": 1, "val_images": 40,
             "epochs": 1, "amp": "none", "compile": False, "device": "cpu"}
MODELS = {  # tiny versions of the config's generators
    "maskgit": {"depth": 2, "width": 32, "heads": 2, "mlp_dim": 64, "dropout": 0.1,
                "class_dropout": 0.1, "mask_schedule": "cosine"},
    "var": {"depth": 2, "width": 32, "heads": 2, "class_dropout": 0.1},
    "llamagen": {"n_layer": 2, "n_head": 2, "dim": 32, "class_dropout_prob": 0.1},
}
SAMPLING = {"maskgit": {"steps": 4, "guidance": 1.0},
            "var": {"cfg": 1.5, "top_k": 8, "top_p": 0.9},
            "llamagen": {"cfg_scale": 2.0}}
GEN_TRAIN = {"epochs": 2, "min_lr": 1e-6, "scheduler": "plateau", "plateau_factor": 0.5,
             "plateau_patience": 1,
             "early_stopping_patience": 0, "eval_every_epochs": 1, "val_images": 40,
             "checkpoint": "best_val_loss", "amp": "none", "compile": False, "device": "cpu",
             "seed": 0}


def _tokenizer(data: str, d: Path, quantizer: str, loss: dict = LOSS) -> dict:
    """A tiny tokenizer trained one epoch, with its token maps (the DAG's tokenizer stages)."""
    extra = {"patch_nums": [1, 2, 4, 8]} if quantizer == "multiscale" else {}
    model = {**ARCH, "quantizer": quantizer, "codebook_size": 32, "beta": 0.25, **extra}
    d.mkdir(parents=True)
    tok.init_codebook(data=data, init=str(d / "init.pt"), embeddings=str(d / "emb.npz"),
                      record=str(d / "init.json"), preset="test",
                      settings={"model": model, "kmeans": {"ratio": 2, "iters": 3,
                                                           "init": "kmeans++", "batch_size": 4},
                                "seed": 0, "schedule": "baseline", "batch_size": 32,
                                "device": "cpu"})
    tok.train_vq(data=data, init=str(d / "init.pt"), model=str(d / "model.pt"),
                 curve=str(d / "curve.csv"), record=str(d / "run.json"), preset="test",
                 settings={"model": model, "loss": loss, "train": TOK_TRAIN, "seed": 0,
                           "checkpoint": "final"},
                 state_dir=str(d / "state"), checkpoint_interval_s=0.0)
    paths = {s: str(d / f"tokens-{s}.npy") for s in ("train", "val", "test")}
    tok_eval.extract_tokens(data=data, model=str(d / "model.pt"), tokens_train=paths["train"],
                            tokens_val=paths["val"], tokens_test=paths["test"],
                            meta=str(d / "meta.json"), settings={"batch_size": 64, "device": "cpu"},
                            preset="test")
    return {"model": str(d / "model.pt"), "meta": str(d / "meta.json"), "data": data, **paths}


@pytest.fixture(scope="module")
def tokenizers(data, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("tok")
    return {"vq": _tokenizer(data, root / "vq", "vq"),
            "multiscale": _tokenizer(data, root / "ms", "multiscale")}


def tokenizer_for(family: str) -> str:
    return "multiscale" if family == "var" else "vq"


def train_settings(family: str, **training) -> dict:
    return {"family": family, "model": MODELS[family],
            "optimizer": {"batch_size": 32, "lr": 2e-3, "betas": [0.9, 0.95],
                          "weight_decay": 0.01, "grad_clip": 1.0,
                          "warmup_epochs": 2 / 6},  # 2 of 6 steps per epoch (200 / 32)
            "training": {**GEN_TRAIN, **training}}


def train(family: str, tk: dict, d: Path, **training) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    gen.train(tokens_train=tk["train"], tokens_val=tk["val"], meta=tk["meta"],
              tokenizer=tk["model"], model=str(d / "model.pt"), curve=str(d / "curve.csv"),
              record=str(d / "run.json"), settings=train_settings(family, **training),
              preset="test", state_dir=str(d / "state"), checkpoint_interval_s=0.0)
    return d


def sample(family: str, tk: dict, d: Path, seed: int = 0, per_class: int = 2) -> Path:
    out = d / f"samples-{seed}"
    out.mkdir(exist_ok=True)
    gen.sample(model=str(d / "model.pt"), tokenizer=tk["model"], data=tk["data"],
               images=str(out / "images.npy"),
               labels=str(out / "labels.npy"), tokens=str(out / "tokens.npy"),
               grid=str(out / "grid.png"), record=str(out / "run.json"), preset="test",
               settings={"sampling": SAMPLING[family], "per_class": per_class, "seed": seed,
                         "batch_size": 8, "grid": {"classes": 3, "per_class": 2},
                         "device": "cpu"})
    return out


# ------------------------------------------------------------------------------ stages
@pytest.mark.parametrize("family", ["maskgit", "var", "llamagen"])
def test_every_generator_trains_samples_and_is_evaluated(family, data, fid_net, tokenizers,
                                                         tmp_path):
    tk = tokenizers[tokenizer_for(family)]
    d = train(family, tk, tmp_path)
    rec = load_json(d / "run.json")
    assert rec["epochs_run"] == 2 and rec["num_classes"] == 10
    assert rec["checkpoint"].startswith("best validation loss")
    curve = pd.read_csv(d / "curve.csv")
    assert list(curve["epoch"]) == [1, 2] and curve["val_loss"].notna().all()
    assert not (d / "state" / "last.pt").exists()  # finished: no stale state left behind

    out = sample(family, tk, d)
    images, labels = np.load(out / "images.npy"), np.load(out / "labels.npy")
    assert images.shape == (20, 16, 16, 3) and images.dtype == np.uint8
    # 2 per class on average, in the test split's class proportions (sorted by class)
    share = np.bincount(PreparedImages(tk["data"], "test").labels, minlength=10) / 50
    counts = np.bincount(labels, minlength=10)
    assert counts.sum() == 20 and np.abs(counts - 20 * share).max() < 1
    assert (np.diff(labels) >= 0).all()
    tokens = np.load(out / "tokens.npy")
    expect = (20, 85) if family == "var" else (20, 8, 8)  # 1+4+16+64 scales; 8x8 maps
    assert tokens.shape == expect and tokens.min() >= 0 and tokens.max() < 32
    assert (out / "grid.png").read_bytes()[:4] == b"\x89PNG"

    gen.evaluate(images=str(out / "images.npy"), labels=str(out / "labels.npy"),
                 ref=fid_net["test"], classifier=fid_net["classifier"],
                 metrics=str(out / "metrics.json"), preset="test",
                 settings={"fid": FID, "lpips": {"net": "vgg", "pretrained": False},
                           "lpips_images": 12, "pixel_norm": "l2", "pixel_scale": 1 / 255,
                           "batch_size": 8, "seed": 0, "device": "cpu"})
    m = load_json(out / "metrics.json")["metrics"]
    assert np.isfinite(m["gfid"]) and m["gfid"] > 0
    assert m["fid_substitute"] and "not comparable" in m["fid_feature_net"]
    assert "RANDOM" in m["lpips_backbone"] and m["lpips_images"] == 12
    assert m["pixel_distance"] == pytest.approx(
        diversity.mean_pairwise_pixel_distance(images), rel=1e-12)
    assert m["samples"] == 20 and m["classes"] == 10


@pytest.mark.parametrize("family", ["maskgit", "var"])
def test_samples_are_a_function_of_the_seed(family, tokenizers, tmp_path):
    tk = tokenizers[tokenizer_for(family)]
    d = train(family, tk, tmp_path, epochs=1)
    a, b, c = (np.load(sample(family, tk, d, seed=s) / "images.npy") for s in (0, 0, 1))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_resume_mid_epoch_gives_the_uninterrupted_weights(tokenizers, tmp_path, monkeypatch):
    """MaskGIT (random masks, class dropout, dropout) killed mid-epoch resumes bit-exactly."""
    tk = tokenizers["vq"]
    ref = train("maskgit", tk, tmp_path / "ref")
    seen = kill_at_step(monkeypatch, 8)  # 6 steps per epoch: mid epoch 2
    with pytest.raises(KeyboardInterrupt):
        train("maskgit", tk, tmp_path / "cut")
    state = load_torch(tmp_path / "cut" / "state" / "last.pt")
    assert state["pos"] == {"epoch": 1, "batch": 2, "step": 8}
    seen.clear()
    cut = train("maskgit", tk, tmp_path / "cut")
    assert seen[0] == 8 and len(seen) == 4
    x, y = load_torch(ref / "model.pt")["model"], load_torch(cut / "model.pt")["model"]
    for key in x:
        torch.testing.assert_close(x[key], y[key], rtol=0, atol=0, msg=key)
    a, b = pd.read_csv(ref / "curve.csv"), pd.read_csv(cut / "curve.csv")
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))


def test_state_from_before_an_upstream_change_is_not_resumed(tokenizers, tmp_path,
                                                              monkeypatch):
    """Killed mid-run; the token maps then change (the tokenizer reran differently): the
    generator starts afresh instead of resuming from state trained on the old tokens."""
    tk = {**tokenizers["vq"], "train": str(tmp_path / "tokens-train.npy")}
    tokens = np.load(tokenizers["vq"]["train"])
    np.save(tk["train"], tokens)
    seen = kill_at_step(monkeypatch, 8)
    with pytest.raises(KeyboardInterrupt):
        train("maskgit", tk, tmp_path / "cut")
    np.save(tk["train"], tokens[::-1].copy())
    seen.clear()
    train("maskgit", tk, tmp_path / "cut")
    assert seen[0] == 0
    assert len(list((tmp_path / "cut" / "state").glob("stale-*.pt"))) == 1


def test_nan_loss_keeps_the_state_before_it(tokenizers, tmp_path, monkeypatch):
    """A state save after every step (interval 0): the check before the save after the NaN
    step stops the run, and last.pt keeps the state saved before that step."""
    nan_at_step(monkeypatch, 3)
    d = tmp_path / "nan"
    d.mkdir()
    tk = tokenizers["vq"]
    with pytest.raises(FloatingPointError, match=r"step 3.*kept in .*last\.pt"):
        gen.train(tokens_train=tk["train"], tokens_val=tk["val"], meta=tk["meta"],
                  tokenizer=tk["model"], model=str(d / "model.pt"), curve=str(d / "curve.csv"),
                  record=str(d / "run.json"), settings=train_settings("llamagen"),
                  preset="test", state_dir=str(d / "state"), checkpoint_interval_s=0)
    assert load_torch(d / "state" / "last.pt")["pos"] == {"epoch": 0, "batch": 3, "step": 3}


@pytest.mark.parametrize("family", ["maskgit", "var", "llamagen"])
def test_training_reads_the_device_a_fixed_number_of_times(family, tokenizers, tmp_path,
                                                           monkeypatch):
    """Host reads (each a host-device sync on a GPU) of one epoch of 2 and of 8 steps (200
    token maps; one validation batch either way): the same count, so none is made per step."""
    tk = tokenizers[tokenizer_for(family)]
    reads = {}
    for steps, batch in ((2, 100), (8, 25)):
        d = tmp_path / f"b{batch}"
        d.mkdir()
        s = train_settings(family, epochs=1, val_images=20, checkpoint="final")
        s["optimizer"] = {**s["optimizer"], "batch_size": batch}
        with count_host_reads(monkeypatch) as counts:
            gen.train(tokens_train=tk["train"], tokens_val=tk["val"], meta=tk["meta"],
                      tokenizer=tk["model"], model=str(d / "model.pt"),
                      curve=str(d / "curve.csv"), record=str(d / "run.json"), settings=s,
                      preset="test", state_dir=str(d / "state"), checkpoint_interval_s=3600)
        assert pd.read_csv(d / "curve.csv")["step"].tolist() == [steps]
        reads[steps] = dict(counts)
    assert reads[2] == reads[8]


def test_labels_outside_the_classes_are_refused_naming_the_file(tokenizers, tmp_path):
    tk = tokenizers["vq"]
    labels = np.load(tk["train"], mmap_mode="r")
    bad = tmp_path / "labels.npy"
    np.save(bad, np.full(len(labels), 10, dtype=np.int64))
    with pytest.raises(ValueError, match=r"labels\.npy: labels lie in \[10, 10\], outside "
                                         r"the dataset's 10 classes"):
        gen.TokenSet(tk["train"], str(bad), num_classes=10)
    assert len(gen.TokenSet(tk["train"], str(bad), num_classes=11)) == len(labels)


def test_capped_token_export_pairs_with_the_first_labels(tokenizers, tmp_path):
    """tokenizers.tokens.max_images exports a split's first rows: they pair with the first
    labels; any other count is refused, naming the file and the cap."""
    tk = tokenizers["vq"]
    maps = np.load(tk["train"])
    labels = np.arange(len(maps)) % 10
    lab = tmp_path / "labels.npy"
    np.save(lab, labels)
    capped = tmp_path / "train.npy"
    np.save(capped, maps[:5])
    got = gen.TokenSet(str(capped), str(lab), exported=5, num_classes=10)
    assert torch.equal(got.tokens, torch.from_numpy(maps[:5].astype(np.int64)))
    assert got.labels.tolist() == labels[:5].tolist()
    for exported in (None, 6):
        with pytest.raises(ValueError, match=rf"train\.npy: 5 token maps.* but .*labels\.npy "
                                             rf"has {len(labels)} labels"):
            gen.TokenSet(str(capped), str(lab), exported=exported)


QUIET = {  # every dropout off: the only randomness left is the batch order (and MaskGIT's masks)
    "maskgit": {"dropout": 0.0, "class_dropout": 0.0},
    "var": {"class_dropout": 0.0, "drop_path": 0.0},
    "llamagen": {"token_dropout_p": 0.0, "resid_dropout_p": 0.0, "ffn_dropout_p": 0.0,
                 "class_dropout_prob": 0.0},
}


@pytest.mark.parametrize("family", ["maskgit", "var", "llamagen"])
def test_ddp_two_processes_match_one(family, tokenizers, tmp_path, monkeypatch):
    """2 gloo processes, each on half of every batch, train what one process trains. MaskGIT
    draws its masks per rank, so it only has to run (every parameter gets a gradient under
    DDP); VAR and LlamaGen without dropout must compute the same logits."""
    from vqshrink.launch import Resources, launch

    tk = tokenizers[tokenizer_for(family)]
    s = train_settings(family, epochs=1, checkpoint="final")
    s["model"] = {**s["model"], **QUIET[family]}
    runs = {}
    for procs in (1, 2):
        d = tmp_path / f"p{procs}"
        d.mkdir()
        monkeypatch.setenv("VQSHRINK_LOCAL_PROCS", str(procs))
        launch(gen.train, dict(tokens_train=tk["train"], tokens_val=tk["val"], meta=tk["meta"],
                               tokenizer=tk["model"], model=str(d / "model.pt"),
                               curve=str(d / "curve.csv"), record=str(d / "run.json"),
                               settings=s, preset="test", state_dir=str(d / "state"),
                               checkpoint_interval_s=0.0, threads=1),
               name=f"ddp-{procs}", resources=Resources(), launcher="local")
        net, _, _ = generator_registry.load_generator(str(d / "model.pt"), tk["model"])
        tokens = torch.from_numpy(np.load(tk["test"])[:8].astype(np.int64))
        with torch.no_grad():
            runs[procs] = net.eval().logits(tokens.reshape(8, -1), torch.arange(8) % 10)
    assert torch.isfinite(runs[2]).all()
    if family != "maskgit":
        torch.testing.assert_close(runs[1], runs[2], rtol=1e-3, atol=1e-3)


def test_batch_larger_than_the_split_names_the_key(tokenizers, tmp_path):
    s = train_settings("llamagen")
    s["optimizer"]["batch_size"] = 1000
    tk = tokenizers["vq"]
    with pytest.raises(ValueError, match="generators.models.llamagen.optimizer.batch_size"):
        gen.train(tokens_train=tk["train"], tokens_val=tk["val"], meta=tk["meta"],
                  tokenizer=tk["model"], model=str(tmp_path / "m.pt"),
                  curve=str(tmp_path / "c.csv"), record=str(tmp_path / "r.json"), settings=s,
                  preset="test", state_dir=str(tmp_path / "state"))
    assert not (tmp_path / "m.pt").exists()


def test_generator_refuses_tokens_of_the_wrong_layout(tokenizers):
    ms, _ = registry.load_model(tokenizers["multiscale"]["model"])
    with pytest.raises(ValueError, match=r"maskgit needs one h x w token map per image; the "
                                         r"tokenizer's layout is \(N, L\): VAR scales"):
        generator_registry.build_generator("maskgit", MODELS["maskgit"], tokenizer=ms,
                                           token_shape=(85,), num_classes=10, vocab_size=32)
    with pytest.raises(ValueError, match=r"var needs VAR's multi-scale tokens per image; .*"
                                         r"\(85 tokens\) and the token files hold \(N, 8, 8\)"):
        generator_registry.build_generator("var", MODELS["var"], tokenizer=ms, token_shape=(8, 8),
                                           num_classes=10, vocab_size=32)
    vq, _ = registry.load_model(tokenizers["vq"]["model"])
    with pytest.raises(ValueError, match=r"var needs VAR's multi-scale tokens per image; the "
                                         r"tokenizer's layout is \(N, h, w\) \(64 tokens\)"):
        generator_registry.build_generator("var", MODELS["var"], tokenizer=vq, token_shape=(8, 8),
                                           num_classes=10, vocab_size=32)


def test_class_grid_rows_per_class_padded():
    images = np.arange(5 * 2 * 2 * 3, dtype=np.uint8).reshape(5, 2, 2, 3)
    labels = np.array([0, 0, 1, 0, 1])
    grid = gen.class_grid(images, labels, classes=2, per_class=2)
    assert grid.shape == (4, 4, 3)
    np.testing.assert_array_equal(grid[:2, :2], images[0])
    np.testing.assert_array_equal(grid[:2, 2:], images[1])
    np.testing.assert_array_equal(grid[2:, :2], images[2])
    np.testing.assert_array_equal(grid[2:, 2:], images[4])
    one = gen.class_grid(images, np.array([0, 1, 1, 1, 1]), classes=2, per_class=3)
    assert one.shape == (4, 6, 3) and not one[:2, 2:].any()  # class 0's short row: black


def test_sample_labels_follow_the_test_splits_class_proportions_and_step_seeds():
    balanced = np.repeat([0, 1, 2], 7)  # a balanced test split: exactly per_class of each
    np.testing.assert_array_equal(gen.sample_labels(balanced, 3, 2, seed=0), [0, 0, 1, 1, 2, 2])
    # ODIR-like imbalance: 60% / 30% / 10% of the test split -> 18 / 9 / 3 of 30 samples
    odir = np.repeat([0, 1, 2], [60, 30, 10])
    counts = np.bincount(gen.sample_labels(odir, 3, 10, seed=0), minlength=3)
    np.testing.assert_array_equal(counts, [18, 9, 3])
    # brute force: largest remainder = the integer vector summing to the total that is
    # closest to the exact shares; ties (classes 0 and 1: 1.5 each) go by the seed
    tied = np.array([0, 1])  # 3 samples over classes 0 / 1 / 2 with shares 1/2, 1/2, 0
    draws = {tuple(np.bincount(gen.sample_labels(tied, 3, 1, seed=s), minlength=3))
             for s in range(20)}
    assert draws == {(2, 1, 0), (1, 2, 0)}
    np.testing.assert_array_equal(gen.sample_labels(tied, 3, 1, seed=3),
                                  gen.sample_labels(tied, 3, 1, seed=3))
    with pytest.raises(ValueError, match="the generator has 2 classes"):
        gen.sample_labels(odir, 2, 1, seed=0)
    seeds = {gen.step_seed(0, s, r) for s in range(100) for r in range(2)}
    assert len(seeds) == 200  # distinct per (step, rank)
    assert gen.step_seed(0, 5, 0) == gen.step_seed(0, 5, 0)


# ------------------------------------------------------------------------------ tables
def _fake_run(root: Path, name: str, values: dict) -> tuple[str, str]:
    run = root / name
    (run / "eval").mkdir(parents=True)
    (run / "model").mkdir()
    metrics = {"gfid": 10.0, "pixel_distance": 70.0, "lpips_diversity": 0.6,
               "fid_feature_net": "inception", "fid_reference_images": 20000,
               "lpips_backbone": "lpips v0.1 vgg (ImageNet backbone)", "pixel_norm": "l2",
               "pixel_scale": 1 / 255, "samples": 5000, "lpips_images": 5000, **values}
    (run / "eval" / "metrics.json").write_text(json.dumps({"metrics": metrics}))
    (run / "model" / "run.json").write_text(json.dumps({"checkpoint": "final", "epochs_run": 3}))
    return str(run / "eval" / "metrics.json"), str(run / "model" / "run.json")


@pytest.mark.parametrize("table, model, paper_gfid", [("4", "VAR", 10.44), ("12", "LlamaGen", None)])
def test_generation_table_puts_paper_values_beside_the_run(table, model, paper_gfid, tmp_path):
    rows = [{"generator": model.lower(), "variant": "var", "schedule": s, "gan": False,
             "paper_model": model, "paper_variant": "VQ"} for s in ("deferred", "baseline")]
    paths = [_fake_run(tmp_path, s, {"gfid": g}) for s, g in (("d", 9.0), ("b", 12.0))]
    out = tmp_path / "table.csv"
    grep.table(metrics=[p[0] for p in paths], records=[p[1] for p in paths],
               paper=str(ROOT / "workflow/resources/paper_tables.csv"), table=str(out),
               preset="paper", settings={"table": table, "paper_dataset": "imagenet100",
                                         "dataset": "imagenet100", "rows": rows})
    frame = pd.read_csv(out)
    assert list(frame["gfid"]) == [9.0, 12.0]
    assert list(frame["deferred"]) == ["yes", "no"] and set(frame["preset"]) == {"paper"}
    if paper_gfid is None:  # Table 12: not in the paper's text, left empty
        assert frame["paper_gfid"].isna().all() and frame["paper_lpips_diversity"].isna().all()
    else:
        assert list(frame["paper_gfid"]) == [paper_gfid, 12.88]
        assert list(frame["paper_pixel_distance"]) == [75.75, 70.69]


# ------------------------------------------------------------------------------ workflow
@pytest.mark.parametrize(
    "bad, message",
    [
        ({"generators": {"models": {"var": {"model": {"dpeth": 3}}}}},
         "unknown config key generators.models.var.model.dpeth"),
        ({"generators": {"models": {"maskgit": {"sampling": {"top_k": 3}}}}},
         "unknown config key generators.models.maskgit.sampling.top_k"),
        ({"generators": {"tables": {"table4": {"dataset": "imagenet100",
                                               "runs": [["var", "maskgit"]]}}}},
         "config key generators.tables.table4.runs: generator var reads multiscale"),
        ({"generators": {"training": {"checkpoint": "best"}}}, "generators.training.checkpoint"),
    ],
)
def test_bad_generator_config_stops_before_any_job(bad, message, tmp_path):
    repo = copy_repo(tmp_path)
    (repo / "bad.yaml").write_text(yaml.safe_dump(bad))
    proc = snakemake("-n", "--configfile", "config.yaml", "bad.yaml", cwd=repo, check=False)
    assert proc.returncode != 0
    assert message in proc.stdout + proc.stderr


def test_paper_plan_through_the_slurm_profile_requests_paper_resources(tmp_path):
    """`snakemake -n results/tables/table4.csv --profile slurm`: the generator jobs ask for the
    config's 2 GPUs and a 24 h runtime (requeued beyond it), the tokenizers likewise."""
    repo = copy_repo(tmp_path)
    fake = fake_sources(tmp_path / "fake")
    proc = snakemake("-n", "results/tables/table4.csv", "--profile", "slurm", "--configfile",
                     str(fake), cwd=repo)
    out = proc.stdout
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())["generators"]["resources"]
    blocks = re.split(r"\n(?=rule |localrule )", out)
    train = [b for b in blocks if b.startswith("rule generator_train:")]
    assert len(train) == 4  # MaskGIT and VAR, each w/ and w/o deferral
    for b in train:
        assert f"gpu={cfg['train']['gpu']}" in b
        assert f"runtime={cfg['train']['runtime']}" in b
        assert f"mem_mb={cfg['train']['mem_mb']}" in b
    assert cfg["train"]["runtime"] <= 48 * 60
    assert len([b for b in blocks if b.startswith("rule generator_eval:")]) == 4
    assert "generator_table" in out
