"""Generator details that follow one named reference: VAR's weight-decay groups
(FoundationVision/VAR ``filter_params``) and MaskGIT's input / output layers
(valeoai/Maskgit-pytorch v1 ``MaskTransformer``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vqshrink.models.maskgit import MaskGIT, MaskGITConfig
from vqshrink.models.var import VAR, VARConfig
from vqshrink.quantizers.multiscale import MultiScaleQuantizer
from vqshrink.stages.generator import param_groups

# VAR train.py: the nowd_keys passed to filter_params, with VAR's name of the absolute
# position embedding (pos_1LC) written as this model's (pos).
VAR_NOWD_KEYS = {"cls_token", "start_token", "task_token", "cfg_uncond", "pos_embed", "pos",
                 "pos_start", "start_pos", "lvl_embed", "gamma", "beta", "ada_gss", "moe_bias",
                 "scale_mul"}


def var_filter_params(model: nn.Module) -> tuple[set[str], set[str]]:
    """VAR utils/lr_control.py filter_params, by name: (decayed, not decayed). VAR matches a
    key anywhere in the name; here a key must be a whole part of it (so ``pos`` does not
    catch an unrelated name that merely contains the letters)."""
    decay, no_decay = set(), set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim == 1 or name.endswith("bias") or VAR_NOWD_KEYS & set(name.split(".")):
            no_decay.add(name)
        else:
            decay.add(name)
    return decay, no_decay


def names_of(model: nn.Module, group: dict) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_var_weight_decay_groups_follow_var_filter_params():
    torch.manual_seed(0)
    cfg = VARConfig(vocab_size=16, num_classes=3, patch_nums=(1, 2, 4), token_dim=4, depth=2,
                    width=32, heads=2)
    model = VAR(cfg, MultiScaleQuantizer(16, 4, patch_nums=(1, 2, 4)))
    decay_group, no_decay_group = param_groups(model, 0.05)
    assert decay_group["weight_decay"] == 0.05 and no_decay_group["weight_decay"] == 0.0
    decay, no_decay = var_filter_params(model)
    assert names_of(model, decay_group) == decay
    assert names_of(model, no_decay_group) == no_decay
    assert {"pos", "pos_start", "lvl_embed.weight", "blocks.0.attn.scale_mul",
            "blocks.1.attn.scale_mul"} <= no_decay  # 2-D or 4-D, yet exempt in VAR
    assert {"class_emb.weight", "word_embed.weight", "head.head.weight"} <= decay
    assert not any(n.startswith("quantizer") for n in decay | no_decay)  # frozen


def test_other_generators_keep_the_matrix_only_rule():
    torch.manual_seed(0)
    model = MaskGIT(MaskGITConfig(vocab_size=16, num_classes=4, token_shape=(4, 4), depth=1,
                                  width=32, heads=4, mlp_dim=64))
    decay_group, no_decay_group = param_groups(model, 0.1)
    exempt = {n for n, p in model.named_parameters() if p.ndim < 2 or n.endswith("bias")}
    assert names_of(model, no_decay_group) == exempt  # incl. the (positions, codes) bias
    assert names_of(model, decay_group) == {n for n, _ in model.named_parameters()} - exempt


def test_maskgit_network_is_valeoai_v1_first_and_last_layer():
    """Embedding + position -> first_layer -> pre-LN blocks -> last_layer on the image
    positions -> tied logits + per-position bias, computed here step by step."""
    torch.manual_seed(1)
    cfg = MaskGITConfig(vocab_size=16, num_classes=4, token_shape=(4, 4), depth=2, width=32,
                        heads=4, mlp_dim=64, dropout=0.1)
    model = MaskGIT(cfg).eval()
    kinds = [type(m) for m in model.first_layer]
    assert kinds == [nn.LayerNorm, nn.Dropout, nn.Linear, nn.GELU, nn.LayerNorm, nn.Dropout,
                     nn.Linear]
    assert [type(m) for m in model.last_layer] == [nn.LayerNorm, nn.Dropout, nn.Linear, nn.GELU,
                                                   nn.LayerNorm]
    assert all(m.eps == 1e-12 for m in (*model.first_layer, *model.last_layer)
               if isinstance(m, nn.LayerNorm))
    assert {m.p for m in (*model.first_layer, *model.last_layer)
            if isinstance(m, nn.Dropout)} == {0.1}
    with torch.no_grad():
        for p in (model.first_layer[2].bias, model.last_layer[2].bias, model.bias):
            p.normal_()
    tokens = torch.randint(0, 17, (3, 16), generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 3, 4])
    ids = torch.cat([tokens, (labels + cfg.vocab_size + 1)[:, None]], dim=1)
    emb = model.tok_emb.weight
    x = emb[ids] + model.pos_emb
    ln = lambda t, m: F.layer_norm(t, (32,), m.weight, m.bias, eps=1e-12)  # noqa: E731
    f = model.first_layer
    x = f[6](ln(F.gelu(f[2](ln(x, f[0]))), f[4]))
    for blk in model.blocks:
        x = blk(x)
    g = model.last_layer
    x = ln(F.gelu(g[2](ln(x[:, :-1], g[0]))), g[4])
    expected = x @ emb[:16].T + model.bias
    torch.testing.assert_close(model.logits(tokens, labels), expected)
