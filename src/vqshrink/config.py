"""Configuration: preset overlay and validation with errors that name the key.

The workflow's ``config.yaml`` describes the paper (``preset: paper``). A preset is a
partial config under ``presets.<name>`` that is deep-merged over the base config, below
the user's ``--configfile`` files and ``--config`` values; ``--config preset=demo``
selects one. Validation runs on the merged result against
``workflow/schemas/config.schema.yaml`` so that an unknown key, a wrong type or an
impossible value stops the run before any job starts.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path

import jsonschema
import yaml

from vqshrink.plan import models as vqmodels


class ConfigError(ValueError):
    """A config value is missing, unknown or out of range; the message names the key."""


def deep_merge(base: Mapping, overlay: Mapping) -> dict:
    """Return ``base`` with ``overlay`` merged in; nested mappings merge, anything else replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _key_path(path) -> str:
    parts = [str(p) if not isinstance(p, int) else f"[{p}]" for p in path]
    return ".".join(parts).replace(".[", "[") or "<top level>"


def _describe(error: jsonschema.ValidationError) -> str:
    key = _key_path(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    if error.validator == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        prefix = "" if key == "<top level>" else key + "."
        return (
            f"unknown config key {', '.join(prefix + e for e in extra)}; "
            f"allowed keys{' under ' + key if prefix else ''}: {', '.join(allowed)}"
        )
    if error.validator == "enum":
        return f"config key {key}: {error.instance!r} is not allowed; allowed values: {error.validator_value}"
    if error.validator == "required":
        return f"config key {key}: {error.message}"
    return f"config key {key}: {error.message}"


def validate(config: Mapping, schema: Mapping | str | Path) -> None:
    """Raise :class:`ConfigError` listing every violation of ``schema``, each naming its key."""
    if not isinstance(schema, Mapping):
        schema = yaml.safe_load(Path(schema).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(_describe(e) for e in errors))


def resolve(config: Mapping, schema: Mapping | str | Path,
            user_layers: Sequence[Mapping] = ()) -> dict:
    """Layer the config and validate the result.

    Precedence, lowest first: ``config`` (the workflow's config.yaml), the preset it
    selects, then ``user_layers`` in order (the user's ``--configfile`` files, then
    ``--config``), so that a user's setting beats the preset's. The preset is chosen (and
    the ``presets`` section read) after all layers, so a user layer may select or edit it.
    The returned dict has ``preset`` set to the preset used; the ``presets`` section is
    kept so that a job can record what the overlay was.
    """
    top = config
    for layer in user_layers:
        top = deep_merge(top, layer)
    presets = top.get("presets", {}) or {}
    name = top.get("preset", "paper")
    if name != "paper" and name not in presets:
        raise ConfigError(
            f"config key preset: {name!r} is not defined; choose 'paper' or one of "
            f"presets: {', '.join(sorted(presets)) or '(none)'}"
        )
    merged = deep_merge(config, presets.get(name, {}) or {})
    for layer in user_layers:
        merged = deep_merge(merged, layer)
    merged["preset"] = name
    try:
        validate(merged, schema)
        fill_model_defaults(merged)
        check_consistency(merged)
    except ConfigError as err:
        if name != "paper":
            raise ConfigError(f"{err} (after applying preset {name!r})") from None
        raise
    return merged


def fill_model_defaults(config: dict) -> None:
    """Complete the models in place with their config dataclass's defaults: the tokenizers'
    architectures (``tokenizers.architectures.<name>``, ``vqvae_sweep.architecture``) and
    the generators' (``generators.models.<name>.model``). config.yaml states what differs
    from the models' defaults, which are the paper's (:mod:`vqshrink.plan.models`)."""
    tok, sweep = config.get("tokenizers") or {}, config.get("vqvae_sweep") or {}
    archs = tok.get("architectures") or {}
    for name, entry in archs.items():
        archs[name] = vqmodels.architecture(entry)
    if sweep.get("architecture"):
        sweep["architecture"] = vqmodels.architecture(sweep["architecture"])
    for family, spec in ((config.get("generators") or {}).get("models") or {}).items():
        spec["model"] = vqmodels.generator_model(family, spec.get("model") or {})


def check_consistency(config: Mapping) -> None:
    """Cross-key rules that a JSON schema cannot state."""
    problems = []
    syn = config.get("synthetic", {})
    token_dims = syn.get("token_dims", {})
    ec = syn.get("embeddings_collapse", {})
    for dim in [*syn.get("input_dims", []), ec.get("input_dim")]:
        if dim is not None and str(dim) not in token_dims:
            problems.append(f"config key synthetic.token_dims: no token dim for input dim {dim}")
    if syn.get("figure_input_dim") not in syn.get("input_dims", []):
        problems.append("config key synthetic.figure_input_dim: must be one of synthetic.input_dims")
    if syn.get("figure_seed") not in syn.get("seeds", []):
        problems.append("config key synthetic.figure_seed: must be one of synthetic.seeds")
    if syn.get("kmeans_points", 0) < syn.get("codebook_size", 0):
        problems.append("config key synthetic.kmeans_points: fewer embeddings than "
                        "synthetic.codebook_size tokens")
    problems += _tokenizer_problems(config)
    problems += _generator_problems(config)
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


# ---------------------------------------------------------------- image tokenizers
def _tokenizer_problems(config: Mapping) -> list[str]:
    """Cross-key rules of the datasets / tokenizers / vqvae_sweep sections."""
    tok, sweep, data = (config.get(k) or {} for k in ("tokenizers", "vqvae_sweep", "datasets"))
    if not tok or not data:
        return []
    problems = []
    archs, variants = tok.get("architectures", {}), tok.get("variants", {})
    for name, v in variants.items():
        if v["architecture"] not in archs:
            problems.append(f"config key tokenizers.variants.{name}.architecture: "
                            f"{v['architecture']!r} is not one of tokenizers.architectures "
                            f"({', '.join(sorted(archs))})")
    used = [(t, data.get("substitute") or spec["dataset"]) for t, spec in
            tok.get("tables", {}).items()]
    for table, dataset in used:
        spec = tok["tables"][table]
        for name in spec["variants"]:
            if name not in variants:
                problems.append(f"config key tokenizers.tables.{table}.variants: {name!r} is not "
                                f"one of tokenizers.variants ({', '.join(sorted(variants))})")
                continue
            arch = archs.get(variants[name]["architecture"])
            if arch is None:
                continue
            res = data[dataset]["resolution"]
            down = 2 ** (len(arch["ch_mult"]) - 1)
            if res % down:
                problems.append(f"config key tokenizers.architectures.{variants[name]['architecture']}"
                                f".ch_mult: {dataset} images ({res} px) are not divisible by {down}")
            elif variants[name]["quantizer"].startswith("multiscale") \
                    and tok["patch_nums"][-1] != res // down:
                problems.append(f"config key tokenizers.patch_nums: the last scale must be the "
                                f"latent size {res // down} of {dataset} ({res} px), got "
                                f"{tok['patch_nums'][-1]}")
    if sweep:
        dataset = data.get("substitute") or sweep["dataset"]
        if data[dataset]["resolution"] % 4:
            problems.append(f"config key vqvae_sweep.dataset: {dataset} images "
                            f"({data[dataset]['resolution']} px) are not divisible by 4")
    return list(dict.fromkeys(problems))


# ---------------------------------------------------------------- generators
GENERATOR_QUANTIZERS = {  # which tokenizers a generator reads: VAR needs the multi-scale one
    "maskgit": ("vq", "simvq"),
    "var": ("multiscale", "multiscale_simvq"),
    "llamagen": ("vq", "simvq"),
}


def _generator_problems(config: Mapping) -> list[str]:
    """Every table / figure run pairs a generator with a tokenizer variant it can read."""
    gen, tok = config.get("generators") or {}, config.get("tokenizers") or {}
    if not gen or not tok:
        return []
    variants = tok.get("variants", {})
    pairs = [(f"generators.tables.{t}.runs", g, v)
             for t, spec in gen.get("tables", {}).items() for g, v in spec["runs"]]
    fig5 = gen.get("fig5")
    if fig5:
        pairs.append(("generators.fig5", fig5["generator"], fig5["tokenizer"]))
    problems = []
    for key, g, v in pairs:
        if g not in GENERATOR_QUANTIZERS:
            problems.append(f"config key {key}: generator {g!r} is not one of "
                            f"{', '.join(GENERATOR_QUANTIZERS)}")
        elif v not in variants:
            problems.append(f"config key {key}: tokenizer {v!r} is not one of "
                            f"tokenizers.variants ({', '.join(sorted(variants))})")
        elif variants[v]["quantizer"] not in GENERATOR_QUANTIZERS[g]:
            problems.append(f"config key {key}: generator {g} reads {' or '.join(GENERATOR_QUANTIZERS[g])} "
                            f"tokens, but tokenizer {v} has quantizer {variants[v]['quantizer']!r}")
    return problems


def load(path: str | Path, schema: str | Path, overrides: Mapping | None = None) -> dict:
    """Load ``config.yaml`` and resolve it with ``overrides`` (like ``--config``) on top."""
    config = yaml.safe_load(Path(path).read_text()) or {}
    return resolve(config, schema, [overrides] if overrides else [])


def _scalar(text: str) -> object:
    """A YAML scalar of a nested ``--config`` value: Snakemake's parser keeps every value
    inside a nested mapping as a string ('5', 'true', '1e-3')."""
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if value is None or isinstance(value, bool) else text


def parse_nested_overrides(overrides: Mapping) -> dict:
    """``--config`` values with the scalars inside nested mappings and lists parsed
    (``synthetic={"epochs": {"baseline": 5}}`` gives the integer 5). Top-level values are
    kept as Snakemake parsed them. A string that looks like a number or a boolean becomes
    one; to keep it a string, give it in a ``--configfile`` instead."""

    def walk(value: object) -> object:
        if isinstance(value, Mapping):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return _scalar(value) if isinstance(value, str) else value

    return {k: walk(v) if isinstance(v, (Mapping, list)) else v for k, v in overrides.items()}


def layered_config(workflow: object, schema: str | Path) -> dict:
    """:func:`resolve` for a Snakemake workflow: the Snakefile's ``configfile:`` (config.yaml)
    at the bottom, then its preset, the ``--configfile`` files in order and ``--config``
    (nested scalars parsed). Snakemake itself merges them all over config.yaml, which would
    put the preset above the user's files; this rebuilds the order from the workflow's
    settings. config.yaml given again with ``--configfile`` stays the bottom layer."""
    from snakemake.common.configfile import load_configfile

    settings = workflow.config_settings  # type: ignore[attr-defined]
    cli = [Path(f) for f in settings.configfiles]
    own = [Path(f) for f in workflow.configfiles[len(cli):]]  # type: ignore[attr-defined]
    base: dict = {}
    for path in own:
        base = deep_merge(base, load_configfile(path) or {})
    own_paths = {p.resolve() for p in own}
    layers = [load_configfile(p) or {} for p in cli if p.resolve() not in own_paths]
    overrides = dict(settings.config)
    if overrides:
        layers.append(parse_nested_overrides(overrides))
    return resolve(base, schema, layers)
