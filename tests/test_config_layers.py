"""Config precedence, lowest first: config.yaml, the chosen preset, the user's --configfile
files in order, --config; nested --config values are parsed as YAML scalars."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import yaml

from repo_helpers import ROOT, copy_repo, snakemake
from vqshrink import config as vqconfig

CONFIG = ROOT / "config.yaml"
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def _workflow(user_files: list[Path], overrides: dict) -> SimpleNamespace:
    """What common.smk hands to layered_config: Snakemake's settings after parsing
    (command-line config files first, then the Snakefile's `configfile:`)."""
    return SimpleNamespace(
        config_settings=SimpleNamespace(configfiles=[p.absolute() for p in user_files],
                                        config=overrides),
        configfiles=[*(p.absolute() for p in user_files), str(CONFIG)],
    )


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_user_file_beats_the_preset(tmp_path):
    mine = _write(tmp_path / "mine.yaml", {"tokenizers": {"codebook_size": 512}})
    cfg = vqconfig.layered_config(_workflow([mine], {"preset": "demo"}), SCHEMA)
    assert cfg["preset"] == "demo"
    assert cfg["tokenizers"]["codebook_size"] == 512          # the preset says 256
    assert cfg["datasets"]["substitute"] == "digits"          # the rest of the preset holds
    # the same through vqshrink.config.load (overrides = --config)
    loaded = vqconfig.load(CONFIG, SCHEMA, {"preset": "demo", "tokenizers": {"codebook_size": 512}})
    assert loaded["tokenizers"]["codebook_size"] == 512


def test_user_files_apply_in_order_then_config(tmp_path):
    first = _write(tmp_path / "a.yaml", {"preset": "demo", "synthetic": {"kmeans_iters": 3,
                                                                        "lr": 0.5}})
    second = _write(tmp_path / "b.yaml", {"synthetic": {"kmeans_iters": 4}})
    cfg = vqconfig.layered_config(
        _workflow([first, second], {"synthetic": {"lr": "0.25"}}), SCHEMA)
    assert cfg["preset"] == "demo"  # a user file may choose the preset
    assert cfg["synthetic"]["kmeans_iters"] == 4
    assert cfg["synthetic"]["lr"] == 0.25


def test_config_yaml_given_again_stays_the_bottom_layer(tmp_path):
    """`--configfile config.yaml mine.yaml --config preset=demo`: the paper values of
    config.yaml must not be laid over the demo preset."""
    mine = _write(tmp_path / "mine.yaml", {"synthetic": {"kmeans_iters": 7}})
    cfg = vqconfig.layered_config(_workflow([CONFIG, mine], {"preset": "demo"}), SCHEMA)
    assert cfg["tokenizers"]["codebook_size"] == 256  # the demo's
    assert cfg["synthetic"]["kmeans_iters"] == 7


def test_nested_config_values_are_yaml_scalars():
    # what Snakemake's --config parser makes of 'synthetic={"epochs": {"baseline": 5}, ...}'
    parsed = vqconfig.parse_nested_overrides({
        "preset": "demo",
        "synthetic": {"epochs": {"baseline": "5"}, "lr": "1e-3", "cluster_std": "0.5",
                      "center_box": ["-3", "3.5"], "device": "cpu", "flag": "true",
                      "nothing": "null"},
    })
    assert parsed == {
        "preset": "demo",
        "synthetic": {"epochs": {"baseline": 5}, "lr": 0.001, "cluster_std": 0.5,
                      "center_box": [-3, 3.5], "device": "cpu", "flag": True, "nothing": None},
    }


def test_records_show_the_layered_values(tmp_path):
    """A real run: a user file beats the preset, a nested --config value beats the file and
    is an integer, and the stage's record shows what was used."""
    repo = copy_repo(tmp_path)
    # a preset of the user's own making shows the order on a cheap stage (synthetic data)
    _write(repo / "mine.yaml", {
        "presets": {"demo": {"synthetic": {"n_clusters": 5, "points_per_cluster": 40}}},
        "synthetic": {"n_clusters": 7},
    })
    snakemake("-c1", "results/synthetic/data/dim2.json", "--configfile", "mine.yaml",
              "--config", "preset=demo", 'synthetic={"points_per_cluster": 30}', cwd=repo)
    record = json.loads((repo / "results/synthetic/data/dim2.json").read_text())
    assert record["preset"] == "demo"
    assert record["settings"]["n_clusters"] == 7
    assert record["settings"]["points_per_cluster"] == 30
    assert record["points"] == 7 * 30
