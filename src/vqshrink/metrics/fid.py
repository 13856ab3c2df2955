"""FID through clean-fid's own code path, for uint8 images held in memory.

FID between two image sets is the Frechet distance between Gaussians fitted to their
feature vectors f (one per image)::

    FID = ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2}),

mu = mean of f, S = unbiased covariance of f (``np.cov(f, rowvar=False)``).

What clean-fid does per image in ``mode="clean"`` (folder path ``ResizeDataset`` and
generator path ``get_model_features`` alike), and what :func:`extract_features` repeats:

1. the image as an H x W x 3 array in [0, 255] (uint8 from the file, or float);
2. ``cleanfid.resize.build_resizer("clean")``: every channel becomes a PIL float image
   (mode "F"), is resized with PIL BICUBIC to 299 x 299 and clipped to [0, 255], no
   re-quantisation to uint8 (the "clean" resize);
3. the float32 result goes to CHW (``ToTensor`` keeps float values, it only rescales
   uint8) and is batched;
4. ``cleanfid.fid.get_batch_features(batch, model, device)`` runs the feature network on
   the (B, 3, 299, 299) float [0, 255] batch; the TorchScript Inception maps x to
   (x - 128) / 128 internally and returns the 2048-d pool features.

Our arrays are uint8 N x H x W x 3 (see :mod:`vqshrink.data.prepared`), exactly what
clean-fid reads from a PNG folder; ``tests/test_metrics_images.py`` checks feature
equality with ``cleanfid.fid.get_folder_features`` on written PNGs. The mean/covariance
are accumulated in float64 over batches (same values as ``np.cov`` up to rounding), so
the features of a large split never have to be held at once, and the Frechet distance is
``cleanfid.fid.frechet_distance`` itself.

Feature networks (:class:`FeatureExtractor`):

* ``"inception"``: clean-fid's TorchScript Inception-v3, read from
  :func:`vqshrink.weights.checkpoint_dir` (never downloaded at run time: clean-fid would
  fetch it into ``/tmp``; we build ``InceptionV3W(path=<dir>, download=False)`` and pass
  it as the custom feature extractor). Label ``"inception-v3 (clean-fid)"``.
* ``"inception_random"``: the same Inception-v3 architecture (clean-fid's FID Inception,
  :mod:`vqshrink.metrics.inception_random`) with random seeded weights, same input contract
  and resize; needs no weight file. Label
  :data:`~vqshrink.metrics.inception_random.RANDOM_INCEPTION_LABEL` ("... RANDOM weights:
  not comparable to paper FID").
* ``"substitute:<name>"``: any torch module, e.g. :class:`SmallClassifier` trained on the
  demo data. Images get the same clean PIL-bicubic float resize, to the network's own
  input size instead of 299, and are mapped to [-1, 1]. The numbers are NOT comparable with
  the paper's FID; the label says so and every result carries it.

Reference statistics (mu, S, n) of a split are computed once (:func:`reference_statistics`),
saved as ``.npz`` (:func:`save_statistics`) and reused for every r-FID / g-FID against it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vqshrink.io import save_npz

INCEPTION_LABEL = "inception-v3 (clean-fid)"
INCEPTION_SIZE = 299
RESIZE_NOTE = (
    "clean-fid 'clean' resize: PIL bicubic on float32 channels, clip [0,255], no quantisation"
)

ImageBatches = np.ndarray | torch.Tensor | Iterable[np.ndarray | torch.Tensor]


@dataclass
class FeatureExtractor:
    """A feature network under clean-fid's custom-extractor contract.

    ``model`` maps a float32 batch (B, 3, size, size) with values in [0, 255] (already
    resized) to a (B, D) tensor. ``feature_net`` is the label tables print.
    """

    name: str
    feature_net: str
    model: Callable[[torch.Tensor], torch.Tensor]
    size: int
    device: torch.device

    def resizer(self) -> Callable[[np.ndarray], np.ndarray]:
        """clean-fid's clean-mode resizer (``build_resizer("clean")`` at size 299)."""
        from cleanfid.resize import build_resizer, make_resizer

        if self.size == INCEPTION_SIZE:
            return build_resizer("clean")
        return make_resizer("PIL", False, "bicubic", (self.size, self.size))

    @property
    def is_substitute(self) -> bool:
        return self.name.startswith("substitute:")


def _default_device(device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def inception_extractor(
    cache_dir: str | Path | None = None, device: str | torch.device | None = None
) -> FeatureExtractor:
    """clean-fid's Inception-v3 from the weight cache; raises ``MissingWeightsError`` offline."""
    from vqshrink.weights import load_inception

    dev = _default_device(device)
    model = load_inception(cache_dir, device=dev)
    return FeatureExtractor("inception", INCEPTION_LABEL, model, INCEPTION_SIZE, dev)


def inception_random_extractor(device: str | torch.device | None = None) -> FeatureExtractor:
    """clean-fid's FID Inception-v3 architecture with random seeded weights (no weight file)."""
    from vqshrink.metrics.inception_random import RANDOM_INCEPTION_LABEL, RandomFIDInception

    dev = _default_device(device)
    model = RandomFIDInception().to(dev).eval()
    return FeatureExtractor("inception_random", RANDOM_INCEPTION_LABEL, model, INCEPTION_SIZE, dev)


class _SubstituteWrapper(nn.Module):
    """[0, 255] float batch -> [-1, 1] -> ``net.features`` (or ``net``), flattened to (B, D)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x / 127.5 - 1.0
        feats = self.net.features(x) if hasattr(self.net, "features") else self.net(x)
        return feats.flatten(1)


def substitute_extractor(
    name: str,
    net: nn.Module,
    input_size: int | None = None,
    device: str | torch.device | None = None,
    feature_net: str | None = None,
) -> FeatureExtractor:
    """Wrap a torch module (inputs in [-1, 1]) as a labelled substitute feature network.

    ``input_size`` defaults to ``net.input_size``. ``feature_net`` defaults to
    ``"substitute: <name>, not comparable to paper FID"``.
    """
    size = int(input_size if input_size is not None else getattr(net, "input_size"))
    dev = _default_device(device)
    model = _SubstituteWrapper(net).to(dev).eval()
    label = feature_net or f"substitute: {name}, not comparable to paper FID"
    return FeatureExtractor(f"substitute:{name}", label, model, size, dev)


def build_extractor(
    spec: str,
    *,
    net: nn.Module | None = None,
    cache_dir: str | Path | None = None,
    device: str | torch.device | None = None,
) -> FeatureExtractor:
    """``"inception"``, ``"inception_random"`` or ``"substitute:<name>"`` (then ``net`` is
    required)."""
    if spec == "inception":
        return inception_extractor(cache_dir, device)
    if spec == "inception_random":
        return inception_random_extractor(device)
    if spec.startswith("substitute:"):
        if net is None:
            raise ValueError(f"feature extractor {spec!r} needs its network (net=...)")
        return substitute_extractor(spec.split(":", 1)[1], net, device=device)
    raise ValueError(f"unknown feature extractor {spec!r}: use 'inception', 'inception_random' "
                     "or 'substitute:<name>'")


# --------------------------------------------------------------------------- features


def _as_uint8_nhwc(batch: np.ndarray | torch.Tensor) -> np.ndarray:
    arr = batch.detach().cpu().numpy() if isinstance(batch, torch.Tensor) else np.asarray(batch)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"expected uint8 images N x H x W x 3, got {arr.dtype} {arr.shape}")
    return arr


def _batches(images: ImageBatches, batch_size: int) -> Iterator[np.ndarray]:
    """Uint8 NHWC batches from one array (sliced) or from an iterable of batches."""
    if isinstance(images, (np.ndarray, torch.Tensor)):
        for start in range(0, len(images), batch_size):
            yield _as_uint8_nhwc(images[start : start + batch_size])
    else:
        for batch in images:
            yield _as_uint8_nhwc(batch)


def _resize_batch(batch: np.ndarray, resize: Callable[[np.ndarray], np.ndarray]) -> torch.Tensor:
    """Per image: clean-fid resize (float32 HWC, [0,255]) -> CHW; stacked to (B, 3, S, S)."""
    out = np.stack([np.asarray(resize(img), dtype=np.float32) for img in batch])
    return torch.from_numpy(out.transpose(0, 3, 1, 2).copy())


def extract_features(
    images: ImageBatches, extractor: FeatureExtractor, batch_size: int = 64
) -> Iterator[np.ndarray]:
    """Yield (b, D) float32 features per batch, exactly as clean-fid's folder path computes them."""
    from cleanfid.fid import get_batch_features

    resize = extractor.resizer()
    for batch in _batches(images, batch_size):
        x = _resize_batch(batch, resize)
        yield get_batch_features(x, extractor.model, extractor.device)


# --------------------------------------------------------------------------- statistics


@dataclass
class FeatureStats:
    """Gaussian fit of one image set's features: mean, unbiased covariance, count, network."""

    mu: np.ndarray
    sigma: np.ndarray
    n: int
    feature_net: str

    def __iter__(self):  # allows ``mu, sigma, n = stats``
        return iter((self.mu, self.sigma, self.n))


class _Moments:
    """Streaming mean and covariance in float64, shifted by the first batch's mean.

    With c the shift, s1 = sum(f - c), s2 = sum (f - c)(f - c)^T over n rows:
    mu = c + s1 / n, S = (s2 - s1 s1^T / n) / (n - 1). The shift keeps the subtraction
    well conditioned when |mu| >> std.
    """

    def __init__(self) -> None:
        self.n = 0
        self.shift: np.ndarray | None = None
        self.s1: np.ndarray | None = None
        self.s2: np.ndarray | None = None

    def update(self, feats: np.ndarray) -> None:
        f = np.asarray(feats, dtype=np.float64)
        if self.shift is None:
            self.shift = f.mean(axis=0)
            self.s1 = np.zeros_like(self.shift)
            self.s2 = np.zeros((f.shape[1], f.shape[1]))
        d = f - self.shift
        self.n += len(f)
        self.s1 += d.sum(axis=0)
        self.s2 += d.T @ d

    def result(self) -> tuple[np.ndarray, np.ndarray, int]:
        if self.n < 2:
            raise ValueError(f"need at least 2 images for a covariance, got {self.n}")
        mean_d = self.s1 / self.n
        sigma = (self.s2 - self.n * np.outer(mean_d, mean_d)) / (self.n - 1)
        return self.shift + mean_d, sigma, self.n


def feature_statistics(
    images: ImageBatches, extractor: FeatureExtractor, batch_size: int = 64
) -> FeatureStats:
    """Mean and covariance of the features of ``images`` (streamed over batches)."""
    moments = _Moments()
    for feats in extract_features(images, extractor, batch_size):
        moments.update(feats)
    mu, sigma, n = moments.result()
    return FeatureStats(mu, sigma, n, extractor.feature_net)


def reference_statistics(
    images: ImageBatches, extractor: FeatureExtractor, batch_size: int = 64
) -> FeatureStats:
    """Statistics of a reference split; compute once, :func:`save_statistics`, reuse."""
    return feature_statistics(images, extractor, batch_size)


def save_statistics(path: str | Path, stats: FeatureStats) -> None:
    """Write ``mu``, ``sigma``, ``n``, ``feature_net`` to ``path`` (.npz, atomically)."""
    save_npz(
        path,
        mu=stats.mu,
        sigma=stats.sigma,
        n=np.int64(stats.n),
        feature_net=np.str_(stats.feature_net),
    )


def load_statistics(path: str | Path) -> FeatureStats:
    """Read statistics written by :func:`save_statistics` (no pickles)."""
    with np.load(path, allow_pickle=False) as z:
        return FeatureStats(z["mu"], z["sigma"], int(z["n"]), str(z["feature_net"]))


# --------------------------------------------------------------------------- distance


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrtm(S1 S2)) by ``cleanfid.fid.frechet_distance``.

    clean-fid 0.1.35 calls ``scipy.linalg.sqrtm(..., disp=False)`` and unpacks two values;
    SciPy 1.17 deprecates ``disp`` (1.18 removes it) and already returns a bare array for
    1 x 1 inputs. Only when clean-fid's call fails that way does :func:`_frechet_same_steps`
    (the same steps without ``disp``) take over.
    """
    from cleanfid.fid import frechet_distance as cleanfid_frechet

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*disp.*", category=DeprecationWarning)
        try:
            return float(cleanfid_frechet(mu1, sigma1, mu2, sigma2))
        except (TypeError, ValueError) as err:
            if "disp" not in str(err) and "unpack" not in str(err):
                raise
    return _frechet_same_steps(mu1, sigma1, mu2, sigma2)


def _frechet_same_steps(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """clean-fid's algorithm: sqrtm(S1 S2); if not finite, add eps I to both; drop a tiny
    imaginary part (error if a diagonal imaginary part exceeds 1e-3)."""
    import scipy.linalg

    def sqrtm(a: np.ndarray) -> np.ndarray:
        out = scipy.linalg.sqrtm(a)
        return out[0] if isinstance(out, tuple) else out

    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    covmean = sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"imaginary component {np.max(np.abs(covmean.imag))}")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_stats(stats: FeatureStats, ref: FeatureStats) -> dict:
    """FID between two fitted Gaussians; both must come from the same feature network."""
    if stats.feature_net != ref.feature_net:
        raise ValueError(
            f"feature networks differ: {stats.feature_net!r} vs reference {ref.feature_net!r}"
        )
    return {
        "fid": frechet_distance(stats.mu, stats.sigma, ref.mu, ref.sigma),
        "n": stats.n,
        "n_ref": ref.n,
        "feature_net": stats.feature_net,
        "substitute": not stats.feature_net.startswith(INCEPTION_LABEL),
        "resize": RESIZE_NOTE,
    }


def fid_from_images(
    images: ImageBatches,
    ref_stats: FeatureStats | str | Path,
    extractor: FeatureExtractor,
    batch_size: int = 64,
) -> dict:
    """FID of ``images`` (uint8 N x H x W x 3, or batches of them) against reference statistics.

    Returns ``{"fid", "n", "n_ref", "feature_net", "substitute", "resize"}``.
    """
    ref = ref_stats if isinstance(ref_stats, FeatureStats) else load_statistics(ref_stats)
    return fid_from_stats(feature_statistics(images, extractor, batch_size), ref)


# --------------------------------------------------------------------------- substitute net


class SmallClassifier(nn.Module):
    """A tiny conv net for small RGB images in [-1, 1]; ``features`` is the 128-d penultimate layer.

    conv3x3(32)-ReLU-conv3x3(32)-ReLU-pool2 -> conv3x3(64)-ReLU-pool2 -> conv3x3(128)-ReLU
    -> global average pool (128) -> linear(n_classes). ``input_size`` (32 by default) is
    the side clean-fid's resize brings images to when it serves as a substitute extractor.
    """

    def __init__(self, n_classes: int = 10, input_size: int = 32, width: int = 32):
        super().__init__()
        self.n_classes = n_classes
        self.input_size = input_size
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, w, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * w, n_classes)
        self.width = width

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, 4 * width) penultimate features."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def config(self) -> dict:
        return {"n_classes": self.n_classes, "input_size": self.input_size, "width": self.width}


def _to_unit_range(images: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float (N, 3, H, W) in [-1, 1] (x / 127.5 - 1)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    epochs: int = 5,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 2e-3,
    device: str | torch.device = "cpu",
) -> SmallClassifier:
    """Train :class:`SmallClassifier` with Adam on the cross-entropy loss.

    ``images``: uint8 N x H x W x 3 (square); ``labels``: int N. Deterministic for a seed and
    leaves the global RNG untouched. Returns the network in eval mode on ``device``.
    """
    images = np.asarray(images)
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    n_classes = int(labels_t.max()) + 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = SmallClassifier(n_classes=n_classes, input_size=images.shape[1]).to(device)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    x_all = _to_unit_range(images)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(x_all), generator=gen)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            logits = net(x_all[idx].to(device))
            loss = nn.functional.cross_entropy(logits, labels_t[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def classifier_accuracy(
    net: SmallClassifier, images: np.ndarray, labels: np.ndarray, batch_size: int = 512
) -> float:
    """Top-1 accuracy on uint8 N x H x W x 3 images (a sanity number to record with the net)."""
    device = next(net.parameters()).device
    correct = 0
    for start in range(0, len(images), batch_size):
        x = _to_unit_range(np.asarray(images[start : start + batch_size])).to(device)
        pred = net(x).argmax(1).cpu().numpy()
        correct += int((pred == np.asarray(labels[start : start + batch_size])).sum())
    return correct / max(len(images), 1)


def save_classifier(net: SmallClassifier, path: str | Path) -> None:
    """Write config + state dict atomically (readable with ``weights_only=True``)."""
    from vqshrink.io import save_torch

    save_torch({"config": net.config(), "state_dict": net.state_dict()}, path)


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> SmallClassifier:
    from vqshrink.io import load_torch

    blob = load_torch(path, map_location=device)
    net = SmallClassifier(**blob["config"])
    net.load_state_dict(blob["state_dict"])
    return net.to(device).eval()
