"""Readings of the paper's text the tables depend on: the scale each table's printed LPIPS
fits, and which tokenizer Table 12's LlamaGen runs on (App. A.4, VQGAN based)."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from vqshrink.stages import tokenizer_report as rep

from repo_helpers import ROOT, copy_repo, snakemake

PAPER = str(ROOT / "workflow/resources/paper_tables.csv")
METRICS = {"rfid": 9.0, "mse": 0.03, "lpips": 0.08, "euclidean": 5.0, "perplexity": 900.0,
           "usage": 0.5, "dead_fraction": 0.5, "codebook_size": 256, "tokens_per_image": 64,
           "split": "test", "images": 100, "fid_feature_net": "inception",
           "lpips_backbone": "vgg", "mse_pixel_range": "[-1, 1]"}


@pytest.mark.parametrize("table, model, scale, paper_lpips", [
    ("3", "VAR", 10.0, 1.19),       # ImageNet-100
    ("2", "VAR", 10.0, 1.63),
    ("9", "VAR", 10.0, 1.73),
    ("11", "MaskGIT", 10.0, 0.90),  # ODIR, MaskGIT: 0.90-1.30
    ("5", "VAR", 100.0, 6.79),      # ODIR, VAR: 6.79-9.39 fit x 100, not x 10
    ("10", "VAR", 100.0, 7.15),
])
def test_lpips_is_scaled_as_each_table_prints_it(table, model, scale, paper_lpips):
    gan = table in ("9", "10")
    spec = {"paper_model": model, "paper_variant": "VQ", "gan": gan}
    row = rep.tokenizer_columns(METRICS, spec, rep.paper_values(PAPER, table), True, table)
    assert row["lpips_scale"] == scale
    assert row["lpips"] == 0.08 and row["lpips_scaled"] == pytest.approx(0.08 * scale)
    assert row["paper_lpips_scaled"] == paper_lpips
    assert row["mse_x100"] == pytest.approx(3.0)  # MSE keeps one factor everywhere


def test_the_per_table_lpips_scales_keep_the_papers_orderings():
    """At the chosen scales ODIR's VAR tokenizer reconstructs better than its MaskGIT one on
    LPIPS as on MSE (Tables 5 vs 11), and VAR better than MaskGIT on ImageNet-100 (Table 3)."""
    paper = pd.read_csv(PAPER, comment="#", dtype={"table": str})

    def value(table, model, metric, gan="no"):
        hit = paper[(paper.table == table) & (paper.model == model) & (paper.metric == metric)
                    & (paper.gan == gan)]
        return hit["value"].to_numpy()

    unscale = lambda t, m, g="no": value(t, m, "LPIPS", g) / rep.lpips_scale(t)  # noqa: E731
    assert unscale("5", "VAR").max() < unscale("11", "MaskGIT").min()
    assert value("5", "VAR", "MSE").max() < value("11", "MaskGIT", "MSE").min()
    assert unscale("10", "VAR", "yes").max() < unscale("11", "MaskGIT", "yes").max()
    assert unscale("3", "VAR").max() < unscale("3", "MaskGIT").min()


def test_unknown_table_has_no_lpips_scale():
    with pytest.raises(ValueError, match="no LPIPS scale for table '4'"):
        rep.lpips_scale("4")


def test_table12_llamagen_runs_on_the_vqgan_tokenizer(tmp_path):
    """App. A.4 ("VQGAN based Generation Results") holds Table 12: LlamaGen's runs use the
    GAN-trained MaskGIT tokenizer, in both arms."""
    repo = copy_repo(tmp_path)
    proc = snakemake("-n", "results/tables/table12.csv", "--config", "preset=demo", cwd=repo)
    runs = set(re.findall(r"wildcards: dataset=\w+, generator=(\w+), variant=(\w+), "
                          r"schedule=(\w+)", proc.stdout))
    assert runs == {("llamagen", "maskgit_gan", "baseline"),
                    ("llamagen", "maskgit_gan", "deferred")}
