"""Image metrics: exact LPIPS / pixel diversity, FID through clean-fid, offline weights.

Everything runs offline: LPIPS with randomly initialised backbones (``pnet_rand=True``),
FID with small random or freshly trained feature networks, fake weight files.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

from vqshrink import weights
from vqshrink.metrics import diversity, fid

# lpips builds torchvision nets with the deprecated ``pretrained=`` argument; clean-fid passes
# SciPy's deprecated ``disp=``. Both are outside this package.
pytestmark = [
    pytest.mark.filterwarnings("ignore:Arguments other than a weight enum:UserWarning"),
    pytest.mark.filterwarnings("ignore:The parameter 'pretrained' is deprecated:UserWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning"),
    pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning"),
]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One intra-op thread: these tiny workloads gain nothing from two, and on a shared
    2-core machine a second spinning OpenMP thread makes them many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def smooth_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    """uint8 N x size x size x 3 images of smooth random colour blobs plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    x = x + 0.05 * torch.randn(n, 3, size, size, generator=g)
    x = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).contiguous().numpy()


_BUILT: dict[tuple, torch.nn.Module] = {}


def lpips_model(net: str = "alex", pretrained: bool = True, **flags):
    """``lpips.LPIPS(net, pretrained, pnet_rand=True)``, built once per (net, pretrained);
    ``spatial`` / ``version`` / ``lpips`` only steer ``forward``, so variants are shallow
    copies with those attributes set (building VGG-16 costs seconds)."""
    import copy

    import lpips

    key = (net, pretrained)
    if key not in _BUILT:
        torch.manual_seed(0)
        _BUILT[key] = lpips.LPIPS(net=net, pretrained=pretrained, pnet_rand=True, verbose=False)
    model = copy.copy(_BUILT[key])
    for name, value in flags.items():
        assert name in ("spatial", "version", "lpips")
        setattr(model, name, value)
    return model


def package_pairs(model, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The lpips package's own distances for all pairs i < j (spatial maps averaged)."""
    i, j = np.triu_indices(len(x), 1)
    with torch.no_grad():
        d = model(x[i], x[j]).double()
    return i, j, d.mean(dim=(1, 2, 3)).numpy()


# --------------------------------------------------------------------------- LPIPS

LPIPS_CASES = [
    dict(net="alex"),
    dict(net="alex", spatial=True),
    dict(net="alex", version="0.0"),
    dict(net="alex", lpips=False),
    dict(net="alex", pretrained=False),  # random lin weights, some negative
    dict(net="vgg"),
    dict(net="squeeze"),
]


@pytest.mark.parametrize(
    "kw", LPIPS_CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items())
)
def test_lpips_closed_form_and_matrix_match_package(kw):
    model = lpips_model(**kw)
    x = torch.rand(12, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    i, j, ref = package_pairs(model, x)

    mean = diversity.mean_pairwise_lpips(x, model, batch_size=5)
    assert mean == pytest.approx(ref.mean(), rel=1e-5)

    mat = diversity.pairwise_lpips_matrix(x, model, block=5, batch_size=4)
    assert np.allclose(mat, mat.T) and np.all(np.diag(mat) == 0)
    np.testing.assert_allclose(mat[i, j], ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max())


def test_lpips_inputs_uint8_and_streamed_batches_agree():
    model = lpips_model()
    imgs = smooth_images(10)
    as_float = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1
    _, _, ref = package_pairs(model, as_float)
    streamed = (imgs[k : k + 3] for k in range(0, 10, 3))
    assert diversity.mean_pairwise_lpips(imgs, model) == pytest.approx(ref.mean(), rel=1e-5)
    assert diversity.mean_pairwise_lpips(streamed, model) == pytest.approx(ref.mean(), rel=1e-5)


def test_lpips_matrix_spills_features_to_memmap():
    model = lpips_model()
    x = torch.rand(7, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    i, j, ref = package_pairs(model, x)
    mat = diversity.pairwise_lpips_matrix(x, model, block=3, max_cache_bytes=0)
    np.testing.assert_allclose(mat[i, j], ref, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- pixel distance


def brute_pixel(images: np.ndarray, norm: str, scale: float) -> float:
    f = images.reshape(len(images), -1).astype(np.float64) * scale
    out = []
    for a, b in itertools.combinations(range(len(f)), 2):
        d = f[a] - f[b]
        out.append(
            {
                "l2": np.sqrt((d**2).sum()),
                "rms": np.sqrt((d**2).mean()),
                "mse": (d**2).mean(),
                "l1": np.abs(d).mean(),
            }[norm]
        )
    return float(np.mean(out))


@pytest.mark.parametrize("norm", diversity.PIXEL_NORMS)
@pytest.mark.parametrize("block", [4, 64])
def test_pixel_distances_match_brute_force(norm, block):
    imgs = smooth_images(13, size=16, seed=3)
    for scale in (1.0, 1 / 255):
        ref = brute_pixel(imgs, norm, scale)
        got = diversity.mean_pairwise_pixel_distance(imgs, norm=norm, scale=scale, block=block)
        assert got == pytest.approx(ref, rel=1e-10)
        got32 = diversity.mean_pairwise_pixel_distance(
            imgs, norm=norm, scale=scale, block=block, dtype=torch.float32
        )
        assert got32 == pytest.approx(ref, rel=1e-5)


def test_pixel_distance_default_is_euclidean_in_unit_range_and_float_input():
    imgs = smooth_images(9, size=16, seed=4)
    ref = brute_pixel(imgs, "l2", 1 / 255)
    assert diversity.mean_pairwise_pixel_distance(imgs) == pytest.approx(ref, rel=1e-10)
    as_float = torch.from_numpy(imgs).double() / 127.5 - 1  # [-1, 1] floats
    assert diversity.mean_pairwise_pixel_distance(as_float) == pytest.approx(ref, rel=1e-9)
    with pytest.raises(ValueError):
        diversity.mean_pairwise_pixel_distance(imgs, norm="linf")


# --------------------------------------------------------------------------- FID


def scipy_frechet(mu1, s1, mu2, s2) -> float:
    """Independent reference: Tr sqrt(S1 S2) = Tr sqrt(S1^1/2 S2 S1^1/2) (a symmetric PSD root)."""
    r1 = scipy.linalg.sqrtm(s1).real
    mid = scipy.linalg.sqrtm(r1 @ s2 @ r1).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(mid))


def test_frechet_distance_matches_scipy_reference():
    rng = np.random.default_rng(0)
    for dim in (2, 5, 40):
        a, b = rng.normal(size=(dim, 2 * dim)), rng.normal(size=(dim, 2 * dim))
        s1, s2 = a @ a.T / dim, b @ b.T / dim
        mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
        ref = scipy_frechet(mu1, s1, mu2, s2)
        assert fid.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8, abs=1e-9)
        assert fid.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-7)


class RandomProjection(torch.nn.Module):
    """A random full-rank feature net: 4x4 average pooling, then a linear map to 16 dims
    (randomly initialised conv nets have dead ReLU features, hence singular covariances)."""

    input_size = 32

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.proj = torch.nn.Sequential(
            torch.nn.AvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 16)
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


@pytest.fixture(scope="module")
def random_extractor():
    return fid.substitute_extractor("random test net", RandomProjection(), device="cpu")


def test_fid_self_zero_shift_positive_and_labelled(random_extractor, tmp_path):
    imgs = smooth_images(120, seed=5)
    ref = fid.reference_statistics(imgs, random_extractor, batch_size=32)
    mu, sigma, n = ref
    assert n == 120 and mu.shape == (16,) and sigma.shape == (16, 16)

    path = tmp_path / "ref_test.npz"
    fid.save_statistics(path, ref)
    back = fid.load_statistics(path)
    assert back.n == 120 and back.feature_net == random_extractor.feature_net
    np.testing.assert_array_equal(back.mu, ref.mu)
    np.testing.assert_array_equal(back.sigma, ref.sigma)

    same = fid.fid_from_images(imgs, path, random_extractor, batch_size=50)
    assert abs(same["fid"]) < 1e-6 * np.trace(ref.sigma)
    assert "not comparable" in same["feature_net"] and same["substitute"]

    brighter = np.clip(imgs.astype(int) + 60, 0, 255).astype(np.uint8)
    other = smooth_images(120, seed=6)
    f_shift = fid.fid_from_images(brighter, ref, random_extractor)["fid"]
    f_other = fid.fid_from_images(other, ref, random_extractor)["fid"]
    assert f_shift > 3 * f_other > 0 and f_other > 1e3 * abs(same["fid"])

    batches = (imgs[k : k + 25] for k in range(0, 120, 25))
    streamed = fid.feature_statistics(batches, random_extractor)
    np.testing.assert_allclose(streamed.sigma, ref.sigma, rtol=1e-9, atol=1e-12)


def write_pngs(images: np.ndarray, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for k, img in enumerate(images):
        Image.fromarray(img).save(folder / f"{k:04d}.png")
    return folder


def test_features_and_fid_equal_cleanfid_folder_path(random_extractor, tmp_path):
    from cleanfid import fid as cfid

    a = smooth_images(40, size=24, seed=7)
    b = np.clip(smooth_images(40, size=24, seed=8).astype(int) + 30, 0, 255).astype(np.uint8)
    da, db = write_pngs(a, tmp_path / "a"), write_pngs(b, tmp_path / "b")
    ex = random_extractor  # input 32: clean resize 24 -> 32
    ours = np.concatenate(list(fid.extract_features(a, ex, batch_size=16)))
    theirs = cfid.get_folder_features(
        str(da),
        ex.model,
        num_workers=0,
        batch_size=16,
        device=torch.device("cpu"),
        mode="clean",
        custom_fn_resize=ex.resizer(),
        verbose=False,
    )
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)

    ref = fid.reference_statistics(b, ex)
    score = fid.fid_from_images(a, ref, ex)["fid"]
    theirs_fid = cfid.compute_fid(
        str(da),
        str(db),
        mode="clean",
        num_workers=0,
        batch_size=16,
        device=torch.device("cpu"),
        custom_feat_extractor=ex.model,
        custom_fn_resize=ex.resizer(),
        verbose=False,
    )
    scale = np.trace(ref.sigma)  # the random net's features are small: compare relative to it
    assert score == pytest.approx(theirs_fid, rel=1e-6, abs=1e-6 * scale)
    assert score > 1e-3 * scale


def test_fid_refuses_stats_of_another_network(random_extractor):
    imgs = smooth_images(40, seed=9)
    ref = fid.reference_statistics(imgs, random_extractor)
    ref.feature_net = fid.INCEPTION_LABEL
    with pytest.raises(ValueError, match="feature networks differ"):
        fid.fid_from_images(imgs, ref, random_extractor)


def test_train_classifier_learns_and_round_trips(tmp_path):
    imgs = smooth_images(256, size=16, seed=10)
    mean_rgb = imgs.reshape(256, -1, 3).mean(1)
    labels = (mean_rgb[:, 0] > mean_rgb[:, 2]).astype(np.int64)  # redder than blue?
    net = fid.train_classifier(imgs, labels, epochs=10, seed=0, batch_size=32)
    assert net.input_size == 16
    assert fid.classifier_accuracy(net, imgs, labels) > 0.85
    again = fid.train_classifier(imgs, labels, epochs=10, seed=0, batch_size=32)
    x = torch.from_numpy(imgs[:8]).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.equal(net.features(x), again.features(x))  # deterministic for a seed
    fid.save_classifier(net, tmp_path / "clf.pt")
    loaded = fid.load_classifier(tmp_path / "clf.pt")
    assert torch.equal(loaded.features(x), net.features(x))
    ex = fid.build_extractor("substitute:digits classifier", net=loaded, device="cpu")
    assert ex.feature_net == "substitute: digits classifier, not comparable to paper FID"
    assert next(fid.extract_features(imgs[:5], ex)).shape == (5, 128)


# --------------------------------------------------------------------------- weights


class FakeInception(torch.nn.Module):
    """Stands in for clean-fid's TorchScript file: ``.layers``: (B,3,299,299) -> (B,2048,1,1)."""

    def __init__(self):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.AvgPool2d(13), torch.nn.Conv2d(3, 2048, 1), torch.nn.AdaptiveAvgPool2d(1)
        )

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return self.layers(x)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    import cleanfid.inception_torchscript as cts

    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setattr(cts, "check_download_inception", refuse)


def test_check_weights_names_file_url_and_target(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(weights.MissingWeightsError) as err:
        weights.check_weights(fid=True, lpips_net="alex")
    msg = str(err.value)
    ckpt = tmp_path / "torch_home" / "hub" / "checkpoints"
    for name, url in [
        ("inception-2015-12-05.pt", weights.INCEPTION_URL),
        ("alexnet-owt-7be5be79.pth", weights.LPIPS_BACKBONE_URLS["alex"]),
    ]:
        assert name in msg and url in msg and str(ckpt / name) in msg
    assert "python -m vqshrink.weights fetch" in msg
    assert {w.name for w in err.value.missing} == {
        "inception-2015-12-05.pt",
        "alexnet-owt-7be5be79.pth",
    }

    cache = tmp_path / "cache"
    with pytest.raises(weights.MissingWeightsError) as err:
        weights.check_weights(fid=False, lpips_net="vgg16", cache_dir=cache)
    assert str(cache / "hub" / "checkpoints" / "vgg16-397923af.pth") in str(err.value)
    assert weights.check_weights(fid=False, lpips_net=None) == []
    with pytest.raises(weights.MissingWeightsError):
        fid.inception_extractor(cache_dir=cache, device="cpu")  # fails before any compute
    with pytest.raises(weights.MissingWeightsError):
        weights.load_lpips("alex", cache_dir=cache)
    assert weights.load_lpips("alex", cache_dir=cache, pnet_rand=True) is not None


def test_fetch_weights_atomic_and_inception_path(tmp_path, monkeypatch):
    source = tmp_path / "src_inception.pt"
    torch.jit.script(FakeInception()).save(str(source))
    fetched: list[str] = []

    def fake_download(url: str, dst: Path) -> None:
        fetched.append(url)
        Path(dst).write_bytes(source.read_bytes())

    monkeypatch.setattr(weights, "_download", fake_download)
    cache = tmp_path / "cache"
    paths = weights.fetch_weights(cache_dir=cache, fid=True, lpips_net=None)
    target = cache / "hub" / "checkpoints" / "inception-2015-12-05.pt"
    assert paths == [target] and target.read_bytes() == source.read_bytes()
    assert fetched == [weights.INCEPTION_URL]
    weights.fetch_weights(cache_dir=cache, fid=True, lpips_net=None)
    assert len(fetched) == 1  # present files are not fetched again

    # a torchvision file whose sha256 does not match its name is refused and not left behind
    with pytest.raises(RuntimeError, match="sha256"):
        weights.fetch_weights(cache_dir=cache, fid=False, lpips_net="alex")
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]

    # the real Inception path reads the cached file without clean-fid's /tmp download
    import cleanfid.inception_torchscript as cts

    monkeypatch.setattr(cts, "check_download_inception", lambda *a, **k: pytest.fail("download"))
    ex = fid.inception_extractor(cache_dir=cache, device="cpu")
    assert ex.feature_net == fid.INCEPTION_LABEL and ex.size == 299
    feats = next(fid.extract_features(smooth_images(3), ex))
    assert feats.shape == (3, 2048)


def test_load_lpips_uses_cached_backbone(tmp_path, no_network):
    import torchvision

    torch.manual_seed(0)
    backbone = torchvision.models.squeezenet1_1()
    target = weights.checkpoint_dir(tmp_path) / "squeezenet1_1-b8a52dc0.pth"
    target.parent.mkdir(parents=True)
    torch.save(backbone.state_dict(), target)
    hub_before = torch.hub.get_dir()
    model = weights.load_lpips("squeeze", cache_dir=tmp_path)
    assert torch.hub.get_dir() == hub_before
    assert torch.equal(model.net.slice1[0].weight, backbone.features[0].weight)


@pytest.mark.parametrize("env", [{}, {"XDG_CACHE_HOME": "/x/cache"},
                                 {"TORCH_HOME": "~/th", "XDG_CACHE_HOME": "/x/cache"}])
def test_hub_dir_without_torch_is_torchs_own(env):
    """The workflow looks for weight files at parse time without loading torch; where it
    looks is where torch.hub would (each read in a fresh process)."""
    import os
    import subprocess
    import sys

    base = {k: v for k, v in os.environ.items() if k not in ("TORCH_HOME", "XDG_CACHE_HOME")}
    ours = ("import sys; from vqshrink.weights import hub_dir; print(hub_dir()); "
            "assert 'torch' not in sys.modules")
    theirs = "import torch.hub; print(torch.hub.get_dir())"
    got = [subprocess.run([sys.executable, "-c", code], env={**base, **env}, check=True,
                          capture_output=True, text=True).stdout.strip()
           for code in (ours, theirs)]
    assert got[0] == got[1]
