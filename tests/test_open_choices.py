"""The choices the paper leaves open or that move the shrinkage: k-means seeding, the
synthetic runs' k-means sample, Laplace-smoothed EMA, SimVQ's k-means init. Defaults follow
the cited method / the paper's reading; the alternatives are options that do what they say."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from vqshrink.io import load_torch
from vqshrink.kmeans import kmeans, random_init
from vqshrink.models.mlp_vqvae import MLPVQVAE, MLPVQVAEConfig
from vqshrink.quantizers.simvq import SimVQ
from vqshrink.quantizers.vq import VectorQuantizer
from vqshrink.stages import synthetic as syn
from vqshrink.stages import tokenizer as tok
from vqshrink.training import epoch_batches

from image_fixtures import data as images, one_thread  # noqa: F401 (fixtures)
from repo_helpers import ROOT
from test_synthetic import data as syn_data  # noqa: F401 (fixture)
from test_synthetic import settings as synthetic_settings


def syn_settings(**over):
    """test_synthetic's settings with one batch of 64 for the k-means sample, seed 3."""
    return synthetic_settings(**{"seed": 3, "kmeans_points": 64, "kmeans_iters": 4, **over})


def syn_init(tmp_path, data, **over):
    s = syn_settings(**over)
    d = tmp_path / "_".join(f"{k}{v}" for k, v in over.items())
    syn.init_codebook(data=data, init=str(d / "init.pt"), embeddings=str(d / "emb.npz"),
                      record=str(d / "init.json"), settings=s, preset="test")
    return s, d


# ------------------------------------------------------------------------------ config defaults
def test_config_defaults_follow_the_cited_kmeans_and_the_papers_reading():
    """SoundStream-style seeding everywhere, one batch for the synthetic k-means, the older
    paper's unsmoothed EMA, SimVQ's C := centroids with W = I."""
    cfg = yaml.safe_load((ROOT / "config.yaml").read_text())
    assert cfg["tokenizers"]["kmeans"]["init"] == "random"
    assert cfg["vqvae_sweep"]["kmeans"]["init"] == "random"
    syn_cfg = cfg["synthetic"]
    assert syn_cfg["kmeans_init"] == "random"
    assert syn_cfg["kmeans_points"] == syn_cfg["batch_size"] == 256  # App. A.1: batch 256
    assert syn_cfg["ema_smoothing"] == "none" and cfg["vqvae_sweep"]["ema_smoothing"] == "none"
    assert cfg["tokenizers"]["simvq_init"] == "identity"


def test_kmeans_default_seeding_is_a_random_sample_of_the_points():
    """vector-quantize-pytorch's kmeans: the initial means are random input vectors."""
    x = torch.randn(300, 3, generator=torch.Generator().manual_seed(0))
    start = kmeans(x, 12, iters=0, seed=5).centroids
    assert torch.equal(start, random_init(x, 12, torch.Generator().manual_seed(5)))


# ------------------------------------------------------------------------------ synthetic stage
@pytest.mark.parametrize("init", ["random", "kmeans++"])
def test_synthetic_init_uses_the_configured_seeding(tmp_path, syn_data, init):
    s, d = syn_init(tmp_path, syn_data, kmeans_init=init)
    z = torch.from_numpy(np.load(d / "emb.npz")["z"])
    expected = kmeans(z, 16, iters=4, init=init, seed=3).centroids
    codebook = load_torch(d / "init.pt")["model"]["quantizer.codebook"]
    torch.testing.assert_close(codebook, expected)


def test_synthetic_kmeans_sample_is_the_first_training_batch(tmp_path, syn_data):
    """kmeans_points == batch_size clusters exactly the VQ phase's first batch
    (SoundStream); the EMA statistics start from its cluster sizes unscaled."""
    s, d = syn_init(tmp_path, syn_data)
    x = syn.load_data(syn_data)["x"]
    first = epoch_batches(len(x), s["batch_size"], torch.Generator().manual_seed(s["seed"]))[0]
    torch.manual_seed(s["seed"])
    net = MLPVQVAE(syn.model_config(s))
    torch.testing.assert_close(torch.from_numpy(np.load(d / "emb.npz")["z"]),
                               syn.encode(net, x[first]))
    state = load_torch(d / "init.pt")["model"]
    counts = torch.from_numpy(np.load(d / "emb.npz")["counts"]).float()
    torch.testing.assert_close(state["quantizer.ema_count"], counts)


def test_synthetic_all_points_option_clusters_the_whole_data_set(tmp_path, syn_data):
    s, d = syn_init(tmp_path, syn_data, kmeans_points=10_000)
    assert len(np.load(d / "emb.npz")["z"]) == 600  # capped at the data set (10 x 60)


# ------------------------------------------------------------------------------ EMA smoothing
def laplace_reference(k, d, g, init, counts, batches, eps=1e-5):
    """taming EmbeddingEMA / vector-quantize-pytorch: EMA of sums and counts, then every
    token = sum / ((count + eps) / (total + K eps) * total)."""
    m_run, l_run, t, out = init * counts[:, None], counts.clone(), init.clone(), []
    for z in batches:
        idx = ((z[:, None] - t[None]) ** 2).sum(-1).argmin(1)
        m = torch.zeros(k, d).index_add_(0, idx, z)
        n = torch.bincount(idx, minlength=k).float()
        m_run, l_run = g * m_run + (1 - g) * m, g * l_run + (1 - g) * n
        total = l_run.sum()
        t = m_run / ((l_run + eps) / (total + k * eps) * total)[:, None]
        out.append(t)
    return out


def test_laplace_smoothed_ema_matches_taming():
    torch.manual_seed(4)
    k, d, g = 6, 2, 0.8
    init, counts = torch.randn(k, d), torch.tensor([4.0, 0, 2, 0, 1, 3])
    batches = [torch.randn(32, d) * 2 for _ in range(6)]
    vq = VectorQuantizer(k, d, ema_decay=g, ema_smoothing="laplace").train()
    vq.init_codebook(init, counts)
    for z, ref in zip(batches, laplace_reference(k, d, g, init, counts, batches)):
        vq(z)
        torch.testing.assert_close(vq.codebook, ref)


def test_laplace_moves_an_unused_token_to_the_origin_the_default_keeps_it():
    far = torch.tensor([[0.0], [50.0]])
    for smoothing, expect in (("none", 50.0), ("laplace", 0.0)):
        vq = VectorQuantizer(2, 1, ema_decay=0.5, ema_smoothing=smoothing).train()
        vq.init_codebook(far, torch.tensor([1.0, 1.0]))
        for _ in range(60):  # token 1 is never picked: its count decays as 0.5^t
            vq(torch.zeros(8, 1))
        assert vq.codebook[1, 0].item() == pytest.approx(expect, abs=1e-3)


def test_ema_smoothing_reaches_the_quantizer_and_rejects_unknown_values():
    net = MLPVQVAE(MLPVQVAEConfig(ema_smoothing="laplace"))
    assert net.quantizer.ema_smoothing == "laplace"
    with pytest.raises(ValueError, match="ema_smoothing"):
        VectorQuantizer(4, 2, ema_smoothing="laplce")


# ------------------------------------------------------------------------------ SimVQ init
def test_simvq_lstsq_init_fits_w_and_b_to_the_centroids():
    torch.manual_seed(5)
    q = SimVQ(64, 4)
    c_random = q.frozen_codebook.clone()
    centroids = torch.randn(64, 4) * 3 + 1
    q.init_codebook(centroids, mode="lstsq")
    assert torch.equal(q.frozen_codebook, c_random)  # C stays SimVQ's random one
    design = np.hstack([c_random.double().numpy(), np.ones((64, 1))])
    sol = np.linalg.lstsq(design, centroids.double().numpy(), rcond=None)[0]
    np.testing.assert_allclose(q.proj.weight.detach().numpy(), sol[:-1].T, atol=1e-5)
    np.testing.assert_allclose(q.proj.bias.detach().numpy(), sol[-1], atol=1e-5)
    q.init_codebook(centroids)  # identity (default): the codebook IS the centroids
    torch.testing.assert_close(q.codebook, centroids)
    with pytest.raises(ValueError, match="SimVQ init mode"):
        q.init_codebook(centroids, mode="pinv")


def test_tokenizer_init_passes_simvq_init_to_the_quantizer(images, tmp_path):
    model = {"family": "vqgan", "resolution": 16, "ch": 32, "ch_mult": [1, 1],
             "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0, "z_channels": 32,
             "embed_dim": 8, "quantizer": "multiscale_simvq", "codebook_size": 32,
             "beta": 0.25, "patch_nums": [1, 2, 4, 8]}
    out = {}
    for mode in ("identity", "lstsq"):
        d = tmp_path / mode
        s = {"model": model, "kmeans": {"ratio": 2, "iters": 3, "init": "random",
                                        "batch_size": 4},
             "seed": 0, "schedule": "baseline", "batch_size": 32, "device": "cpu",
             "simvq_init": mode}
        tok.init_codebook(data=images, init=str(d / "init.pt"), embeddings=str(d / "emb.npz"),
                          record=str(d / "init.json"), settings=s, preset="test")
        out[mode] = (load_torch(d / "init.pt")["model"],
                     torch.from_numpy(np.load(d / "emb.npz")["codebook"]))
    state, centroids = out["identity"]
    torch.testing.assert_close(state["quantizer.frozen_codebook"], centroids)
    torch.testing.assert_close(state["quantizer.proj.weight"], torch.eye(8))
    state, centroids = out["lstsq"]
    assert not torch.allclose(state["quantizer.frozen_codebook"], centroids)
    assert not torch.allclose(state["quantizer.proj.weight"], torch.eye(8))
