"""The real synthetic VQ training stage on the real SLURM cluster, cut by its time limit.

The job gets a 1-minute limit and more than a minute of training. slurmctld warns it
(USR2, 5 s before the limit on a 30 s tick: 25-55 s into each run), submitit calls the
job's checkpoint() and requeues it, and the requeued run resumes from the stage's own
``last.pt``. The model that finally comes back must be bit-for-bit the model of an
uninterrupted local run: resuming loses and repeats nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from vqshrink.io import load_torch
from vqshrink.launch import Resources, launch
from vqshrink.stages import synthetic as syn

DATA = {"input_dim": 2, "n_clusters": 10, "points_per_cluster": 100, "cluster_std": 1.0,
        "center_box": [-10.0, 10.0], "min_separation": 4.0, "data_seed": 0}
# Training should outlast the latest possible first warning (55 s). A job that still
# finished unwarned (it ran faster than calibrated) is retried with twice the epochs.
WORK_S = 70.0


def settings(epochs: int) -> dict:
    return {"input_dim": 2, "token_dim": 1, "hidden": 32, "encoder_hidden": None,
            "codebook_size": 32, "beta": 0.25, "ema_decay": 0.9, "seed": 0, "batch_size": 64,
            "lr": 1e-3, "weight_decay": 0.01, "device": "cpu", "epochs": epochs,
            "kmeans_points": 1000, "kmeans_iters": 5, "kmeans_init": "random",
            "ema_smoothing": "none", "schedule": "baseline"}


def train_kwargs(d: Path, data: str, init: str, epochs: int) -> dict:
    return dict(data=data, init=init, model=str(d / "model.pt"), curve=str(d / "curve.csv"),
                record=str(d / "run.json"), settings=settings(epochs), preset="test",
                state_dir=str(d / "state"), checkpoint_interval_s=1.0, threads=1,
                log=str(d / "stage.log"))


@pytest.mark.slurm
def test_timed_out_training_is_requeued_and_resumes_exactly(slurm_cluster, tmp_path,
                                                            monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    data = str(tmp_path / "data.npz")
    syn.make_data(data=data, record=str(tmp_path / "data.json"), settings=DATA, preset="test")
    init = str(tmp_path / "init.pt")
    syn.init_codebook(data=data, init=init, embeddings=str(tmp_path / "emb.npz"),
                      record=str(tmp_path / "init.json"), settings=settings(1), preset="test")

    # Calibrate from the training loop's own clock (the curve's seconds column).
    calib = tmp_path / "calib"
    syn.train_vq(**train_kwargs(calib, data, init, 30))
    per_epoch = float((calib / "curve.csv").read_text().splitlines()[-1].split(",")[-1]) / 30
    epochs = int(WORK_S / per_epoch) + 1

    # The SLURM job first; then the uninterrupted local reference with the same epochs.
    for attempt in range(3):
        remote_dir = tmp_path / f"slurm{attempt}"
        launch(syn.train_vq, train_kwargs(remote_dir, data, init, epochs), name="requeue",
               resources=Resources(cpus_per_task=1, mem_mb=1000, runtime=1,
                                   slurm_partition=slurm_cluster["partition"]),
               launcher="slurm", log_dir=tmp_path / "submitit",
               slurm_max_num_timeout=10, slurm_signal_delay_s=5)
        log = (remote_dir / "stage.log").read_text()
        resumed = [int(e) for e in
                   re.findall(r"resuming from .*last\.pt at step \d+, after (\d+) epochs", log)]
        if resumed:
            break
        epochs *= 2
    assert resumed, f"the job was never cut by its time limit:\n{log[-2000:]}"
    # A resume at e == epochs is the signal landing after the last epoch, while the outputs
    # were being written: the requeued job restores the finished state and writes them again.
    assert all(0 < e <= epochs for e in resumed), log[-3000:]
    assert log.count("stage train_vq starts") == len(resumed) + 1
    local_dir = tmp_path / "local"
    syn.train_vq(**train_kwargs(local_dir, data, init, epochs))

    a = load_torch(local_dir / "model.pt")["model"]
    b = load_torch(remote_dir / "model.pt")["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    rows = (remote_dir / "curve.csv").read_text().splitlines()
    assert len(rows) == epochs + 1  # one row per epoch, none lost or repeated
