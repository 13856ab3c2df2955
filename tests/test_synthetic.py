"""Synthetic experiment stages on small data: data, training, resume, DDP, evaluation."""

import json

import numpy as np
import pytest
import torch

from vqshrink.data.synthetic import make_gaussian_mixture
from vqshrink.io import load_torch
from vqshrink.stages import synthetic as syn
from vqshrink.training import NonFiniteLossError

from image_fixtures import count_host_reads, kill_at_step, nan_at_step

DATA = {"input_dim": 2, "n_clusters": 10, "points_per_cluster": 60, "cluster_std": 1.0,
        "center_box": [-10.0, 10.0], "min_separation": 4.0, "data_seed": 0}


def settings(**over):
    s = {"input_dim": 2, "token_dim": 1, "hidden": 32, "encoder_hidden": None,
         "codebook_size": 16, "beta": 0.25, "ema_decay": 0.9, "seed": 0, "batch_size": 64,
         "lr": 1e-3, "weight_decay": 0.01, "device": "cpu", "epochs": 4,
         "kmeans_points": 600, "kmeans_iters": 5, "kmeans_init": "random",
         "ema_smoothing": "none", "schedule": "baseline"}
    s.update(over)
    return s


@pytest.fixture()
def data(tmp_path):
    path = tmp_path / "data.npz"
    syn.make_data(data=str(path), record=str(tmp_path / "data.json"), settings=DATA,
                  preset="test")
    return str(path)


def test_gaussian_mixture_is_standardised_with_distinct_modes():
    mix = make_gaussian_mixture(3, points_per_cluster=500, seed=1)
    assert mix.x.shape == (5000, 3) and mix.means.shape == (10, 3)
    np.testing.assert_allclose(mix.x.mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(mix.x.std(0), 1, atol=1e-4)
    for k in range(10):  # empirical cluster centres sit at the recorded means
        np.testing.assert_allclose(mix.x[mix.labels == k].mean(0), mix.means[k], atol=0.15)
    again = make_gaussian_mixture(3, points_per_cluster=500, seed=1)
    assert np.array_equal(mix.x, again.x)


def run_vq(tmp_path, data, tag, schedule="baseline", ae=None, **over):
    d = tmp_path / tag
    s = settings(schedule=schedule, **over)
    syn.init_codebook(data=data, init=str(d / "init.pt"), embeddings=str(d / "emb.npz"),
                      record=str(d / "init.json"), settings=s, preset="test", ae=ae)
    syn.train_vq(data=data, init=str(d / "init.pt"), model=str(d / "model.pt"),
                 curve=str(d / "curve.csv"), record=str(d / "run.json"), settings=s,
                 preset="test", state_dir=str(d / "state"), checkpoint_interval_s=0.0)
    return d


def test_baseline_and_deferred_runs_produce_outputs(tmp_path, data):
    base = run_vq(tmp_path, data, "base")
    ae_dir = tmp_path / "ae"
    syn.pretrain_ae(data=data, model=str(ae_dir / "model.pt"), curve=str(ae_dir / "curve.csv"),
                    record=str(ae_dir / "run.json"), settings=settings(epochs=3), preset="test",
                    state_dir=str(ae_dir / "state"), checkpoint_interval_s=0.0)
    deferred = run_vq(tmp_path, data, "def", schedule="deferred", ae=str(ae_dir / "model.pt"))
    for d in (base, deferred):
        curve = (d / "curve.csv").read_text().splitlines()
        assert curve[0].startswith("epoch,step,loss,mse") and len(curve) == 5
        assert not (d / "state" / "last.pt").exists()  # finished state is cleared
        assert json.loads((d / "run.json").read_text())["preset"] == "test"
    # the deferred codebook is fitted on the pretrained encoder: its init embeddings differ
    z_base = np.load(base / "emb.npz")["z"]
    z_def = np.load(deferred / "emb.npz")["z"]
    assert not np.allclose(z_base, z_def)
    ae = load_torch(ae_dir / "model.pt")["model"]
    init = load_torch(deferred / "init.pt")["model"]
    torch.testing.assert_close(init["encoder.0.weight"], ae["encoder.0.weight"])
    # evaluation writes every diagnostic
    syn.evaluate(data=data, model=str(base / "model.pt"), metrics=str(base / "m.json"),
                 samples=str(base / "s.npz"), settings=settings(), preset="test")
    metrics = json.loads((base / "m.json").read_text())["metrics"]
    assert set(metrics) >= {"euclidean", "perplexity", "usage", "dead_fraction", "mse",
                            "mode_entropy", "modes_covered", "out_of_support"}
    assert 1 <= metrics["perplexity"] <= 16 and 0 <= metrics["modes_covered"] <= 10


def test_interrupted_training_resumes_to_the_same_result(tmp_path, data, monkeypatch):
    ref = run_vq(tmp_path, data, "ref", epochs=6)
    kill_at_step(monkeypatch, 25)
    with pytest.raises(KeyboardInterrupt):
        run_vq(tmp_path, data, "resumed", epochs=6)
    state = load_torch(tmp_path / "resumed" / "state" / "last.pt")
    # 10 steps per epoch; saved after every step (interval 0): resumed mid-epoch 2
    assert state["pos"] == {"epoch": 2, "batch": 5, "step": 25}
    monkeypatch.undo()
    d = tmp_path / "resumed"
    syn.train_vq(data=data, init=str(d / "init.pt"), model=str(d / "model.pt"),
                 curve=str(d / "curve.csv"), record=str(d / "run.json"), settings=settings(epochs=6),
                 preset="test", state_dir=str(d / "state"), checkpoint_interval_s=0.0)
    a, b = load_torch(ref / "model.pt")["model"], load_torch(d / "model.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert (ref / "curve.csv").read_text() .splitlines()[1:][-1].split(",")[:3] == \
        (d / "curve.csv").read_text().splitlines()[1:][-1].split(",")[:3]


def test_nan_loss_fails_naming_the_step_and_keeps_last_good_state(tmp_path, data, monkeypatch):
    nan_at_step(monkeypatch, 23)
    with pytest.raises(NonFiniteLossError, match="at epoch 2, step 23"):
        run_vq(tmp_path, data, "nan", epochs=6)
    d = tmp_path / "nan"
    assert load_torch(d / "state" / "last.pt")["pos"] == {"epoch": 2, "batch": 3, "step": 23}
    assert not (d / "model.pt").exists()


def train_only(d, data, s, interval_s=0.0):
    """The VQ stage alone, from the init already in ``d``."""
    syn.train_vq(data=data, init=str(d / "init.pt"), model=str(d / "model.pt"),
                 curve=str(d / "curve.csv"), record=str(d / "run.json"), settings=s,
                 preset="test", state_dir=str(d / "state"), checkpoint_interval_s=interval_s)


def same_models(a, b):
    x, y = load_torch(a / "model.pt")["model"], load_torch(b / "model.pt")["model"]
    for key in x:
        torch.testing.assert_close(x[key], y[key], rtol=0, atol=0, msg=key)


def test_state_from_before_an_upstream_change_is_not_resumed(tmp_path, data, monkeypatch):
    """Killed, then the codebook init reruns with other k-means settings (the VQ stage's own
    settings unchanged): the VQ stage starts afresh from the new init, not from old state."""
    ref = run_vq(tmp_path, data, "ref", epochs=6, kmeans_iters=1)
    kill_at_step(monkeypatch, 25)
    with pytest.raises(KeyboardInterrupt):
        run_vq(tmp_path, data, "cut", epochs=6)  # k-means with 5 iterations
    d = tmp_path / "cut"
    syn.init_codebook(data=data, init=str(d / "init.pt"), embeddings=str(d / "emb.npz"),
                      record=str(d / "init.json"), settings=settings(kmeans_iters=1),
                      preset="test")
    train_only(d, data, settings(epochs=6))
    same_models(ref, d)
    assert len(list((d / "state").glob("stale-*.pt"))) == 1


def test_nan_loss_keeps_the_last_saved_state_and_a_rerun_resumes_there(tmp_path, data,
                                                                         monkeypatch):
    """The NaN at step 23 is found at the next sync point (the end of epoch 2, before its
    save): last.pt keeps the state saved at the end of epoch 1 (step 20), named in the
    message; without the NaN a rerun resumes there and ends with the uninterrupted run's
    weights."""
    s = settings(epochs=6, ema_decay=None)
    ref = run_vq(tmp_path, data, "ref", epochs=6, ema_decay=None)
    d = tmp_path / "nan"
    syn.init_codebook(data=data, init=str(d / "init.pt"), embeddings=str(d / "emb.npz"),
                      record=str(d / "init.json"), settings=s, preset="test")
    nan_at_step(monkeypatch, 23)
    with pytest.raises(NonFiniteLossError, match="at epoch 2, step 23") as err:
        train_only(d, data, s, interval_s=0.0)
    assert str(d / "state" / "last.pt") in str(err.value)
    kept = load_torch(d / "state" / "last.pt")["pos"]
    assert (kept["epoch"], kept["batch"], kept["step"]) == (2, 3, 23)
    monkeypatch.undo()
    train_only(d, data, s, interval_s=3600)
    same_models(ref, d)


def test_ddp_two_processes_match_one(tmp_path, data, monkeypatch):
    """2 gloo processes splitting each batch train the same model as one process."""
    from vqshrink.launch import Resources, launch

    one = run_vq(tmp_path, data, "one", epochs=2)
    d = tmp_path / "two"
    s = settings(epochs=2)
    syn.init_codebook(data=data, init=str(d / "init.pt"), embeddings=str(d / "emb.npz"),
                      record=str(d / "init.json"), settings=s, preset="test")
    monkeypatch.setenv("VQSHRINK_LOCAL_PROCS", "2")
    launch(syn.train_vq, dict(data=data, init=str(d / "init.pt"), model=str(d / "model.pt"),
                              curve=str(d / "curve.csv"), record=str(d / "run.json"), settings=s,
                              preset="test", state_dir=str(d / "state"),
                              checkpoint_interval_s=0.0),
           name="ddp-test", resources=Resources(), launcher="local")
    a, b = load_torch(one / "model.pt")["model"], load_torch(d / "model.pt")["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)


def test_training_reads_the_device_a_fixed_number_of_times(tmp_path, data, monkeypatch):
    """Host reads (each a host-device sync on a GPU) of one epoch of 2 and of 8 steps: the
    same count, so none is made per step."""
    reads = {}
    for steps, batch in ((2, 300), (8, 75)):
        d = tmp_path / f"b{batch}"
        s = settings(epochs=1, batch_size=batch)
        syn.init_codebook(data=data, init=str(d / "init.pt"), embeddings=str(d / "emb.npz"),
                          record=str(d / "init.json"), settings=s, preset="test")
        with count_host_reads(monkeypatch) as counts:
            train_only(d, data, s, interval_s=3600)
        row = (d / "curve.csv").read_text().splitlines()[1].split(",")
        assert row[:2] == ["1", str(steps)]  # epoch, step
        reads[steps] = dict(counts)
    assert reads[2] == reads[8]
