"""FID with clean-fid's Inception-v3 architecture and random seeded weights
(``metrics.fid_feature_net: inception_random``): the network is clean-fid's FID Inception
(checked by loading its state dict strictly into ``cleanfid.inception_pytorch.InceptionV3``),
deterministic, needs no weight file, and its label reaches every row.

Each FID here costs one 2048 x 2048 matrix square root (clean-fid's ``frechet_distance``),
about 15-20 s on one core; the tests use one each.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vqshrink import weights
from vqshrink.data.prepared import PreparedImages
from vqshrink.io import load_json
from vqshrink.metrics import fid
from vqshrink.metrics.inception_random import (
    FEATURE_DIM,
    RANDOM_INCEPTION_LABEL,
    RandomFIDInception,
)
from vqshrink.models import registry
from vqshrink.stages import metric_nets
from vqshrink.stages import tokenizer_eval as tok_eval
from vqshrink.stages import tokenizer_report as rep

from image_fixtures import one_thread, write_digits  # noqa: F401
from repo_helpers import ROOT

pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning"),
]

FID_RANDOM = {"feature_net": "inception_random", "batch_size": 64, "dataset": "digits"}


@pytest.fixture(scope="module")
def net() -> RandomFIDInception:
    return RandomFIDInception()


def inputs(n: int, seed: int) -> torch.Tensor:
    """Float batches as clean-fid hands them to the network: (n, 3, 299, 299) in [0, 255]."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 8, 8, generator=g)
    x = torch.nn.functional.interpolate(low, size=(299, 299), mode="bilinear")
    return x.clamp(0, 1) * 255


def test_state_dict_loads_strictly_into_cleanfid_fid_inception(net, tmp_path):
    """clean-fid's own InceptionV3 (use_fid_inception=True), given our state dict as the file
    its download would fetch, loads it strictly and computes the same 2048-d features."""
    from cleanfid import inception_pytorch as ip

    ckpt = weights.checkpoint_dir(tmp_path)
    ckpt.mkdir(parents=True)
    torch.save(net.inception.state_dict(), ckpt / Path(ip.FID_WEIGHTS_URL).name)
    with weights.torch_hub_dir(tmp_path):  # the file is there: no download
        theirs = ip.InceptionV3(output_blocks=[3], resize_input=False).eval()
    shapes = {k: tuple(v.shape) for k, v in net.inception.state_dict().items()}
    assert len(shapes) > 400 and shapes["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)
    assert shapes["fc.weight"] == (1008, 2048)  # pytorch-fid's 1008-class head

    x = inputs(2, seed=0)
    ours = net(x)
    # InceptionV3 expects [0, 1] and maps it to 2x - 1; clean mode maps [0, 255] to (x-128)/128
    ref = theirs(((x - 128) / 128 + 1) / 2)[0].flatten(1)
    assert ours.shape == (2, FEATURE_DIM)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_same_seed_same_network_features_keep_their_scale(net):
    before = torch.get_rng_state()
    again, other = RandomFIDInception(), RandomFIDInception(seed=1)
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG is untouched
    for (name, a), b in zip(net.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name
    x = inputs(3, seed=1)
    f = net(x)
    assert torch.equal(f, again(x)) and not torch.allclose(f, other(x))
    # He-initialised convolutions: pool features neither vanish nor explode
    assert torch.isfinite(f).all() and 0.05 < f.std().item() < 20
    assert (f > 0).float().mean() > 0.5  # few dead features
    with pytest.raises(ValueError, match="299"):
        net(x[:, :, :128, :128])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    """8 digits per split at 16 px (clean-fid upsamples them to 299)."""
    return write_digits(tmp_path_factory.mktemp("data") / "digits", 8, 8, 8)


@pytest.fixture(scope="module")
def test_ref(tiny, tmp_path_factory) -> str:
    """The DAG's fid_reference stage with the random Inception (no weights_dir at all)."""
    path = tmp_path_factory.mktemp("fid") / "test-inception_random.npz"
    metric_nets.fid_reference(data=tiny, stats=str(path), preset="test",
                              settings={"split": "test", "fid": FID_RANDOM, "device": "cpu"})
    return str(path)


def test_fid_of_a_set_with_itself_is_zero(tiny, test_ref):
    ref = fid.load_statistics(test_ref)
    assert ref.n == 8 and ref.mu.shape == (FEATURE_DIM,)
    assert ref.feature_net == RANDOM_INCEPTION_LABEL
    ex = metric_nets.make_extractor(FID_RANDOM, classifier=None, weights_dir=None, device="cpu")
    same = fid.fid_from_images(np.asarray(PreparedImages(tiny, "test").images), ref, ex)
    assert abs(same["fid"]) < 1e-4 * np.trace(ref.sigma)
    assert same["feature_net"] == RANDOM_INCEPTION_LABEL and same["substitute"]


def test_random_inception_label_reaches_every_tokenizer_table_row(tiny, test_ref, tmp_path):
    """tokenizer evaluation -> metrics.json -> table row: r-FID > 0 (reconstructions of an
    untrained tokenizer are another image set), labelled as random weights."""
    from test_tokenizer_stages import model_cfg

    cfg = model_cfg("vq", k=32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        registry.save_model(registry.build_model(cfg), cfg, str(tmp_path / "model.pt"))
    settings = {"split": "test", "fid": FID_RANDOM, "lpips": None, "batch_size": 64,
                "device": "cpu"}
    tok_eval.evaluate(data=tiny, model=str(tmp_path / "model.pt"), metrics=str(tmp_path / "m.json"),
                      reconstructions=str(tmp_path / "rec.png"), settings=settings, preset="smoke",
                      ref=test_ref)
    m = load_json(tmp_path / "m.json")["metrics"]
    ref = fid.load_statistics(test_ref)
    assert m["rfid"] > 1e-2 * np.trace(ref.sigma)
    assert m["fid_feature_net"] == RANDOM_INCEPTION_LABEL and m["fid_substitute"]

    (tmp_path / "run.json").write_text("{}")
    spec = {"variant": "maskgit", "schedule": "baseline", "gan": False,
            "paper_model": "MaskGIT", "paper_variant": "VQ"}
    rep.table(metrics=[str(tmp_path / "m.json")], records=[str(tmp_path / "run.json")],
              tokens=[str(tmp_path / "tokens/meta.json")],
              paper=str(ROOT / "workflow/resources/paper_tables.csv"),
              table=str(tmp_path / "table3.csv"), preset="smoke",
              settings={"table": "3", "paper_dataset": "imagenet100", "dataset": "digits",
                        "rows": [spec]})
    row = pd.read_csv(tmp_path / "table3.csv").iloc[0]
    assert row["fid_feature_net"] == RANDOM_INCEPTION_LABEL
    assert "RANDOM weights" in row["fid_feature_net"] and "not comparable" in row["fid_feature_net"]
    assert row["rfid"] == pytest.approx(m["rfid"], rel=1e-5)


@pytest.mark.workflow
def test_random_inception_plans_without_any_weight_file(tmp_path):
    """With fid_feature_net: inception_random and random LPIPS trunks, the paper DAG plans
    with an empty weight cache: nothing asks for inception-2015-12-05.pt."""
    import yaml

    from repo_helpers import copy_repo, fake_sources, planned_jobs, snakemake

    (tmp_path / "repo").mkdir()
    repo = copy_repo(tmp_path / "repo")
    overlay = yaml.safe_load(fake_sources(tmp_path / "src", weights=False).read_text())
    overlay["metrics"].update(fid_feature_net="inception_random", lpips_pretrained=False)
    overlay["tokenizers"] = {"loss": {"lpips_pretrained": False}}
    (tmp_path / "user.yaml").write_text(yaml.safe_dump(overlay))
    assert not any((tmp_path / "src/weights").rglob("*.p*"))
    proc = snakemake("-n", "results/tables/table4.csv", "--configfile", "config.yaml",
                     str(tmp_path / "user.yaml"), cwd=repo)
    assert planned_jobs(proc.stdout)["fid_reference"] >= 1
    assert "test-inception_random.npz" in proc.stdout


def test_torch_hub_dir_leaves_torch_home_in_charge_afterwards(tmp_path, monkeypatch):
    """After ``weights.torch_hub_dir`` (used above and by every LPIPS / loss build), torch's
    hub directory follows $TORCH_HOME again, as before: no directory pinned for good."""
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # torch's initial state, restored after
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "a"))
    with weights.torch_hub_dir(tmp_path / "cache"):
        assert Path(torch.hub.get_dir()) == weights.checkpoint_dir(tmp_path / "cache").parent
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "b"))
    assert Path(torch.hub.get_dir()) == tmp_path / "b" / "hub"
