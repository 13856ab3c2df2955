"""What every table row says about its run: the tokenizer's training loss (a RANDOM LPIPS
trunk named as such) from run.json through the checkpoint into tokenizer, Table 11 and
generator rows; and the paper's shapes: ``codebook_size`` and ``tokens_per_image`` in
tokenizer and generator rows, the generator's ``parameters``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from vqshrink.io import load_json
from vqshrink.models import generator_registry
from vqshrink.stages import generator as gen
from vqshrink.stages import generator_report as grep
from vqshrink.stages import metric_nets
from vqshrink.stages import tokenizer_eval as tok_eval
from vqshrink.stages import tokenizer_report as rep

from image_fixtures import one_thread, write_digits  # noqa: F401
from repo_helpers import ROOT
from test_generator_stages import LOSS, _tokenizer, train_settings

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

PAPER = str(ROOT / "workflow/resources/paper_tables.csv")
RANDOM_VGG = {"net": "vgg", "pretrained": False}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> dict:
    """A tiny tokenizer trained one epoch (two steps) with MSE + LPIPS-VGG on a RANDOM trunk,
    evaluated, with its token maps (the DAG's tokenizer stages)."""
    root = tmp_path_factory.mktemp("tok")
    data = write_digits(root / "digits", 64, 32, 16)
    tk = _tokenizer(data, root / "vq", "vq",
                    loss={**LOSS, "perceptual_weight": 1.0, "lpips_pretrained": False})
    d = root / "vq"
    (d / "eval").mkdir()
    tok_eval.evaluate(data=data, model=tk["model"], metrics=str(d / "eval/metrics.json"),
                      reconstructions=str(d / "eval/rec.png"), preset="test",
                      settings={"split": "test", "fid": None, "lpips": RANDOM_VGG, "batch_size": 64,
                                "device": "cpu"})
    return {**tk, "dir": d, "metrics": str(d / "eval/metrics.json")}


SPEC = {"variant": "maskgit", "schedule": "baseline", "gan": False, "paper_model": "MaskGIT",
        "paper_variant": "VQ"}


def test_random_lpips_trunk_of_training_reaches_run_json_and_tokenizer_rows(tokenizer):
    d = tokenizer["dir"]
    trained = load_json(d / "run.json")["training_loss"]
    assert "LPIPS vgg, RANDOM (not pretrained) trunk" in trained
    m = load_json(tokenizer["metrics"])["metrics"]
    assert m["training_loss"] == trained
    assert "RANDOM" in m["lpips_backbone"] and "not comparable" in m["lpips_backbone"]

    out = d / "table3.csv"
    rep.table(metrics=[tokenizer["metrics"]], records=[str(d / "run.json")],
              tokens=[tokenizer["meta"]], paper=PAPER, table=str(out), preset="smoke",
              settings={"table": "3", "paper_dataset": "imagenet100", "dataset": "digits",
                        "rows": [SPEC]})
    row = pd.read_csv(out).iloc[0]
    assert row["tokenizer_loss"] == trained
    assert "RANDOM" in row["lpips_backbone"]
    # the paper's shapes: a 32-code codebook, 16 px with one downsampling -> 8 x 8 tokens
    assert row["codebook_size"] == 32 and row["tokens_per_image"] == 64


@pytest.fixture(scope="module")
def generator_run(tokenizer, tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("gen")
    gen.train(tokens_train=tokenizer["train"], tokens_val=tokenizer["val"],
              meta=tokenizer["meta"], tokenizer=tokenizer["model"], model=str(d / "model.pt"),
              curve=str(d / "curve.csv"), record=str(d / "run.json"), preset="test",
              settings=train_settings("maskgit", epochs=1), state_dir=str(d / "state"),
              checkpoint_interval_s=0.0)
    return {"dir": d, "record": str(d / "run.json")}


def generation_metrics(path: Path, lpips_backbone: str) -> str:
    """A generator's metrics.json (the values do not matter here, the row's labels do)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"metrics": {
        "gfid": 10.0, "pixel_distance": 70.0, "lpips_diversity": 0.6, "fid_feature_net": "x",
        "fid_reference_images": 50, "lpips_backbone": lpips_backbone, "pixel_norm": "l2",
        "pixel_scale": 1 / 255, "samples": 20, "lpips_images": 20}}))
    return str(path)


@pytest.mark.parametrize("table", ["4", "11"])
def test_generator_rows_show_parameters_shapes_and_tokenizer_loss(tokenizer, generator_run,
                                                                  table):
    rec = load_json(generator_run["record"])
    net, _, _ = generator_registry.load_generator(str(generator_run["dir"] / "model.pt"),
                                                  tokenizer["model"])
    assert rec["parameters"] == sum(p.numel() for p in net.parameters() if p.requires_grad) > 0
    assert rec["tokens_per_image"] == 64 and rec["codebook_size"] == 32

    d = generator_run["dir"]
    metrics = generation_metrics(d / f"eval-{table}/metrics.json",
                                 metric_nets.lpips_label("vgg", pretrained=False))
    out = d / f"table{table}.csv"
    grep.table(metrics=[metrics], records=[generator_run["record"]], paper=PAPER,
               table=str(out), preset="smoke",
               tokenizer_metrics=[tokenizer["metrics"]] if table == "11" else None,
               settings={"table": table, "paper_dataset": "imagenet100", "dataset": "digits",
                         "rows": [{**SPEC, "generator": "maskgit"}]})
    row = pd.read_csv(out).iloc[0]
    assert row["parameters"] == rec["parameters"]
    assert row["codebook_size"] == 32 and row["tokens_per_image"] == 64
    assert "LPIPS vgg, RANDOM (not pretrained) trunk" in row["tokenizer_loss"]
    assert "RANDOM" in row["lpips_backbone"]


def test_fig4_rows_show_codebook_size_and_tokens_per_image(tokenizer, tmp_path):
    metrics, records = [], []
    for schedule in ("baseline", "deferred"):
        run = tmp_path / "vqvae-k32" / schedule
        (run / "eval").mkdir(parents=True)
        (run / "eval/metrics.json").write_text(Path(tokenizer["metrics"]).read_text())
        (run / "run.json").write_text(json.dumps({"epochs_run": 1}))
        metrics.append(str(run / "eval/metrics.json"))
        records.append(str(run / "run.json"))
    rep.fig4(metrics=metrics, records=records, table=str(tmp_path / "fig4.csv"),
             figure=str(tmp_path / "fig4.png"), preset="smoke",
             settings={"paper_dataset": "cifar10", "dataset": "digits", "codebook_sizes": [32]})
    t = pd.read_csv(tmp_path / "fig4.csv")
    assert list(t["codebook_size"]) == [32, 32] and list(t["tokens_per_image"]) == [64, 64]
