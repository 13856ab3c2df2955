"""Diversity of a set of generated images: mean pairwise LPIPS and mean pairwise pixel distance.

Both are means over the N(N-1)/2 unordered pairs i < j of distinct images. Neither ever
loops over pairs in Python.

LPIPS (lpips 0.1.4, version 0.1). With x scaled by the ScalingLayer, a_l(x) the layer-l
backbone activation divided by its channel norm at each position (``normalize_tensor``),
w_l the 1x1 "lin" weights (non-negative as shipped) and k_l the spatial weights
(1 / (H_l W_l) for the spatial average; the adjoint of the bilinear upsampling, averaged,
when ``spatial=True``)::

    d(i, j) = sum_l sum_{c,p} u_{l,c,p} (a_{l,icp} - a_{l,jcp})^2,   u_{l,c,p} = w_{l,c} k_{l,p}

which is what ``model(x_i, x_j)`` returns. Two consequences:

* mean over pairs (no pair ever formed): for every coordinate,
  sum_{i<j} (a_i - a_j)^2 = N sum_i (a_i - abar)^2, hence::

      mean_{i<j} d(i, j) = 2 / (N - 1) * sum_{l,c,p} u_{l,c,p} sum_i (a_{l,icp} - abar_{l,cp})^2,

  computed from one feature pass per image with streamed float64 sums (a shift by the
  first batch's mean keeps the subtraction well conditioned): O(N D) time, O(D) memory.
* all pairs at once: d(i, j) = q_i + q_j - 2 G_ij with G = A diag(u) A^T and q_i = G_ii
  (one matrix product per block of rows and columns; features centred over the images
  first, which leaves differences unchanged and reduces cancellation).

Pixel distance between images x_i, x_j (flattened, D = C H W values, scaled by ``scale``):

* ``"l2"``: Euclidean norm ||x_i - x_j||_2 (sqrt per pair of a blockwise Gram form);
* ``"rms"``: ||x_i - x_j||_2 / sqrt(D);
* ``"mse"``: ||x_i - x_j||_2^2 / D (closed form as above: 2 / (N - 1) * sum_d Var_d / D);
* ``"l1"``: ||x_i - x_j||_1 / D, the mean absolute difference (chunked ``torch.cdist(p=1)``;
  no inner-product form exists, so this one costs O(N^2 D) elementwise work).

Which pixel distance the paper reports ("Pixel Dist." 70.7-80.8 on ImageNet-100 at 128 x
128, Table 4; 45-50 on ODIR) is not stated. On natural colour photographs (scikit-image's
astronaut, chelsea, coffee, rocket, motorcycle; scikit-learn's china, flower) centre-cropped
or randomly crop-resized to 128 x 128, the candidates come out as: Euclidean in [0, 1]
80-84, mean |diff| in [0, 255] 75-80, RMS in [0, 255] 92-97, Euclidean in [-1, 1] 160-168,
MSE in [0, 1] 0.14-0.15. Only the first two fit; the default is the Euclidean distance
of images in [0, 1] (``norm="l2"``, ``scale=1/255``) because the paper's other distance
("Euc.", the average pairwise Euclidean codebook distance) is of that kind and VAR /
MaskGIT samplers return [0, 1] tensors. ``norm="l1", scale=1.0`` gives the other plausible reading.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch import nn

Images = np.ndarray | torch.Tensor
LpipsInput = Images | Iterable[Images]

PIXEL_NORMS = ("l2", "rms", "mse", "l1")
DEFAULT_PIXEL_NORM = "l2"
DEFAULT_PIXEL_SCALE = 1.0 / 255.0


# --------------------------------------------------------------------------- inputs


def _to_lpips_range(batch: Images) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float (N, 3, H, W) in [-1, 1] as ``lpips.im2tensor`` (x / 127.5 - 1);
    float (N, 3, H, W) is taken to be in [-1, 1] already."""
    x = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(batch))
    if x.ndim == 3:
        x = x[None]
    if x.dtype == torch.uint8:
        if x.shape[-1] != 3:
            raise ValueError(f"uint8 images must be N x H x W x 3, got {tuple(x.shape)}")
        return x.permute(0, 3, 1, 2).contiguous().float() / 127.5 - 1.0
    if x.shape[1] != 3:
        raise ValueError(f"float images must be N x 3 x H x W in [-1, 1], got {tuple(x.shape)}")
    return x.float()


def _lpips_batches(images: LpipsInput, batch_size: int) -> Iterator[torch.Tensor]:
    if isinstance(images, (np.ndarray, torch.Tensor)):
        for start in range(0, len(images), batch_size):
            yield _to_lpips_range(images[start : start + batch_size])
    else:
        for batch in images:
            yield _to_lpips_range(batch)


def _model_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


# --------------------------------------------------------------------------- LPIPS features


@torch.no_grad()
def lpips_features(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Per layer l, the channel-normalised activations a_l (B, C_l, H_l, W_l) of x in [-1, 1].

    Version 0.1 applies the ScalingLayer ((x - shift) / scale) first, version 0.0 does not,
    exactly as ``lpips.LPIPS.forward``.
    """
    import lpips

    if model.version == "0.1":
        x = model.scaling_layer(x)
    outs = model.net.forward(x)
    return [lpips.normalize_tensor(outs[k]) for k in range(model.L)]


def _lin_weight(model: nn.Module, layer: int, channels: int) -> torch.Tensor:
    """w_{l,c}: the 1x1 conv weight of lin layer l, or ones when ``lpips=False``."""
    if not model.lpips:
        return torch.ones(channels)
    conv = next(m for m in model.lins[layer].modules() if isinstance(m, nn.Conv2d))
    return conv.weight.detach().reshape(-1).cpu()


def _spatial_weight(
    model: nn.Module, hw: tuple[int, int], image_hw: tuple[int, int]
) -> torch.Tensor:
    """k_{l,p}: the weight of feature position p in the scalar the model reports.

    ``spatial=False``: the plain average, 1 / (H_l W_l). ``spatial=True``: the model returns a
    bilinearly upsampled map; its spatial mean is linear in the layer map, and k is the
    gradient of that mean (the upsampling's adjoint applied to a constant).
    """
    if not model.spatial:
        return torch.full(hw, 1.0 / (hw[0] * hw[1]), dtype=torch.float64)
    import lpips

    with torch.enable_grad():
        v = torch.zeros(1, 1, *hw, dtype=torch.float64, requires_grad=True)
        lpips.upsample(v, out_HW=image_hw).mean().backward()
    return v.grad[0, 0].detach()


def lpips_layer_weights(
    model: nn.Module, feats: list[torch.Tensor], image_hw: tuple[int, int]
) -> list[torch.Tensor]:
    """u_l = w_{l,c} k_{l,p} as float64 (C_l, H_l, W_l) tensors for the given feature shapes."""
    out = []
    for layer, f in enumerate(feats):
        c, h, w = f.shape[1:]
        wc = _lin_weight(model, layer, c).double()
        kp = _spatial_weight(model, (h, w), image_hw)
        out.append(wc[:, None, None] * kp[None])
    return out


# --------------------------------------------------------------------------- LPIPS diversity


@torch.no_grad()
def mean_pairwise_lpips(images: LpipsInput, lpips_model: nn.Module, batch_size: int = 64) -> float:
    """Exact mean of ``lpips_model(x_i, x_j)`` over all pairs i < j, from one pass per image.

    ``images``: uint8 N x H x W x 3, or float N x 3 x H x W in [-1, 1], or an iterable of such
    batches (streamed; nothing but O(D) sums is kept). Uses
    mean = 2 / (N - 1) * sum_{l,c,p} u_{l,c,p} sum_i (a_{l,icp} - abar_{l,cp})^2 (module doc).
    """
    device = _model_device(lpips_model)
    n = 0
    weights = shifts = s1 = s2 = None
    for x in _lpips_batches(images, batch_size):
        maps = lpips_features(lpips_model, x.to(device))
        feats = [f.flatten(1) for f in maps]
        if weights is None:
            u = lpips_layer_weights(lpips_model, maps, tuple(x.shape[2:]))
            weights = [w.flatten().to(device) for w in u]
            shifts = [f.mean(0) for f in feats]  # any fixed vector near the mean will do
            s1 = [torch.zeros(f.shape[1], dtype=torch.float64, device=device) for f in feats]
            s2 = [torch.zeros_like(t) for t in s1]
        ones = torch.ones(1, len(x), dtype=feats[0].dtype, device=device)
        for k, f in enumerate(feats):
            # column sums of the shifted batch (as a GEMV: a dim-0 reduction is slow on CPU),
            # accumulated across batches in float64
            d = f - shifts[k]
            s1[k] += (ones @ d)[0].double()
            s2[k] += (ones @ d.square())[0].double()
        n += len(x)
    if n < 2:
        raise ValueError(f"need at least 2 images, got {n}")
    # sum_i (a_i - abar)^2 = s2 - s1^2 / n per coordinate (shift-invariant)
    spread = sum((w * (b - a.square() / n)).sum() for w, a, b in zip(weights, s1, s2))
    return float(2.0 * spread / (n - 1))


@torch.no_grad()
def _lpips_feature_matrix(
    images: Images, model: nn.Module, batch_size: int, max_cache_bytes: int
) -> tuple[np.ndarray | torch.Tensor, torch.Tensor]:
    """All images' flattened features (N, D) float32 (in memory, or a temporary memmap when
    larger than ``max_cache_bytes``) and the matching weights u (D,) float64."""
    device = _model_device(model)
    n = len(images)
    store = weights = None
    for start in range(0, n, batch_size):
        x = _to_lpips_range(images[start : start + batch_size]).to(device)
        feats = lpips_features(model, x)
        flat = torch.cat([f.flatten(1) for f in feats], 1).float().cpu()
        if store is None:
            u = lpips_layer_weights(model, feats, tuple(x.shape[2:]))
            weights = torch.cat([w.flatten() for w in u])
            dim = flat.shape[1]
            if n * dim * 4 <= max_cache_bytes:
                store = torch.empty(n, dim)
            else:
                fd, tmp = tempfile.mkstemp(suffix=".lpips-features.f32")
                os.close(fd)
                store = np.memmap(tmp, dtype=np.float32, mode="w+", shape=(n, dim))
                os.unlink(tmp)  # the mapping keeps the data alive; nothing is left behind
        if isinstance(store, torch.Tensor):
            store[start : start + len(flat)] = flat
        else:
            store[start : start + len(flat)] = flat.numpy()
    return store, weights


def _rows(store: np.ndarray | torch.Tensor, i0: int, i1: int) -> torch.Tensor:
    block = store[i0:i1]
    return block if isinstance(block, torch.Tensor) else torch.from_numpy(np.asarray(block))


def pairwise_lpips_matrix(
    images: Images,
    lpips_model: nn.Module,
    block: int = 512,
    batch_size: int = 64,
    dtype: torch.dtype = torch.float32,
    max_cache_bytes: int = 4 << 30,
) -> np.ndarray:
    """The full N x N matrix of ``lpips_model(x_i, x_j)`` (zero diagonal), in float64.

    One feature pass per image; then per (row block I, column block J >= I):
    D_IJ = q_I + q_J - 2 (A_I * u) A_J^T with A the features centred over the images and
    q_i = sum_d u_d A_id^2. Work O(N^2 D), memory O(N D) for the features (spilled to a
    temporary memory map above ``max_cache_bytes``) plus O(block^2 + N^2) for the output.
    """
    device = _model_device(lpips_model)
    store, weights = _lpips_feature_matrix(images, lpips_model, batch_size, max_cache_bytes)
    n = store.shape[0]
    mean = torch.zeros(store.shape[1], dtype=torch.float64)
    for i0 in range(0, n, block):
        mean += _rows(store, i0, i0 + block).double().sum(0)
    mean /= n
    u = weights.to(device=device, dtype=dtype)
    mean_d = mean.to(device=device, dtype=dtype)
    out = np.zeros((n, n), dtype=np.float64)

    def centred(i0: int) -> torch.Tensor:
        return _rows(store, i0, i0 + block).to(device=device, dtype=dtype) - mean_d

    for i0 in range(0, n, block):
        a = centred(i0)
        au = a * u
        qa = (au * a).sum(1)
        for j0 in range(i0, n, block):
            b = a if j0 == i0 else centred(j0)
            qb = qa if j0 == i0 else (b * u * b).sum(1)
            d = qa[:, None] + qb[None, :] - 2.0 * (au @ b.T)
            d = d.double().cpu().numpy()
            out[i0 : i0 + len(a), j0 : j0 + len(b)] = d
            out[j0 : j0 + len(b), i0 : i0 + len(a)] = d.T
    np.fill_diagonal(out, 0.0)
    return out


# --------------------------------------------------------------------------- pixel diversity


def _pixel_rows(
    images: Images, i0: int, i1: int, scale: float, dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """Rows i0:i1 flattened to (b, D), in [0, 255] units times ``scale``.

    uint8 inputs are [0, 255]; float inputs are taken to be in [-1, 1] ((x + 1) * 127.5).
    """
    block = images[i0:i1]
    x = block if isinstance(block, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(block))
    x = x.reshape(len(x), -1).to(device=device, dtype=dtype)
    if not (block.dtype == np.uint8 or block.dtype == torch.uint8):
        x = (x + 1.0) * 127.5
    return x * scale


def mean_pairwise_pixel_distance(
    images: Images,
    norm: str = DEFAULT_PIXEL_NORM,
    scale: float = DEFAULT_PIXEL_SCALE,
    block: int = 1024,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device | None = None,
) -> float:
    """Mean over pairs i < j of the pixel distance between images i and j.

    ``images``: uint8 (N, ...) in [0, 255] (any per-image layout, e.g. N x H x W x 3) or
    float (N, ...) in [-1, 1]; values are brought to [0, 255] and multiplied by ``scale``.
    Default: Euclidean distance of images in [0, 1] (``norm="l2"``, ``scale=1/255``), the
    reading of the paper's "Pixel Dist." that matches its magnitudes (module docstring).

    ``norm``: ``"l2"`` ||.||_2; ``"rms"`` ||.||_2 / sqrt(D); ``"mse"`` ||.||_2^2 / D (exact
    closed form, O(N D)); ``"l1"`` ||.||_1 / D (chunked cdist, O(N^2 D)).
    """
    if norm not in PIXEL_NORMS:
        raise ValueError(f"norm must be one of {PIXEL_NORMS}, got {norm!r}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    n = len(images)
    if n < 2:
        raise ValueError(f"need at least 2 images, got {n}")
    dim = int(np.prod(images.shape[1:]))

    def rows(i0: int, dt: torch.dtype = dtype) -> torch.Tensor:
        return _pixel_rows(images, i0, i0 + block, scale, dt, dev)

    if norm == "mse":
        return _mean_pairwise_sq(rows, n, block) / dim
    if norm == "l1":
        total = _sum_over_pairs(rows, n, block, lambda a, b: torch.cdist(a, b, p=1.0))
        return total / (n * (n - 1) / 2) / dim
    mean = torch.zeros(dim, dtype=torch.float64, device=dev)
    for i0 in range(0, n, block):
        mean += rows(i0, torch.float64).sum(0)
    mean = (mean / n).to(dtype)

    def euclid(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = a - mean, b - mean
        sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
        return sq.clamp_min_(0.0).sqrt_()

    total = _sum_over_pairs(rows, n, block, euclid) / (n * (n - 1) / 2)
    return total / math.sqrt(dim) if norm == "rms" else total


def _mean_pairwise_sq(rows, n: int, block: int) -> float:
    """mean_{i<j} ||x_i - x_j||^2 = 2 / (N - 1) * sum_d sum_i (x_id - xbar_d)^2, in float64."""
    shift = s1 = None
    sq = 0.0
    for i0 in range(0, n, block):
        x = rows(i0, torch.float64)
        if shift is None:
            shift = x.mean(0)
            s1 = torch.zeros_like(shift)
        d = x - shift
        s1 += d.sum(0)
        sq += float(d.square().sum())
    return 2.0 * (sq - float(s1.square().sum()) / n) / (n - 1)


def _sum_over_pairs(rows, n: int, block: int, dist) -> float:
    """Sum of ``dist`` over pairs i < j, by blocks (I, J >= I); strict upper triangle on I = J."""
    total = 0.0
    for i0 in range(0, n, block):
        a = rows(i0)
        for j0 in range(i0, n, block):
            d = dist(a, a if j0 == i0 else rows(j0))
            if j0 == i0:
                d = torch.triu(d, diagonal=1)
            total += float(d.sum(dtype=torch.float64))
    return total
