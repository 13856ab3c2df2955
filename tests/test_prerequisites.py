"""Everything a paper run lacks from the user (dataset paths, pretrained metric weights) is
named in one message before any job, without a traceback; and fetching weights without
internet says which URL failed and where to put the file by hand."""

from __future__ import annotations

import socket

import pytest
import yaml

from repo_helpers import copy_repo, snakemake
from vqshrink import weights


@pytest.fixture
def repo(tmp_path_factory):
    return copy_repo(tmp_path_factory.mktemp("repo"))


def files_under(path):
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


def config_file(tmp_path, overlay):
    path = tmp_path / "user.yaml"
    path.write_text(yaml.safe_dump(overlay))
    return ["--configfile", "config.yaml", str(path)]


@pytest.mark.workflow
def test_paper_run_names_every_missing_dataset_key_and_weight_at_once(repo, tmp_path):
    empty = tmp_path / "weights"
    empty.mkdir()
    user = config_file(tmp_path, {"metrics": {"weights_dir": str(empty)}})
    proc = snakemake("-n", "results/tables/table4.csv", *user, check=False, cwd=repo)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "InputFunctionException" not in out and "Traceback" not in out
    # every dataset key of the paper's image experiments, each once, with what to put there
    for key, what in [("datasets.imagenet100.root", "ILSVRC-2012 train directory"),
                      ("datasets.odir.image_dir", "ODIR-5K image directory"),
                      ("datasets.odir.annotation", "annotation file"),
                      ("datasets.cifar10.root", "cifar-10-batches-py")]:
        assert out.count(f"config key {key} is null") == 1, key
        assert what in out
    assert "results/tables/table4.csv" in out and "results/figures/fig4.png" in out
    # every weight file: name, URL, the exact target path, and the one fetch command
    ckpt = empty / "hub" / "checkpoints"
    for name, url in [("inception-2015-12-05.pt", weights.INCEPTION_URL),
                      ("vgg16-397923af.pth", weights.LPIPS_BACKBONE_URLS["vgg"])]:
        assert url in out and str(ckpt / name) in out
    assert "snakemake -c1 fetch_weights" in out
    assert files_under(repo / "results") == []


@pytest.fixture
def refused_port():
    """A loopback port bound but never listening: every connection to it is refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    yield sock.getsockname()[1]
    sock.close()


def offline_env(monkeypatch, port):
    """Route every https download through a proxy nobody answers (the sandbox has no
    internet either, but this fails the same way everywhere, fast)."""
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{port}")


def test_fetch_without_internet_names_url_and_where_to_put_it(tmp_path, monkeypatch,
                                                              refused_port):
    offline_env(monkeypatch, refused_port)
    with pytest.raises(weights.WeightsDownloadError) as info:
        weights.fetch_weights(cache_dir=tmp_path, fid=True, lpips_net="vgg")
    msg = str(info.value)
    ckpt = tmp_path / "hub" / "checkpoints"
    assert f"could not download {weights.INCEPTION_URL}" in msg
    assert "internet" in msg
    # where each missing file goes by hand, the one that failed and the rest
    for name, url in [("inception-2015-12-05.pt", weights.INCEPTION_URL),
                      ("vgg16-397923af.pth", weights.LPIPS_BACKBONE_URLS["vgg"])]:
        assert f"curl -L --create-dirs -o {ckpt / name} {url}" in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__
    assert files_under(tmp_path) == []  # no partial file left behind


@pytest.mark.workflow
def test_fetch_weights_rule_without_internet_fails_in_a_few_lines(repo, tmp_path,
                                                                  monkeypatch, refused_port):
    offline_env(monkeypatch, refused_port)
    user = config_file(tmp_path, {"metrics": {"weights_dir": str(tmp_path / "w")}})
    proc = snakemake("-c1", "fetch_weights", *user, check=False, cwd=repo)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "Traceback" not in out and "URLError" not in out
    assert f"could not download {weights.INCEPTION_URL}" in out and "internet" in out
    target = tmp_path / "w" / "hub" / "checkpoints" / "inception-2015-12-05.pt"
    assert f"put it here: {target}" in out
    log = (repo / "results/logs/fetch_weights/fetch_weights.log").read_text()
    assert f"put it here: {target}" in log and "Traceback" not in log
    assert not (repo / "results" / "weights" / "fetched.json").exists()
    assert files_under(tmp_path / "w") == []
