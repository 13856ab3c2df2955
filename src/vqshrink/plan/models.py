"""The models' config dataclasses, read from their source without importing torch: the plan
(and the config loader) run at Snakemake parse time, where no model is built.

The dataclasses in :mod:`vqshrink.models` are the one source of each model's defaults,
and their defaults are the paper's models. ``config.yaml`` states only what differs (VAR's
32-channel tokenizer latent, a preset's smaller models); the other fields of a tokenizer
architecture or a generator model take their dataclass default here, when the config is
resolved (:func:`vqshrink.config.resolve`), so every stage, record and check sees the whole
model.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

MODELS_DIR = Path(__file__).resolve().parents[1] / "models"

# Generator family -> (module under vqshrink.models, config dataclass, model class).
GENERATOR_CLASSES = {
    "maskgit": ("maskgit", "MaskGITConfig", "MaskGIT"),
    "var": ("var", "VARConfig", "VAR"),
    "llamagen": ("llamagen", "LlamaGenConfig", "LlamaGen"),
}

# Generator config fields the stages fill in from the tokens, never from config.
TOKEN_FIELDS = frozenset({"vocab_size", "num_classes", "token_shape", "patch_nums", "token_dim"})

# Tokenizer family -> (module, config dataclass, the fields an architecture entry may state,
# in the order the stages' settings list them; workflow/schemas/config.schema.yaml lists
# the same). The others are the plan's per run (resolution, codebook size, quantizer, beta,
# scales) or implementation details (in_channels, the distance search's memory budget).
ARCHITECTURES = {
    "vqgan": ("vqgan", "VQGANConfig", ("ch", "ch_mult", "num_res_blocks", "attn_resolutions",
                                        "dropout", "z_channels", "embed_dim")),
    "cifar_vqvae": ("cifar_vqvae", "CifarVQVAEConfig",
                    ("hidden", "res_hidden", "res_blocks", "embed_dim")),
}


@functools.cache
def _module(name: str) -> ast.Module:
    path = MODELS_DIR / f"{name}.py"
    return ast.parse(path.read_text(), filename=str(path))


def _class_def(module: str, name: str) -> ast.ClassDef:
    return next(n for n in _module(module).body
                if isinstance(n, ast.ClassDef) and n.name == name)


def _fields(module: str, cls: str) -> list[ast.AnnAssign]:
    return [n for n in _class_def(module, cls).body
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)]


def dataclass_defaults(module: str, cls: str, names: tuple[str, ...]) -> dict[str, Any]:
    """The literal defaults of fields ``names`` of dataclass ``cls`` in
    ``vqshrink.models.<module>``, tuples as lists (as YAML gives them)."""
    defaults = {}
    for node in _fields(module, cls):
        if node.target.id in names:
            value = ast.literal_eval(node.value)
            defaults[node.target.id] = list(value) if isinstance(value, tuple) else value
    missing = [n for n in names if n not in defaults]
    if missing:
        raise KeyError(f"{cls} in vqshrink/models/{module}.py has no default for {missing}")
    return defaults


def architecture(entry: Mapping[str, Any]) -> dict[str, Any]:
    """An architecture entry of the config with every field its family's config dataclass
    defaults filled in: ``family``, then the fields in :data:`ARCHITECTURES` order."""
    module, cls, names = ARCHITECTURES[entry["family"]]
    defaults = dataclass_defaults(module, cls, names)
    return {"family": entry["family"], **{n: entry.get(n, defaults[n]) for n in names}}


def generator_model(family: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """``generators.models.<family>.model`` with every field of the family's config
    dataclass but the token fields at its default, in field order. Keys the dataclass does
    not have are kept, for the plan's check to name them
    (:meth:`vqshrink.plan.experiments.Plan.check_generator_keys`)."""
    module, cls, _ = GENERATOR_CLASSES[family]
    names = tuple(n for n in model_config_fields(family) if n not in TOKEN_FIELDS)
    defaults = dataclass_defaults(module, cls, names)
    return {**{n: entry.get(n, defaults[n]) for n in names},
            **{k: v for k, v in entry.items() if k not in defaults}}


def model_config_fields(family: str) -> list[str]:
    """The fields of a generator's config dataclass."""
    module, cls, _ = GENERATOR_CLASSES[family]
    return [n.target.id for n in _fields(module, cls)]


def sampling_keywords(family: str) -> list[str]:
    """The keyword-only options of a generator's ``sample`` (no ``generator``, no ``_x``)."""
    module, _, model = GENERATOR_CLASSES[family]
    sample = next(n for n in _class_def(module, model).body
                  if isinstance(n, ast.FunctionDef) and n.name == "sample")
    return [a.arg for a in sample.args.kwonlyargs
            if a.arg != "generator" and not a.arg.startswith("_")]
