"""The class-conditional generators' registry and checkpoint files (MaskGIT, VAR, LlamaGen;
paper Sec. 6.1): a generator built for a tokenizer's tokens, saved with its config and loaded
back beside its tokenizer. Kept apart from :mod:`vqshrink.models.registry` so that the
tokenizer stages' code fingerprint (:mod:`vqshrink.code_version`) leaves out the generator
models.
"""

from __future__ import annotations

import torch
from torch import nn

from vqshrink.io import load_torch, save_torch
from vqshrink.models.registry import load_model

GENERATORS = ("maskgit", "var", "llamagen")


def model_classes(family: str) -> tuple[type, type]:
    """(config dataclass, model class) of a generator family."""
    if family == "maskgit":
        from vqshrink.models.maskgit import MaskGIT, MaskGITConfig

        return MaskGITConfig, MaskGIT
    if family == "var":
        from vqshrink.models.var import VAR, VARConfig

        return VARConfig, VAR
    if family == "llamagen":
        from vqshrink.models.llamagen import LlamaGen, LlamaGenConfig

        return LlamaGenConfig, LlamaGen
    raise ValueError(f"unknown generator {family!r}; known: {GENERATORS}")


def build_generator(family: str, model_cfg: dict, *, tokenizer: nn.Module, token_shape: tuple,
                    num_classes: int, vocab_size: int) -> tuple[nn.Module, dict]:
    """A generator for ``tokenizer``'s tokens, which the token files hold in per-image shape
    ``token_shape`` (the tokenizer's ``token_layout.file_shape``); returns (model, full config
    dict). VAR predicts VAR's scales (and reads its quantizer), the others one h x w map."""
    cfg_cls, model_cls = model_classes(family)
    layout = tokenizer.token_layout
    wanted = "scales" if family == "var" else "map"
    if layout.kind != wanted or tuple(token_shape) != layout.file_shape:
        need = "VAR's multi-scale tokens" if wanted == "scales" else "one h x w token map"
        raise ValueError(f"{family} needs {need} per image; the tokenizer's layout is "
                         f"{layout.describe()} ({layout.length} tokens) and the token files "
                         f"hold (N, {', '.join(map(str, token_shape))})")
    if family == "var":
        shape = {"patch_nums": layout.patch_nums, "token_dim": tokenizer.quantizer.dim}
    else:
        shape = {"token_shape": layout.maps[0]}
    cfg = cfg_cls(**{**model_cfg, **shape, "vocab_size": vocab_size, "num_classes": num_classes})
    if family == "var":
        return model_cls(cfg, tokenizer.quantizer), cfg.to_dict()
    return model_cls(cfg), cfg.to_dict()


def save_generator(model: nn.Module, family: str, cfg: dict, path: str, **extra) -> None:
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_torch({"family": family, "config": cfg, "model": state, **extra}, path)


def load_generator(path: str, tokenizer: str, device: torch.device | str = "cpu"
                   ) -> tuple[nn.Module, nn.Module, dict]:
    """(generator, tokenizer, generator checkpoint) from their files, on ``device``."""
    tok, _ = load_model(tokenizer, device)
    blob = load_torch(path)
    cfg_cls, model_cls = model_classes(blob["family"])
    cfg = cfg_cls(**blob["config"])
    model = model_cls(cfg, tok.quantizer) if blob["family"] == "var" else model_cls(cfg)
    model.load_state_dict(blob["model"])
    return model.to(device), tok, blob
