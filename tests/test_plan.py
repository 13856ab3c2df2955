"""The experiment plan (vqshrink.plan.experiments) called directly, without Snakemake: which
runs make each table, where they live, what each stage is given, and what is refused."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import subprocess
import sys
from types import SimpleNamespace as W

import pytest
import yaml

from vqshrink import config as vqconfig
from vqshrink.plan import experiments as px
from vqshrink.plan import models as pm
from vqshrink.plan.budget import PlanError
from vqshrink.prerequisites import PrerequisitesMissing

from repo_helpers import ROOT

SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"
BASE = yaml.safe_load((ROOT / "config.yaml").read_text())


def plan(preset: str = "paper", **layer) -> px.Plan:
    return px.Plan(vqconfig.resolve(BASE, SCHEMA, [{"preset": preset, **layer}]))


def test_the_plan_and_the_workflow_layer_import_no_torch():
    """The Snakefile builds the plan at parse time, also on a login node: no torch there."""
    code = ("import sys, vqshrink.plan.experiments, vqshrink.launch, vqshrink.config, "
            "vqshrink.code_version, vqshrink.prerequisites; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


# ---------------------------------------------------------------- model signatures
@pytest.mark.parametrize("family", list(pm.GENERATOR_CLASSES))
def test_signatures_read_from_source_match_the_imported_models(family):
    module, config_cls, model_cls = pm.GENERATOR_CLASSES[family]
    mod = importlib.import_module(f"vqshrink.models.{module}")
    fields = [f.name for f in dataclasses.fields(getattr(mod, config_cls))]
    params = inspect.signature(getattr(mod, model_cls).sample).parameters
    options = [k for k, p in params.items() if p.kind is p.KEYWORD_ONLY
               and k != "generator" and not k.startswith("_")]
    assert pm.model_config_fields(family) == fields
    assert pm.sampling_keywords(family) == options
    assert pm.TOKEN_FIELDS & set(fields)  # some fields come from the tokens, not config


@pytest.mark.parametrize("family", list(pm.ARCHITECTURES))
def test_architecture_defaults_read_from_source_are_the_models(family):
    """The fields an architecture entry may state are its config dataclass's and the
    schema's, and the defaults read from source are the imported dataclass's."""
    module, config_cls, names = pm.ARCHITECTURES[family]
    cls = getattr(importlib.import_module(f"vqshrink.models.{module}"), config_cls)
    defaults = dataclasses.asdict(cls())
    schema = yaml.safe_load(SCHEMA.read_text())
    entry = (schema["$defs"]["vqgan_architecture"] if family == "vqgan" else
             schema["properties"]["vqvae_sweep"]["properties"]["architecture"])
    assert list(entry["properties"]) == ["family", *names]
    expected = {"family": family,
                **{n: list(v) if isinstance(v, tuple) else v
                   for n, v in defaults.items() if n in names}}
    assert pm.architecture({"family": family}) == expected
    assert pm.architecture({"family": family, names[0]: 7})[names[0]] == 7


def test_architecture_fields_left_out_take_the_model_defaults():
    """The model dataclasses hold the defaults, config.yaml what differs from them. An
    entry naming only its family resolves to the dataclass's architecture, in every stage's
    settings (in field order, so the settings and runs' identities do not depend on how
    much the config states)."""
    from vqshrink.models.cifar_vqvae import CifarVQVAEConfig
    from vqshrink.models.vqgan import VQGANConfig

    cfg = {**BASE, "tokenizers": {**BASE["tokenizers"],
                                  "architectures": {"maskgit": {"family": "vqgan"},
                                                    "var": {"family": "vqgan", "ch": 32}}},
           "vqvae_sweep": {**BASE["vqvae_sweep"], "architecture": {"family": "cifar_vqvae"}}}
    p = px.Plan(vqconfig.resolve(cfg, SCHEMA, [{"preset": "paper"}]))
    vqgan, cifar = VQGANConfig(), CifarVQVAEConfig()
    maskgit = p.arch_settings("maskgit", "imagenet100")
    assert list(maskgit) == ["family", "ch", "ch_mult", "num_res_blocks", "attn_resolutions",
                             "dropout", "z_channels", "embed_dim", "resolution"]
    assert maskgit["ch_mult"] == list(vqgan.ch_mult) and maskgit["z_channels"] == vqgan.z_channels
    assert maskgit["embed_dim"] == vqgan.embed_dim and maskgit["ch"] == vqgan.ch
    assert p.arch_settings("var", "imagenet100")["ch"] == 32
    sweep = p.model_settings(W(variant="vqvae-k64", dataset="cifar10"))
    assert (sweep["hidden"], sweep["res_hidden"], sweep["res_blocks"], sweep["embed_dim"]) == (
        cifar.hidden, cifar.res_hidden, cifar.res_blocks, cifar.embed_dim)


@pytest.mark.parametrize("family", list(pm.GENERATOR_CLASSES))
def test_generator_model_fields_left_out_take_the_model_defaults(family):
    """A generator's settings hold its whole model: the fields config leaves out at the
    dataclass's defaults (the token fields come from the tokens), a stated one as stated."""
    module, config_cls, _ = pm.GENERATOR_CLASSES[family]
    cls = getattr(importlib.import_module(f"vqshrink.models.{module}"), config_cls)
    tokens = {"vocab_size": 64, "num_classes": 3}
    stated = {"maskgit": {"depth": 2}, "var": {"depth": 2}, "llamagen": {"n_layer": 2}}[family]
    model = plan("paper", generators={"models": {family: {"model": stated}}}).gen_train_settings(
        W(generator=family))["model"]
    assert list(model) == [f for f in pm.model_config_fields(family) if f not in pm.TOKEN_FIELDS]
    assert dataclasses.asdict(cls(**model, **tokens)) == dataclasses.asdict(
        cls(**stated, **tokens))
    assert {k: model[k] for k in stated} == stated


def test_config_yaml_states_no_model_field_at_its_default():
    """One source of defaults: a model field config.yaml states differs from the model's
    default (otherwise it belongs to the model dataclass alone)."""
    archs = [*BASE["tokenizers"]["architectures"].values(), BASE["vqvae_sweep"]["architecture"]]
    stated = [(entry, pm.architecture({"family": entry["family"]})) for entry in archs]
    stated += [(spec.get("model", {}), pm.generator_model(g, {}))
               for g, spec in BASE["generators"]["models"].items()]
    for entry, defaults in stated:
        assert not [k for k in entry if k != "family" and entry[k] == defaults[k]], entry


@pytest.mark.parametrize("section, key", [("model", "depht"), ("sampling", "cfg_scale"),
                                          ("model", "vocab_size")])
def test_unknown_generator_key_is_refused_by_name(section, key):
    p = plan("demo", generators={"models": {"var": {section: {key: 1}}}})
    with pytest.raises(PlanError, match=rf"unknown config key generators\.models\.var\."
                                        rf"{section}\.{key}; allowed keys: "):
        p.check_generator_keys()


def test_shipped_presets_pass_every_check():
    for preset in ("demo", "smoke"):
        plan(preset).check()


# ---------------------------------------------------------------- runs and settings
def test_vq_settings_follow_the_schedule_and_the_dataset_checkpoint_policy():
    p = plan()
    base = p.tok_train_settings(W(dataset="imagenet100", variant="var", schedule="baseline"))
    deferred = p.tok_train_settings(W(dataset="odir", variant="var_gan", schedule="deferred"))
    t = BASE["tokenizers"]["training"]
    assert base["train"]["epochs"] == t["epochs"]["baseline"]
    assert deferred["train"]["epochs"] == t["epochs"]["finetune"]
    assert base["checkpoint"] == "best_val_fid" and base["fid"]["dataset"] == "imagenet100"
    assert deferred["checkpoint"] == "final" and "fid" not in deferred
    assert (base["loss"]["gan"], deferred["loss"]["gan"]) == (False, True)
    assert base["model"]["patch_nums"] == BASE["tokenizers"]["patch_nums"]
    assert base["model"]["resolution"] == BASE["datasets"]["imagenet100"]["resolution"]


def test_sweep_variant_is_a_cifar_vqvae_with_its_own_codebook_size():
    p = plan()
    w = W(dataset="cifar10", variant="vqvae-k512", schedule="deferred")
    spec = p.variant_spec(w.variant)
    assert (spec["sweep"], spec["architecture"], spec["codebook_size"]) == (True, px.SWEEP_ARCH, 512)
    assert p.tok_experiment(w) is p.sweep and p.checkpoint_policy(w) == "final"
    assert p.model_settings(w)["codebook_size"] == 512 and "quantizer" not in p.model_settings(w)
    assert p.get_tok_ae(w) == {"ae": "results/tokenizers/cifar10/ae-cifar_vqvae/model.pt"}
    assert p.tok_eval_settings(w)["fid"] is None and p.get_eval_fid(w) == {}
    # the sweep's variants come from config (vqvae_sweep.codebook_sizes), not from names
    assert [v for v in p.tokenizer_variants() if v.startswith("vqvae-k")] == [
        f"vqvae-k{k}" for k in BASE["vqvae_sweep"]["codebook_sizes"]]
    with pytest.raises(KeyError):
        p.variant_spec("vqvae-k100")


def test_only_simvq_variants_get_the_simvq_init():
    p = plan()
    simvq = p.tok_init_settings(W(dataset="imagenet100", variant="var_simvq", schedule="baseline"))
    vq = p.tok_init_settings(W(dataset="imagenet100", variant="var", schedule="baseline"))
    assert simvq["simvq_init"] == BASE["tokenizers"]["simvq_init"] and "simvq_init" not in vq


def test_synthetic_runs_and_settings():
    p = plan()
    s = BASE["synthetic"]
    assert len(p.main_runs()) == len(s["input_dims"]) * len(s["seeds"]) * 2
    w = W(dim=str(s["input_dims"][0]), hidden=str(s["hidden"]), seed="0", schedule="deferred")
    assert p.syn_vq_settings(w)["epochs"] == s["epochs"]["finetune"]
    assert p.syn_ae_settings(w)["epochs"] == s["epochs"]["pretrain"]
    assert p.syn_model_settings(w)["encoder_hidden"] is None
    assert p.get_syn_ae(w) == {"ae": p.syn_run(w, "ae", "model.pt")}
    assert p.get_syn_ae(W(**{**vars(w), "schedule": "baseline"})) == {}
    assert p.syn_state(w, "vq").endswith("seed0/deferred/vq")


def test_table_rows_come_in_the_papers_order():
    p = plan()
    t2 = [(r["variant"], r["schedule"]) for r in p.tok_table_rows("table2")]
    assert t2 == [("var", "baseline"), ("var_simvq", "baseline"),
                  ("var", "deferred"), ("var_simvq", "deferred")]
    t3 = [(r["variant"], r["schedule"]) for r in p.tok_table_rows("table3")]
    assert t3 == [("maskgit", "deferred"), ("maskgit", "baseline"),
                  ("var", "deferred"), ("var", "baseline")]
    t11 = p.gen_table_rows("table11")
    assert [r["run"] for r in t11][:2] == ["results/generators/odir/maskgit/maskgit/deferred",
                                           "results/generators/odir/maskgit/maskgit/baseline"]
    inputs = p.get_gen_table_inputs(W(gen_table="table11"))
    assert inputs["tokenizer_metrics"][0] == "results/tokenizers/odir/maskgit/deferred/eval/metrics.json"
    assert "tokenizer_metrics" not in p.get_gen_table_inputs(W(gen_table="table4"))


def test_the_demo_substitute_keys_every_run_by_the_dataset_used():
    p = plan("demo")
    assert p.used_image_datasets() == ["digits"]
    assert {r["run"].split("/")[2] for r in p.gen_table_rows("table4")} == {"digits"}
    assert {panel["dataset"] for panel in p.fig5_panels()} == {"digits"}
    assert {panel["paper_dataset"] for panel in p.fig5_panels()} == {"imagenet100", "odir"}


def test_targets_cover_every_configured_table_and_curve():
    p = plan()
    targets = p.all_targets()
    for t in [*BASE["tokenizers"]["tables"], *BASE["generators"]["tables"]]:
        assert f"results/tables/{t}.csv" in targets
    curves = [t for t in targets if "/curves/" in t]
    assert sorted(curves) == sorted(
        f"results/figures/curves/{g}-{d}.png" for g in px.CURVE_METRICS
        for d in p.curve_datasets(g))
    assert len(targets) == len(set(targets))


def test_curve_inventory_lists_pretraining_once_per_deferred_run():
    p = plan()
    syn = p.curve_runs("synthetic", "gaussians")
    deferred = [r for r in syn if r[1] == "deferred"]
    pretrain = [r for r in syn if r[1] == "pretrain"]
    assert len(pretrain) == len(deferred) > 0
    tok = p.curve_runs("tokenizers", "odir")
    assert {n for n, s, _ in tok if s == "pretrain"} == {"ae-var", "ae-maskgit"}
    assert ("var_gan", "deferred", "results/tokenizers/odir/var_gan/deferred/vq/curve.csv") in tok


def test_every_curve_is_a_planned_training_run():
    """The budget covers exactly the trained models the curves and Fig. 5 draw."""
    p = plan("smoke")
    runs = {r.run for r in p.planned_runs()}
    for group in ("tokenizers", "sweep", "generators"):
        for d in p.curve_datasets(group):
            for _, _, curve in p.curve_runs(group, d):
                assert re.sub(r"(/vq|/model)?/curve\.csv$", "", curve) in runs
    assert all(f"{panel['run']}" in runs for panel in p.fig5_panels())


# ---------------------------------------------------------------- refusals
def test_a_null_dataset_source_stops_with_every_missing_key():
    p = plan()  # the paper preset ships without dataset paths
    with pytest.raises(PrerequisitesMissing) as err:
        p.get_dataset_sources(W(dataset="odir"))
    text = str(err.value)
    assert "datasets.odir.image_dir" in text and "datasets.imagenet100.root" in text


def test_an_impossible_schedule_is_refused_naming_the_key():
    p = plan("demo", tokenizers={"loss": {"disc_start_epochs": 500}})
    with pytest.raises(PlanError, match="config key tokenizers.loss.disc_start_epochs"):
        p.check()


@pytest.mark.parametrize("generator_caps", [{"train_images": None, "val_images": 4},
                                            {"train_images": 4, "val_images": 8}])
def test_a_token_cap_below_the_generators_caps_is_refused(generator_caps):
    p = plan("smoke", generators={"training": generator_caps})
    key = next(k for k, v in generator_caps.items() if v != 4)
    with pytest.raises(PlanError, match=rf"tokenizers.tokens.max_images is 4, .* "
                                        rf"generators.training.{key} is"):
        p.check()
    assert plan("smoke").tok_tokens_settings(W(dataset="odir", variant="var"))["max_images"] == 4
    assert plan().tok_tokens_settings(W(dataset="odir", variant="var"))["max_images"] is None


def test_step_times_file_is_found_by_gpu_name(tmp_path):
    (tmp_path / "h100.csv").write_text("x\n")
    assert plan().get_step_times(None, tmp_path) == {"step_times": str(tmp_path / "h100.csv")}
    (tmp_path / "h200.csv").write_text("x\n")
    assert plan().get_step_times(None, tmp_path) == {}  # two files, no plan.gpu: none chosen
    assert plan(plan={"gpu": "h200"}).get_step_times(None, tmp_path) == {
        "step_times": str(tmp_path / "h200.csv")}
