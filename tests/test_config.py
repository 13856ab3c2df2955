"""config.yaml resolution: presets, and bad input stopped with the key named."""

from pathlib import Path

import pytest
import yaml

from vqshrink import config as vqconfig

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
CONFIG = ROOT / "config.yaml"


def load(overrides=None):
    return vqconfig.load(CONFIG, SCHEMA, overrides)


def test_paper_config_is_valid_and_default():
    cfg = load()
    assert cfg["preset"] == "paper"
    assert cfg["synthetic"]["codebook_size"] == 128  # App. A.1
    assert cfg["synthetic"]["epochs"] == {"baseline": 200, "pretrain": 100, "finetune": 100}


def test_demo_preset_overlays_paper():
    raw = yaml.safe_load(CONFIG.read_text())
    cfg = load({"preset": "demo"})
    assert cfg["preset"] == "demo"
    for key, value in raw["presets"]["demo"].get("training", {}).items():
        assert cfg["training"][key] == value
    # keys the overlay does not touch keep the paper's values
    assert cfg["synthetic"]["input_dims"] == raw["synthetic"]["input_dims"]


def test_deep_merge_keeps_siblings():
    merged = vqconfig.deep_merge({"a": {"b": 1, "c": 2}, "d": [1]}, {"a": {"b": 5}, "d": [2]})
    assert merged == {"a": {"b": 5, "c": 2}, "d": [2]}


@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"synthetic": {"colour": "red"}}, "unknown config key synthetic.colour"),
        ({"bogus": 1}, "unknown config key bogus"),
        ({"synthetic": {"lr": "fast"}}, "config key synthetic.lr: 'fast' is not of type 'number'"),
        ({"synthetic": {"epochs": {"baseline": -5}}}, "config key synthetic.epochs.baseline: -5"),
        ({"synthetic": {"epochs": {"pretrain": 0}}}, "config key synthetic.epochs.pretrain"),
        ({"synthetic": {"seeds": []}}, "config key synthetic.seeds: [] should be non-empty"),
        ({"launcher": "pbs"}, "config key launcher: 'pbs' is not allowed; allowed values"),
        ({"preset": "huge"}, "config key preset: 'huge' is not defined"),
        ({"synthetic": {"input_dims": [2, 5]}}, "no token dim for input dim 5"),
        ({"synthetic": {"ema_decay": 1.5}}, "config key synthetic.ema_decay"),
        ({"synthetic": {"resources": {"gpu": -1}}}, "config key synthetic.resources.gpu"),
        ({"presets": {"demo": {"synthetic": {"typo": 1}}}, "preset": "demo"},
         "after applying preset 'demo'"),
    ],
)
def test_bad_config_names_the_key(overrides, expected):
    with pytest.raises(vqconfig.ConfigError) as err:
        load(overrides)
    assert expected in str(err.value)


def test_unknown_key_lists_allowed_keys():
    with pytest.raises(vqconfig.ConfigError) as err:
        load({"synthetic": {"epoch": 3}})
    assert "allowed keys under synthetic:" in str(err.value) and "epochs" in str(err.value)
