"""Image-tokenizer stages at tiny size on CPU: every stage on a small prepared digits
set, the k-means init's encoder, step-exact resume, DDP, the DAG's shared autoencoder, the
missing-root / missing-weights errors, and the tables' paper columns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vqshrink.data.prepared import PreparedImages
from vqshrink.io import load_json, load_torch
from vqshrink.models import registry
from vqshrink.stages import tokenizer as tok
from vqshrink.stages import tokenizer_eval as tok_eval
from vqshrink.stages import tokenizer_report as rep

from image_fixtures import (FID, count_host_reads, data, fid_net, kill_at_step,  # noqa: F401
                            nan_at_step,
                            one_thread)
from repo_helpers import ROOT, copy_repo, fake_sources, planned_jobs, snakemake


ARCH = {"family": "vqgan", "resolution": 16, "ch": 32, "ch_mult": [1, 1], "num_res_blocks": 1,
        "attn_resolutions": [], "dropout": 0.0, "z_channels": 32, "embed_dim": 8}
SWEEP_ARCH = {"family": "cifar_vqvae", "resolution": 16, "hidden": 16, "res_hidden": 8,
              "res_blocks": 1, "embed_dim": 4}
LOSS = {"pixel_weight": 1.0, "perceptual_weight": 0.0, "codebook_weight": 1.0,
        "lpips_net": "vgg", "lpips_pretrained": False, "gan": False, "disc_start_epochs": 0,
        "disc_weight": 0.8, "adaptive": True, "disc_betas": [0.5, 0.9], "disc_layers": 2}
TRAIN = {"batch_size": 32, "lr": 1e-3, "min_lr": 1e-5, "betas": [0.9, 0.95],
         "weight_decay": 0.0, "amsgrad": False, "grad_clip": 1.0, "scheduler": "plateau",
         "plateau_factor": 0.5, "plateau_patience": 1, "warmup_steps": 0,
         "early_stopping_patience": 0, "eval_every_epochs": 1, "val_images": 40, "epochs": 1,
         "amp": "bf16", "compile": False, "device": "cpu"}


# ------------------------------------------------------------------------------ fixtures
def model_cfg(quantizer: str = "vq", k: int = 32) -> dict:
    if quantizer == "vq_ema":
        return {**SWEEP_ARCH, "codebook_size": k, "beta": 0.25, "ema_decay": 0.99}
    extra = {"patch_nums": [1, 2, 4, 8]} if quantizer.startswith("multiscale") else {}
    return {**ARCH, "quantizer": quantizer, "codebook_size": k, "beta": 0.25, **extra}


def init_settings(model: dict, schedule: str, ratio: int = 2) -> dict:
    simvq = {"simvq_init": "identity"} if "simvq" in model.get("quantizer", "") else {}
    return {"model": model, "kmeans": {"ratio": ratio, "iters": 5, "init": "kmeans++",
                                       "batch_size": 4},
            "seed": 0, "schedule": schedule, "batch_size": 32, "device": "cpu", **simvq}


def vq_settings(model: dict, *, gan: bool = False, checkpoint: str = "best_val_fid",
                **train) -> dict:
    s = {"model": model, "loss": {**LOSS, "gan": gan}, "train": {**TRAIN, **train}, "seed": 0,
         "checkpoint": checkpoint}
    if checkpoint == "best_val_fid":
        s["fid"] = FID
    return s


def pretrain(data: str, d: Path, arch: dict = ARCH, epochs: int = 1) -> str:
    s = {"model": arch, "loss": LOSS, "train": {**TRAIN, "epochs": epochs, "scheduler": "cosine"},
         "seed": 0, "checkpoint": "final"}
    tok.pretrain_ae(data=data, model=str(d / "ae.pt"), curve=str(d / "ae.csv"),
                    record=str(d / "ae.json"), settings=s, preset="test",
                    state_dir=str(d / "state-ae"), checkpoint_interval_s=0.0)
    return str(d / "ae.pt")


def init(data: str, d: Path, model: dict, schedule: str, ae: str | None = None,
         ratio: int = 2) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    tok.init_codebook(data=data, init=str(d / "init.pt"), embeddings=str(d / "emb.npz"),
                      record=str(d / "init.json"), settings=init_settings(model, schedule, ratio),
                      preset="test", ae=ae)
    return d


def train(data: str, d: Path, settings: dict, fid_net: dict | None) -> None:
    extra = {"val_ref": fid_net["val"], "classifier": fid_net["classifier"]} if fid_net else {}
    tok.train_vq(data=data, init=str(d / "init.pt"), model=str(d / "model.pt"),
                 curve=str(d / "curve.csv"), record=str(d / "run.json"), settings=settings,
                 preset="test", state_dir=str(d / "state"), checkpoint_interval_s=0.0, **extra)


def same_weights(a: str, b: str) -> None:
    x, y = load_torch(a)["model"], load_torch(b)["model"]
    assert x.keys() == y.keys()
    for key in x:
        torch.testing.assert_close(x[key], y[key], rtol=0, atol=0, msg=key)


# ------------------------------------------------------------------------------ k-means init
def test_kmeans_init_uses_the_encoder_it_is_given(data, tmp_path):
    model = model_cfg("vq", k=32)
    # a "pretrained" autoencoder: the same architecture with other weights
    torch.manual_seed(123)
    ae_net = registry.build_model(ARCH, continuous=True)
    assert ae_net.quantizer is None and not any(k.startswith("quantizer.")
                                                for k in ae_net.state_dict())
    registry.save_model(ae_net, ARCH, str(tmp_path / "ae.pt"), continuous=True)
    base = init(data, tmp_path / "base", model, "baseline", ratio=3)
    defer = init(data, tmp_path / "def", model, "deferred", ae=str(tmp_path / "ae.pt"), ratio=3)
    rb, rd = load_json(base / "init.json"), load_json(defer / "init.json")
    # the same number of embeddings (ratio x K), from the same images; only the encoder differs
    assert rb["kmeans_points"] == rd["kmeans_points"] == 3 * 32
    assert rb["kmeans_images"] == rd["kmeans_images"] == 4  # one k-means batch of 4 images
    assert rb["kmeans_batches"] == 1 and (rb["encoder"], rd["encoder"]) == ("untrained", "pretrained")
    zb, zd = np.load(base / "emb.npz")["z"], np.load(defer / "emb.npz")["z"]
    assert zb.shape == zd.shape == (96, 8) and not np.allclose(zb, zd)
    wb, wd = load_torch(base / "init.pt")["model"], load_torch(defer / "init.pt")["model"]
    torch.testing.assert_close(wd["encoder.conv_in.weight"], ae_net.state_dict()["encoder.conv_in.weight"])
    assert not torch.equal(wb["encoder.conv_in.weight"], wd["encoder.conv_in.weight"])
    # the codebooks are the k-means centroids of those embeddings
    for d, w in ((base, wb), (defer, wd)):
        torch.testing.assert_close(w["quantizer.codebook"],
                                   torch.from_numpy(np.load(d / "emb.npz")["codebook"]))
    # the encoder really produced those embeddings
    net = registry.build_model(model)
    net.load_state_dict(wd)
    x, _ = PreparedImages(data, "train").get_batch(range(1))
    assert net.embeddings(x).shape == (64, 8)


def test_too_few_embeddings_is_a_clear_error(data, tmp_path):
    with pytest.raises(ValueError, match="fewer than the .* k-means init asks for"):
        init(data, tmp_path / "x", model_cfg("vq", k=256), "baseline", ratio=200)


def test_simvq_multiscale_init_sets_frozen_codebook_and_identity(data, tmp_path):
    d = init(data, tmp_path / "s", model_cfg("multiscale_simvq", k=32), "baseline")
    w = load_torch(d / "init.pt")["model"]
    torch.testing.assert_close(w["quantizer.frozen_codebook"],
                               torch.from_numpy(np.load(d / "emb.npz")["codebook"]))
    torch.testing.assert_close(w["quantizer.proj.weight"], torch.eye(8))
    net = registry.build_model(model_cfg("multiscale_simvq", k=32))
    net.load_state_dict(w)
    torch.testing.assert_close(net.quantizer.codebook, w["quantizer.frozen_codebook"])


def test_multiscale_simvq_reads_the_projected_codebook_everywhere():
    from vqshrink.quantizers.multiscale import MultiScaleSimVQ

    torch.manual_seed(0)
    q = MultiScaleSimVQ(16, 4, patch_nums=(1, 2, 4))
    with torch.no_grad():
        q.proj.weight.mul_(3.0)  # W != I: W(C) differs from C
    f = torch.randn(2, 4, 4, 4)
    out = q(f)
    out.loss.backward()
    assert q.proj.weight.grad.abs().sum() > 0 and "frozen_codebook" in dict(q.named_buffers())
    assert not any(n.startswith("frozen") for n, _ in q.named_parameters())
    idx = q.encode_indices(f)
    torch.testing.assert_close(q.decode_indices(idx), out.z_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(q.lookup(idx[0]), q.proj(q.frozen_codebook)[idx[0]])


# ------------------------------------------------------------------------------ every stage
@pytest.mark.parametrize("quantizer, gan", [("vq", False), ("multiscale_simvq", True),
                                            ("vq_ema", False)])
def test_every_stage_on_tiny_digits(data, fid_net, tmp_path, quantizer, gan):
    sweep = quantizer == "vq_ema"
    arch = SWEEP_ARCH if sweep else ARCH
    model = model_cfg(quantizer)
    ae = pretrain(data, tmp_path, arch)
    assert "quantizer" not in " ".join(load_torch(ae)["model"])  # continuous: no quantizer
    for schedule in ("baseline", "deferred"):
        d = init(data, tmp_path / schedule, model, schedule,
                 ae=ae if schedule == "deferred" else None)
        policy = "final" if sweep else "best_val_fid"
        train(data, d, vq_settings(model, gan=gan, checkpoint=policy, epochs=2),
              None if sweep else fid_net)
        curve = pd.read_csv(d / "curve.csv")
        assert list(curve["epoch"]) == [1, 2] and curve["val_rec"].notna().all()
        if gan:
            assert (curve["d_loss"] != 0).any()
        record = load_json(d / "run.json")
        assert record["checkpoint"].startswith("best validation FID" if not sweep else "final")
        assert not (d / "state" / "last.pt").exists()
        ev = {"split": "test", "fid": None if sweep else FID,
              "lpips": None if sweep else {"net": "vgg", "pretrained": False},
              "batch_size": 64, "device": "cpu"}
        tok_eval.evaluate(data=data, model=str(d / "model.pt"), metrics=str(d / "m.json"),
                          reconstructions=str(d / "rec.png"), settings=ev, preset="test",
                          ref=None if sweep else fid_net["test"],
                          classifier=None if sweep else fid_net["classifier"])
        m = load_json(d / "m.json")["metrics"]
        assert 1 <= m["perplexity"] <= 32 and 0 < m["euclidean"] and m["mse"] > 0
        assert m["usage"] + m["dead_fraction"] == pytest.approx(1.0) and m["images"] == 50
        assert (d / "rec.png").read_bytes()[:4] == b"\x89PNG"
        if sweep:
            assert m["rfid"] is None and m["lpips"] is None
            continue
        assert m["rfid"] >= 0 and "substitute" in m["fid_feature_net"]
        assert "RANDOM" in m["lpips_backbone"] and m["lpips"] > 0
        if schedule == "baseline":  # metrics are reproducible (the random trunk is seeded)
            tok_eval.evaluate(data=data, model=str(d / "model.pt"), metrics=str(d / "m2.json"),
                              reconstructions=str(d / "rec2.png"), settings=ev, preset="test",
                              ref=fid_net["test"], classifier=fid_net["classifier"])
            assert load_json(d / "m2.json")["metrics"] == m
        tok_eval.extract_tokens(data=data, model=str(d / "model.pt"),
                                tokens_train=str(d / "t/train.npy"),
                                tokens_val=str(d / "t/val.npy"),
                                tokens_test=str(d / "t/test.npy"), meta=str(d / "t/meta.json"),
                                settings={"batch_size": 64, "device": "cpu"}, preset="test")
        meta = load_json(d / "t/meta.json")
        test_tokens = np.load(d / "t/test.npy")
        assert test_tokens.dtype == np.uint16 and meta["dtype"] == "uint16"
        if not quantizer.startswith("multiscale"):
            assert meta["shapes"]["test"] == [50, 8, 8]
            continue
        assert meta["shapes"] == {"train": [200, 85], "val": [50, 85], "test": [50, 85]}
        # the saved VAR tokens (scales concatenated) decode to the model's reconstructions
        net, _ = registry.load_model(str(d / "model.pt"))
        net.eval()
        x, _ = PreparedImages(data, "test").get_batch(range(4))
        scales = np.cumsum([0] + [p * p for p in model["patch_nums"]])
        maps = [torch.from_numpy(test_tokens[:4, a:b].astype(np.int64)).view(4, p, p)
                for a, b, p in zip(scales[:-1], scales[1:], model["patch_nums"])]
        with torch.no_grad():
            torch.testing.assert_close(net.decode_indices(maps), net(x).x_hat,
                                       rtol=1e-4, atol=1e-4)


def test_gan_starts_after_its_epochs_and_early_stopping_counts_from_there(data, tmp_path):
    """disc_start_epochs counts epochs of the VQ phase (6 steps each here); with lr 0 the
    validation loss never improves, so patience 1 stops a run at its second evaluation,
    but a GAN run counts evaluations only once the discriminator has trained."""
    model = model_cfg("vq")
    runs = {}
    for gan in (False, True):
        d = init(data, tmp_path / str(gan), model, "baseline")
        s = vq_settings(model, gan=gan, checkpoint="final", epochs=4, lr=0.0,
                        scheduler="none", early_stopping_patience=1)
        s["loss"]["disc_start_epochs"] = 2
        train(data, d, s, None)
        runs[gan] = pd.read_csv(d / "curve.csv")
    assert list(runs[False]["epoch"]) == [1, 2]  # stopped early
    gan = runs[True]
    assert list(gan["epoch"]) == [1, 2, 3, 4]  # evaluations 3 and 4 count: no early stop
    assert (gan["d_loss"][:2] == 0).all() and (gan["d_loss"][2:] != 0).all()
    assert list(gan["step"]) == [6, 12, 18, 24]


def test_vq_tokens_are_hw_maps(data, tmp_path):
    d = init(data, tmp_path / "b", model_cfg("vq"), "baseline")
    train(data, d, vq_settings(model_cfg("vq"), checkpoint="final"), None)
    tok_eval.extract_tokens(data=data, model=str(d / "model.pt"), tokens_train=str(d / "a.npy"),
                            tokens_val=str(d / "b.npy"), tokens_test=str(d / "c.npy"),
                            meta=str(d / "meta.json"), settings={"batch_size": 64, "device": "cpu"},
                            preset="test")
    assert np.load(d / "c.npy").shape == (50, 8, 8)
    assert load_json(d / "meta.json")["layout"] == "(N, h, w)"
    # a budget cap exports each split's first rows, the same token maps as without it
    capped = d / "capped"
    tok_eval.extract_tokens(data=data, model=str(d / "model.pt"),
                            tokens_train=str(capped / "a.npy"), tokens_val=str(capped / "b.npy"),
                            tokens_test=str(capped / "c.npy"), meta=str(capped / "meta.json"),
                            settings={"batch_size": 3, "device": "cpu", "max_images": 5},
                            preset="test")
    assert load_json(capped / "meta.json")["shapes"] == {s: [5, 8, 8] for s in ("train", "val", "test")}
    for name in ("a.npy", "b.npy", "c.npy"):
        np.testing.assert_array_equal(np.load(capped / name), np.load(d / name)[:5])


# ------------------------------------------------------------------------------ resume, DDP
def test_resume_mid_epoch_gives_the_uninterrupted_weights(data, fid_net, tmp_path, monkeypatch):
    """Killed mid-epoch (GAN on, plateau scheduler, best-FID tracking), the rerun resumes from
    last.pt, skips the batches already done and ends bit-identical to an uninterrupted run."""
    model = model_cfg("multiscale")
    s = vq_settings(model, gan=True, epochs=2, plateau_patience=0)
    ref = init(data, tmp_path / "ref", model, "baseline")
    train(data, ref, s, fid_net)
    cut = init(data, tmp_path / "cut", model, "baseline")
    seen = kill_at_step(monkeypatch, 9)  # 6 steps per epoch: mid epoch 2
    with pytest.raises(KeyboardInterrupt):
        train(data, cut, s, fid_net)
    state = load_torch(cut / "state" / "last.pt")
    assert state["pos"] == {"epoch": 1, "batch": 3, "step": 9}
    assert len(state["book"]["curve"]) == 1
    seen.clear()
    train(data, cut, s, fid_net)
    assert seen[0] == 9 and len(seen) == 3  # only the rest of epoch 2 ran
    same_weights(str(ref / "model.pt"), str(cut / "model.pt"))
    a, b = pd.read_csv(ref / "curve.csv"), pd.read_csv(cut / "curve.csv")
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))


def test_state_from_before_an_upstream_change_is_not_resumed(data, tmp_path, monkeypatch):
    """Killed mid-run; the codebook init then reruns with other k-means settings (the VQ
    stage's own settings unchanged): the VQ stage starts afresh, the old state set aside."""
    model = model_cfg("vq")
    s = vq_settings(model, checkpoint="final", epochs=2)
    cut = init(data, tmp_path / "cut", model, "baseline")
    seen = kill_at_step(monkeypatch, 8)
    with pytest.raises(KeyboardInterrupt):
        train(data, cut, s, None)
    other = init_settings(model, "baseline")
    other["kmeans"] = {**other["kmeans"], "iters": 1}
    tok.init_codebook(data=data, init=str(cut / "init.pt"), embeddings=str(cut / "emb.npz"),
                      record=str(cut / "init.json"), settings=other, preset="test")
    seen.clear()
    train(data, cut, s, None)
    assert seen[0] == 0  # from the first step, not from the old state
    assert len(list((cut / "state").glob("stale-*.pt"))) == 1


def test_nan_loss_keeps_the_state_before_it(data, tmp_path, monkeypatch):
    """A state save after every step (interval 0): the check before the save after the NaN
    step stops the run, and last.pt keeps the state saved before that step."""
    model = model_cfg("vq")
    d = init(data, tmp_path / "nan", model, "baseline")
    nan_at_step(monkeypatch, 2)
    with pytest.raises(FloatingPointError, match=r"step 2.*kept in .*last\.pt"):
        tok.train_vq(data=data, init=str(d / "init.pt"), model=str(d / "model.pt"),
                     curve=str(d / "curve.csv"), record=str(d / "run.json"),
                     settings=vq_settings(model, checkpoint="final"), preset="test",
                     state_dir=str(d / "state"), checkpoint_interval_s=0)
    assert load_torch(d / "state" / "last.pt")["pos"] == {"epoch": 0, "batch": 2, "step": 2}


def test_training_reads_the_device_a_fixed_number_of_times(data, tmp_path, monkeypatch):
    """Host reads (each a host-device sync on a GPU) of one GAN epoch of 2 and of 8 steps
    (200 train images; one validation batch either way): the same count, so none is made per
    step (the discriminator's turn is decided on the host from the step)."""
    model = model_cfg("vq")
    reads = {}
    for steps, batch in ((2, 100), (8, 25)):
        d = init(data, tmp_path / f"b{batch}", model, "baseline")
        s = vq_settings(model, gan=True, checkpoint="final", batch_size=batch, val_images=20)
        with count_host_reads(monkeypatch) as counts:
            tok.train_vq(data=data, init=str(d / "init.pt"), model=str(d / "model.pt"),
                         curve=str(d / "curve.csv"), record=str(d / "run.json"), settings=s,
                         preset="test", state_dir=str(d / "state"),
                         checkpoint_interval_s=3600)
        curve = pd.read_csv(d / "curve.csv")
        assert curve["step"].tolist() == [steps] and curve["d_loss"].abs().gt(0).all()
        reads[steps] = dict(counts)
    assert reads[2] == reads[8]


def test_batch_larger_than_the_split_names_the_key(data, tmp_path):
    model = model_cfg("vq")
    d = init(data, tmp_path / "big", model, "baseline")
    with pytest.raises(ValueError, match=r"tokenizers\.training\.batch_size"):
        train(data, d, vq_settings(model, checkpoint="final", batch_size=1000), None)
    assert not (d / "model.pt").exists()


def test_ddp_two_processes_match_one(data, tmp_path, monkeypatch):
    """2 gloo processes splitting each batch train (nearly) the same model as one process."""
    from vqshrink.launch import Resources, launch

    model = model_cfg("vq")
    s = vq_settings(model, checkpoint="final", epochs=1, scheduler="cosine")
    one = init(data, tmp_path / "one", model, "baseline")
    train(data, one, s, None)
    two = init(data, tmp_path / "two", model, "baseline")
    monkeypatch.setenv("VQSHRINK_LOCAL_PROCS", "2")
    launch(tok.train_vq, dict(data=data, init=str(two / "init.pt"), model=str(two / "model.pt"),
                              curve=str(two / "curve.csv"), record=str(two / "run.json"),
                              settings=s, preset="test", state_dir=str(two / "state"),
                              checkpoint_interval_s=0.0, threads=1),
           name="ddp-test", resources=Resources(), launcher="local")
    # Compare what the models compute: a conv bias right before a GroupNorm has no true
    # gradient, and Adam turns its rounding noise into lr-sized steps that differ per run.
    x, _ = PreparedImages(data, "test").get_batch(range(16))
    outs = []
    for d in (one, two):
        net, _ = registry.load_model(str(d / "model.pt"))
        with torch.no_grad():
            outs.append(net.eval()(x))
    torch.testing.assert_close(outs[0].x_hat, outs[1].x_hat, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(outs[0].z, outs[1].z, rtol=1e-3, atol=1e-3)
    assert (outs[0].indices == outs[1].indices).float().mean() > 0.99


# ------------------------------------------------------------------------------ tables
def test_table_rows_put_run_values_beside_the_papers(tmp_path):
    rows, metrics, records, tokens = [], [], [], []
    for i, (variant, schedule, model) in enumerate([("maskgit", "deferred", "MaskGIT"),
                                                    ("maskgit", "baseline", "MaskGIT"),
                                                    ("var", "deferred", "VAR"),
                                                    ("var", "baseline", "VAR")]):
        run = tmp_path / variant / schedule
        m = {"rfid": 10.0 + i, "mse": 0.03 + i / 100, "lpips": 0.2, "euclidean": 5.0,
             "perplexity": 900.0, "usage": 0.5, "dead_fraction": 0.5, "codebook_size": 256,
             "tokens_per_image": 64, "split": "test", "images": 359,
             "fid_feature_net": "substitute: x", "lpips_backbone": "RANDOM",
             "mse_pixel_range": "[-1, 1]"}
        (run / "eval").mkdir(parents=True)
        (run / "eval/metrics.json").write_text(json.dumps({"metrics": m}))
        (run / "run.json").write_text(json.dumps({"checkpoint": "final", "epochs_run": 2}))
        rows.append({"variant": variant, "schedule": schedule, "gan": False,
                     "paper_model": model, "paper_variant": "VQ"})
        metrics.append(str(run / "eval/metrics.json"))
        records.append(str(run / "run.json"))
        tokens.append(str(run / "tokens/meta.json"))
    settings = {"table": "3", "paper_dataset": "imagenet100", "dataset": "digits", "rows": rows}
    out = tmp_path / "table3.csv"
    rep.table(metrics=metrics, records=records, tokens=tokens,
              paper=str(ROOT / "workflow/resources/paper_tables.csv"), table=str(out),
              settings=settings, preset="demo")
    t = pd.read_csv(out)
    assert list(t["paper_rfid"]) == [8.58, 12.22, 5.04, 5.39]  # Table 3 as printed
    assert list(t["paper_mse_x100"]) == [3.28, 3.91, 2.22, 2.60]
    assert list(t["paper_lpips_scaled"]) == [2.34, 2.70, 1.19, 1.85]
    assert set(t["lpips_scale"]) == {10.0}  # Table 3's printed LPIPS fits x 10
    assert list(t["paper_perplexity"]) == [5311.88, 924.57, 7044.51, 2801.88]
    assert list(t["rfid"]) == [10.0, 11.0, 12.0, 13.0]
    np.testing.assert_allclose(t["mse_x100"], t["mse"] * 100)
    np.testing.assert_allclose(t["lpips_scaled"], t["lpips"] * 10)
    assert set(t["preset"]) == {"demo"} and set(t["dataset"]) == {"digits"}
    assert set(t["paper_dataset"]) == {"imagenet100"}
    assert list(t["deferred"]) == ["yes", "no", "yes", "no"]
    assert {"fid_feature_net", "lpips_backbone", "checkpoint"} <= set(t.columns)


def test_fig4_table_and_figure(tmp_path):
    metrics, records = [], []
    for k in (16, 64):
        for schedule in ("baseline", "deferred"):
            run = tmp_path / f"vqvae-k{k}" / schedule
            (run / "eval").mkdir(parents=True)
            (run / "eval/metrics.json").write_text(json.dumps({"metrics": {
                "codebook_size": k, "mse": 0.1, "perplexity": k / 2, "euclidean": 1.0,
                "usage": 1.0, "dead_fraction": 0.0, "split": "test", "images": 10}}))
            (run / "run.json").write_text(json.dumps({"epochs_run": 2}))
            metrics.append(str(run / "eval/metrics.json"))
            records.append(str(run / "run.json"))
    rep.fig4(metrics=metrics, records=records, table=str(tmp_path / "fig4.csv"),
             figure=str(tmp_path / "fig4.png"), preset="demo",
             settings={"paper_dataset": "cifar10", "dataset": "digits",
                       "codebook_sizes": [16, 64]})
    t = pd.read_csv(tmp_path / "fig4.csv")
    assert len(t) == 4 and set(t["deferred"]) == {"yes", "no"} and set(t["dataset"]) == {"digits"}
    assert (tmp_path / "fig4.png").read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------------------ the DAG
@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return copy_repo(tmp_path_factory.mktemp("repo"))


@pytest.mark.workflow
def test_one_autoencoder_serves_every_deferred_variant(repo, tmp_path):
    demo = ["--config", "preset=demo"]
    t2 = planned_jobs(snakemake("-n", "results/tables/table2.csv", *demo, cwd=repo).stdout)
    assert t2["tokenizer_pretrain_ae"] == 1  # var and var_simvq: one VAR autoencoder
    assert t2["tokenizer_train_vq"] == 4 and t2["prepare_dataset"] == 1
    both = planned_jobs(snakemake("-n", "results/tables/table2.csv", "results/tables/table3.csv",
                          "results/tables/table9.csv", "results/tables/fig4.csv", *demo, cwd=repo).stdout)
    # maskgit (+GAN) share one, var / var_simvq / var_gan another, the sweep's sizes a third
    assert both["tokenizer_pretrain_ae"] == 3 and both["tokenizer_train_vq"] == 5 * 2 + 4 * 2
    assert both["fid_reference"] == 2 and both["fid_classifier"] == 1
    fake = fake_sources(tmp_path)
    paper = planned_jobs(snakemake("-n", "results/tables/table2.csv", "results/tables/table3.csv",
                           "results/tables/table5.csv", "results/tables/table9.csv",
                           "results/tables/table10.csv", "--configfile", "config.yaml",
                           str(fake), cwd=repo).stdout)
    # ImageNet-100: maskgit + var architectures; ODIR: var
    assert paper["tokenizer_pretrain_ae"] == 3 and paper["tokenizer_train_vq"] == 14
    assert paper["prepare_dataset"] == 2 and "fid_classifier" not in paper
    # reference statistics: ImageNet-100 val (best-FID selection) + test; ODIR test only
    assert paper["fid_reference"] == 3


@pytest.mark.workflow
def test_missing_dataset_root_stops_before_any_job_naming_the_key(repo):
    proc = snakemake("-n", "results/tables/table5.csv", check=False, cwd=repo)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "config key datasets.odir.image_dir is null" in out
    assert "ODIR-5K image directory" in out


@pytest.mark.workflow
def test_missing_weights_stop_before_training_naming_file_url_and_path(repo, tmp_path):
    fake = fake_sources(tmp_path, weights=False)
    proc = snakemake("-n", "results/tables/table3.csv", "--configfile", "config.yaml",
                     str(fake), check=False, cwd=repo)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    target = tmp_path / "weights" / "hub" / "checkpoints"
    assert "inception-2015-12-05.pt" in out or "vgg16-397923af.pth" in out
    # only what is missing is named (the dataset paths are set), without a traceback
    assert "config key datasets." not in out and "Traceback" not in out
    assert "https://" in out and str(target) in out and "fetch_weights" in out
    # the sweep needs no pretrained metric network: it plans without them
    proc = snakemake("-n", "results/figures/fig4.png", "--configfile", "config.yaml",
                     str(fake), cwd=repo)
    assert planned_jobs(proc.stdout)["tokenizer_train_vq"] == 2 * 13
