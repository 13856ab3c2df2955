"""Pretrained weights the metrics need: where each file comes from and where it must lie.

One table, :data:`WEIGHTS`, lists every file:

* FID: clean-fid's TorchScript Inception-v3 (``inception-2015-12-05.pt``, the StyleGAN2-ADA
  port of the TF 2015-12-05 graph). clean-fid itself always looks for it in ``/tmp`` on
  Linux (``./`` on Windows) and downloads it there when absent, with no way to change the
  directory through ``compute_fid``. We never let clean-fid download: we build its
  ``InceptionV3W(path=<dir>, download=False)`` ourselves from :func:`checkpoint_dir` and
  hand it to clean-fid as a custom feature extractor (see :mod:`vqshrink.metrics.fid`).
* LPIPS backbones: torchvision's ImageNet AlexNet / VGG-16 / SqueezeNet-1.1. The lpips
  package builds them with ``tv.alexnet(pretrained=True)`` etc., which loads through
  ``torch.hub.load_state_dict_from_url`` from ``torch.hub.get_dir()/checkpoints/<basename>``
  (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch/hub/checkpoints``) and
  downloads when the file is absent. An existing file is used as is.
* LPIPS linear heads (the 1x1 "lin" layers calibrated on human judgements): these ship
  inside the lpips wheel (``lpips/weights/v0.1/<net>.pth``); nothing to download.

All downloadable files live in ONE directory, :func:`checkpoint_dir`:
``<cache_dir>/hub/checkpoints`` when a cache dir is configured (it plays the role of
``$TORCH_HOME``), else torch's own ``torch.hub.get_dir()/checkpoints``.

Offline use: :func:`check_weights` is meant to run before any training starts; it raises
:class:`MissingWeightsError` naming every absent file, its URL and the exact path to put
it at. :func:`fetch_weights` downloads them (the workflow calls it from a local rule on a
machine with internet; ``python -m vqshrink.weights fetch ...`` does the same by hand).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import importlib.util
import os
import sys
import urllib.error
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from vqshrink.errors import PlainError
from vqshrink.io import atomic_path

if TYPE_CHECKING:  # annotations only: torch is imported where it is used
    import torch

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = (
    "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/" + INCEPTION_FILE
)

# torchvision 0.29 IMAGENET1K_V1 weights, i.e. what ``pretrained=True`` maps to.
LPIPS_BACKBONE_URLS = {
    "alex": "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    "vgg": "https://download.pytorch.org/models/vgg16-397923af.pth",
    "squeeze": "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",
}
LPIPS_NET_ALIASES = {"alex": "alex", "vgg": "vgg", "vgg16": "vgg", "squeeze": "squeeze"}
LPIPS_LIN_URL = (
    "https://github.com/richzhang/PerceptualSimilarity/raw/master/lpips/weights/"
    "v{version}/{net}.pth"
)


@dataclass(frozen=True)
class WeightFile:
    """One pretrained file: its name, where to get it, and the exact path a loader reads."""

    name: str
    url: str
    path: Path
    used_by: str
    bundled: bool = False  # ships inside an installed wheel: reinstall, never download

    def exists(self) -> bool:
        return self.path.is_file() and self.path.stat().st_size > 0


class MissingWeightsError(PlainError):
    """Pretrained weights are absent; ``.missing`` lists them, the message says how to fetch."""

    def __init__(self, missing: Sequence[WeightFile], cache_dir: str | Path | None = None):
        self.missing = list(missing)
        super().__init__(_missing_message(self.missing, cache_dir))


class WeightsDownloadError(MissingWeightsError):
    """A download failed (no internet, host unreachable): the message names the URL, the
    reason, and where every still-missing file goes when fetched by hand."""

    def __init__(self, failed: WeightFile, reason: BaseException,
                 missing: Sequence[WeightFile], cache_dir: str | Path | None = None):
        super().__init__(missing, cache_dir)
        self.failed = failed
        self.args = (
            f"could not download {failed.url}: {reason}\n"
            "Fetching pretrained weights needs internet access, and this machine could not "
            "reach that address. Run `snakemake -c1 fetch_weights` on a machine with internet "
            "that sees the same weight directory (e.g. a login node), or fetch the files by "
            "hand elsewhere and put each at its path below. Nothing was saved.\n"
            + self.args[0],
        )


def checkpoint_dir(cache_dir: str | Path | None = None) -> Path:
    """The directory every downloadable weight file lives in.

    ``<cache_dir>/hub/checkpoints`` when ``cache_dir`` is given (it acts as ``$TORCH_HOME``),
    otherwise ``torch.hub.get_dir()/checkpoints`` (honours ``$TORCH_HOME``,
    ``$XDG_CACHE_HOME`` and ``torch.hub.set_dir``).
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser().resolve() / "hub" / "checkpoints"
    return hub_dir().expanduser().resolve() / "checkpoints"


def hub_dir() -> Path:
    """``torch.hub.get_dir()``, without loading torch when nothing loaded it (the workflow
    checks for weight files at parse time): unless ``torch.hub.set_dir`` was called, which
    needs torch, it is ``$TORCH_HOME/hub``, else ``$XDG_CACHE_HOME/torch/hub``, else
    ``~/.cache/torch/hub``."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return Path(torch.hub.get_dir())
    cache = os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    return Path(os.getenv("TORCH_HOME", os.path.join(cache, "torch"))).expanduser() / "hub"


def canonical_lpips_net(net: str) -> str:
    """``alex`` | ``vgg`` (alias ``vgg16``) | ``squeeze``; anything else raises ``ValueError``."""
    try:
        return LPIPS_NET_ALIASES[net]
    except KeyError:
        raise ValueError(f"unknown LPIPS net {net!r}; choose one of alex, vgg, squeeze") from None


def _lpips_package_dir() -> Path | None:
    spec = importlib.util.find_spec("lpips")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def required_weights(
    fid: bool,
    lpips_net: str | None,
    cache_dir: str | Path | None = None,
    lpips_version: str = "0.1",
) -> list[WeightFile]:
    """The files a metrics run needs.

    ``fid``: the real (Inception) FID is used; pass False when a substitute feature network
    is configured. ``lpips_net``: the LPIPS backbone with ImageNet weights (``alex``, ``vgg``,
    ``squeeze``), or None when LPIPS is off or runs with a randomly initialised backbone.
    """
    ckpt = checkpoint_dir(cache_dir)
    out: list[WeightFile] = []
    if fid:
        out.append(
            WeightFile(
                name=INCEPTION_FILE,
                url=INCEPTION_URL,
                path=ckpt / INCEPTION_FILE,
                used_by="FID: clean-fid Inception-v3 (TorchScript)",
            )
        )
    if lpips_net is not None:
        net = canonical_lpips_net(lpips_net)
        url = LPIPS_BACKBONE_URLS[net]
        out.append(
            WeightFile(
                name=os.path.basename(url),
                url=url,
                path=ckpt / os.path.basename(url),
                used_by=f"LPIPS backbone: torchvision {net} (ImageNet)",
            )
        )
        pkg = _lpips_package_dir()
        lin_path = (
            (pkg if pkg is not None else Path("<lpips not installed>"))
            / "weights"
            / (f"v{lpips_version}/{net}.pth")
        )
        out.append(
            WeightFile(
                name=f"lpips v{lpips_version} {net}.pth",
                url=LPIPS_LIN_URL.format(version=lpips_version, net=net),
                path=lin_path,
                used_by="LPIPS linear heads (ship in the lpips wheel: pip install lpips==0.1.4)",
                bundled=True,
            )
        )
    return out


def missing_weights(
    fid: bool,
    lpips_net: str | None,
    cache_dir: str | Path | None = None,
    lpips_version: str = "0.1",
) -> list[WeightFile]:
    """The subset of :func:`required_weights` that is not on disk."""
    return [w for w in required_weights(fid, lpips_net, cache_dir, lpips_version) if not w.exists()]


def check_weights(
    fid: bool,
    lpips_net: str | None,
    cache_dir: str | Path | None = None,
    lpips_version: str = "0.1",
) -> list[WeightFile]:
    """Return the required files, or raise :class:`MissingWeightsError` if any is absent."""
    missing = missing_weights(fid, lpips_net, cache_dir, lpips_version)
    if missing:
        raise MissingWeightsError(missing, cache_dir)
    return required_weights(fid, lpips_net, cache_dir, lpips_version)


def _missing_message(missing: Sequence[WeightFile], cache_dir: str | Path | None) -> str:
    lines = ["Pretrained weights for the metrics are missing (runs never download them):"]
    for w in missing:
        lines.append(f"  - {w.name}  [{w.used_by}]")
        lines.append(f"      URL:         {w.url}")
        lines.append(f"      put it here: {w.path}")
    downloadable = [w for w in missing if not w.bundled]
    if downloadable:
        cmd = "python -m vqshrink.weights fetch"
        if cache_dir is not None:
            cmd += f" --cache-dir {Path(cache_dir).expanduser()}"
        if any(w.name == INCEPTION_FILE for w in downloadable):
            cmd += " --fid"
        for net, url in LPIPS_BACKBONE_URLS.items():
            if any(w.url == url for w in downloadable):
                cmd += f" --lpips {net}"
        lines += [
            "How to get them:",
            "  * on a machine with internet (e.g. a login node, same cache directory), run the "
            f"workflow's weight-fetch rule, or: {cmd}",
            "  * or download by hand, e.g.:",
        ]
        lines += [f"      curl -L --create-dirs -o {w.path} {w.url}" for w in downloadable]
    if any(w.bundled for w in missing):
        lines.append(
            "  * LPIPS linear heads ship with the lpips wheel: "
            "pip install --force-reinstall lpips==0.1.4"
        )
    lines.append(
        "Or select substitute (labelled, not paper-comparable) feature networks in the config."
    )
    return "\n".join(lines)


# What a failed connection raises (urllib's URLError covers DNS and refused connections).
NETWORK_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError,
                  TimeoutError)


def _download(url: str, dst: Path) -> None:
    """Fetch ``url`` into ``dst`` (a temporary file the caller moves into place)."""
    import torch

    torch.hub.download_url_to_file(url, str(dst), progress=True)


def _hash_prefix(name: str) -> str | None:
    """torchvision names files ``<stem>-<first 8+ hex of sha256>.pth``; return that prefix."""
    stem = name.rsplit(".", 1)[0]
    tail = stem.rsplit("-", 1)[-1]
    if len(tail) >= 8 and all(c in "0123456789abcdef" for c in tail):
        return tail
    return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_weights(
    cache_dir: str | Path | None = None,
    fid: bool = True,
    lpips_net: str | None = "alex",
    lpips_version: str = "0.1",
) -> list[Path]:
    """Download every missing downloadable file into :func:`checkpoint_dir` atomically.

    Each file is written to a temporary name beside its target and renamed into place only
    when complete (a killed download leaves nothing behind). torchvision files are checked
    against the sha256 prefix in their names. Returns the paths of all required downloadable
    files. Bundled files (LPIPS heads) are only checked, never downloaded.
    """
    for w in missing_weights(fid, lpips_net, cache_dir, lpips_version):
        if w.bundled:
            raise MissingWeightsError([w], cache_dir)
        print(f"downloading {w.url} -> {w.path}", file=sys.stderr)
        try:
            with atomic_path(w.path) as tmp:
                _download(w.url, tmp)
                prefix = _hash_prefix(w.name)
                if prefix is not None and not _sha256(tmp).startswith(prefix):
                    raise RuntimeError(f"{w.url}: sha256 does not start with {prefix}; not saved")
        except NETWORK_ERRORS as err:
            still = missing_weights(fid, lpips_net, cache_dir, lpips_version)
            raise WeightsDownloadError(w, err, still, cache_dir) from None
    needed = check_weights(fid, lpips_net, cache_dir, lpips_version)
    return [w.path for w in needed if not w.bundled]


def load_inception(cache_dir: str | Path | None = None, device: str | torch.device = "cpu"):
    """clean-fid's ``InceptionV3W`` read from :func:`checkpoint_dir`, never downloading.

    Raises :class:`MissingWeightsError` when the file is absent. The module maps a float
    batch (B, 3, 299, 299) in [0, 255] to (B, 2048) pool features.
    """
    from cleanfid.inception_torchscript import InceptionV3W

    check_weights(fid=True, lpips_net=None, cache_dir=cache_dir)
    model = InceptionV3W(path=str(checkpoint_dir(cache_dir)), download=False, resize_inside=False)
    return model.to(device).eval()


@contextlib.contextmanager
def torch_hub_dir(cache_dir: str | Path | None) -> Iterator[None]:
    """Point ``torch.hub`` (so torchvision's weight loading) at ``<cache_dir>/hub`` meanwhile.

    Afterwards torch's own setting is back as it was: ``torch.hub._hub_dir`` (None until
    someone calls ``set_dir``, and then ``get_dir`` follows ``$TORCH_HOME``) is restored
    itself, since ``set_dir(get_dir())`` would pin today's directory for good.
    """
    if cache_dir is None:
        yield
        return
    import torch

    old = torch.hub._hub_dir
    torch.hub.set_dir(str(checkpoint_dir(cache_dir).parent))
    try:
        yield
    finally:
        torch.hub._hub_dir = old


def load_lpips(
    net: str = "alex",
    cache_dir: str | Path | None = None,
    pnet_rand: bool = False,
    version: str = "0.1",
    device: str | torch.device = "cpu",
):
    """``lpips.LPIPS`` with the paper's settings, loading backbone weights from the cache only.

    ``pnet_rand=True`` gives a randomly initialised backbone (offline substitute; label it).
    Raises :class:`MissingWeightsError` rather than letting torchvision try to download.
    """
    import lpips

    net = canonical_lpips_net(net)
    backbone = None if pnet_rand else net
    check_weights(fid=False, lpips_net=backbone, cache_dir=cache_dir, lpips_version=version)
    with torch_hub_dir(cache_dir):
        model = lpips.LPIPS(
            net=net, version=version, pretrained=True, pnet_rand=pnet_rand, verbose=False
        )
    return model.to(device).eval()


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m vqshrink.weights", description=__doc__.splitlines()[0]
    )
    parser.add_argument("action", choices=["check", "fetch", "list"])
    parser.add_argument("--cache-dir", default=None, help="acts as TORCH_HOME (default: torch's)")
    parser.add_argument("--fid", action="store_true", help="the clean-fid Inception file")
    parser.add_argument("--lpips", default=None, metavar="NET", help="alex | vgg | squeeze")
    args = parser.parse_args(argv)
    if args.action == "list":
        for w in required_weights(args.fid, args.lpips, args.cache_dir):
            state = "ok" if w.exists() else "MISSING"
            print(f"{state:8s} {w.path}  <- {w.url}")
        return 0
    try:
        if args.action == "fetch":
            paths = fetch_weights(args.cache_dir, fid=args.fid, lpips_net=args.lpips)
        else:
            paths = [w.path for w in check_weights(args.fid, args.lpips, args.cache_dir)]
    except MissingWeightsError as err:
        print(err, file=sys.stderr)
        return 1
    for p in paths:
        print(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
