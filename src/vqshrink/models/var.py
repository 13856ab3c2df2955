"""VAR: the next-scale-prediction transformer (Tian et al. 2024, "Visual Autoregressive Modeling").

The paper (Sec. 6.1) trains a VAR of depth 16 on the tokens of its multi-scale tokenizer (128-px
images, 16x16 latent, scales ``patch_nums`` 1,2,3,4,5,6,8,10,13,16, codebook 16,384, token dim
Cvae = 32). The rest follows FoundationVision/VAR ``models/var.py``, ``models/basic_var.py``,
``models/__init__.py`` (``build_vae_var``) and ``trainer.py`` (notes Sec. 3.3); this is our own
code, not a copy.

- Size (``build_vae_var``): heads = depth, width = depth * 64, drop-path 0.1 * depth / 24 (linear
  over the blocks, 0 at the first), mlp_ratio 4, class dropout 0.1. Depth 16 -> width 1024,
  16 heads.
- Input: ``word_embed = Linear(Cvae, C)`` on the teacher-forcing CONTINUOUS features (the running
  f_hat area-downsampled to the next scale, :meth:`MultiScaleQuantizer.teacher_inputs`); the
  first scale's p_0^2 tokens are the class embedding (num_classes + 1 rows, the last one the
  unconditional class) plus ``pos_start``. Every token adds an absolute position embedding and
  its scale's level embedding. Init trunc-normal with std sqrt(1 / C / 3) (``init_std=-1``).
- Blocks: AdaLN self-attention. The class embedding -> SiLU -> Linear gives 6C (gamma1, gamma2,
  scale1, scale2, shift1, shift2); LayerNorm without affine;
  x + drop_path(attn(ln(x) (1 + scale1) + shift1) gamma1), the same for the FFN (GELU tanh).
  Attention normalises q and k to unit length and multiplies q by a learnable per-head scale
  exp(s), s initialised at log 4 and capped at log 100 (``attn_l2_norm=True``); without it the
  usual 1/sqrt(head_dim). qkv has a q and a v bias and no k bias. The head is one more AdaLN
  (scale, shift) then Linear(C, vocab).
- Init (``VAR.init_weights``): Linear/Embedding trunc-normal(init_std), biases 0; the head's
  weight x init_head (0.02); the final AdaLN's Linear x init_adaln (0.5); each block's AdaLN
  Linear: the gamma rows x init_adaln_gamma, the scale/shift rows x init_adaln; the attention
  output projection and the second FFN layer / sqrt(2 depth).
- Block-causal mask: a token of scale i attends to every token of the scales <= i.
- Optimiser (``train.py``, ``utils/lr_control.py`` ``filter_params``): AdamW weight decay on
  every matrix except the position / level embeddings and the attention scale
  (:attr:`VAR.NO_WEIGHT_DECAY`; the generator stage's ``param_groups``).
- Loss (``trainer.py``): cross-entropy over all L tokens with uniform weight (label smoothing 0.0
  by default); in training the class label is replaced by the unconditional id with p = 0.1.
- Sampling (``autoregressive_infer_cfg``): scale by scale with a KV cache over a batch doubled
  into a conditional and an unconditional half; at scale si the logits are
  (1 + t) cond - t uncond with t = cfg si / (S - 1) (guidance ramps up linearly over the scales,
  :func:`guidance_ramp`), then top-k / top-p; the sampled tokens update f_hat and give the next
  scale's input (:meth:`MultiScaleQuantizer.next_input`). README FID protocol: cfg 1.5,
  top_k 900, top_p 0.96.

The tokenizer's quantizer is kept as a frozen submodule (no gradients, always in eval mode), so
a VAR checkpoint is self-contained: it holds the codebook and phi convs that turn its sampled
tokens back into f_hat.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqshrink.models.labels import check_labels
from vqshrink.models.sampling import cfg_logits, sample_logits
from vqshrink.quantizers.multiscale import VAR_PATCH_NUMS, MultiScaleQuantizer


@dataclass
class VARConfig:
    vocab_size: int = 16_384  # paper Sec. 6.1: codebook 16,384
    num_classes: int = 100  # ImageNet-100 (the paper's class-conditional set)
    patch_nums: tuple[int, ...] = VAR_PATCH_NUMS  # VAR '256' schedule, last = 16x16 latent
    token_dim: int = 32  # Cvae: VAR build_vae_var Cvae=32
    depth: int = 16  # paper Sec. 6.1: VAR depth 16
    width: int | None = None  # None -> depth * 64 (build_vae_var)
    heads: int | None = None  # None -> depth (build_vae_var)
    mlp_ratio: float = 4.0  # build_vae_var
    drop_path: float | None = None  # None -> 0.1 * depth / 24 (build_vae_var)
    class_dropout: float = 0.1  # build_vae_var cond_drop_rate
    label_smoothing: float = 0.0  # VAR arg_util ls default
    attn_l2_norm: bool = True  # build_vae_var attn_l2_norm
    init_adaln: float = 0.5  # build_vae_var init_adaln
    init_adaln_gamma: float = 1e-3  # VAR README d16 command --alng=1e-3 (build_vae_var: 1e-5)
    init_head: float = 0.02  # build_vae_var init_head
    init_std: float = -1.0  # build_vae_var: -1 -> sqrt(1 / C / 3)
    norm_eps: float = 1e-6  # VAR norm_eps

    def __post_init__(self) -> None:  # JSON / YAML give lists
        self.patch_nums = tuple(int(p) for p in self.patch_nums)
        if self.width is None:
            self.width = self.depth * 64
        if self.heads is None:
            self.heads = self.depth
        if self.drop_path is None:
            self.drop_path = 0.1 * self.depth / 24
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not a multiple of heads {self.heads}")

    @property
    def num_tokens(self) -> int:
        return sum(p * p for p in self.patch_nums)

    def to_dict(self) -> dict:
        return asdict(self)


def guidance_ramp(cfg: float, scale_index: int, num_scales: int) -> float:
    """VAR's guidance weight at scale ``scale_index``: t = cfg * si / (S - 1) (0 at the first
    scale, cfg at the last); guided logits = (1 + t) cond - t uncond = ``cfg_logits(.., t)``."""
    if num_scales <= 1:
        return 0.0
    return cfg * scale_index / (num_scales - 1)


def scale_ids(patch_nums: tuple[int, ...]) -> Tensor:
    """(L,) scale index of every token of the flat sequence."""
    return torch.cat([torch.full((p * p,), i, dtype=torch.long) for i, p in enumerate(patch_nums)])


def block_causal_mask(patch_nums: tuple[int, ...]) -> Tensor:
    """(L, L) bool, True where query token q may attend key token k: scale(k) <= scale(q)."""
    s = scale_ids(tuple(patch_nums))
    return s[None, :] <= s[:, None]


def _drop_path(x: Tensor, p: float, training: bool) -> Tensor:
    """Per-sample stochastic depth (global RNG): zero the branch for a whole sample w.p. p."""
    if p <= 0.0 or not training:
        return x
    keep = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device) >= p
    return x * keep.to(x.dtype) / (1.0 - p)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int, l2_norm: bool) -> None:
        super().__init__()
        self.heads, self.head_dim, self.l2_norm = heads, dim // heads, l2_norm
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))  # VAR: q and v biases, no k bias
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("zero_k_bias", torch.zeros(dim), persistent=False)
        if l2_norm:
            self.scale_mul = nn.Parameter(torch.full((1, heads, 1, 1), math.log(4.0)))
            self.max_scale_mul = math.log(100.0)
        self.proj = nn.Linear(dim, dim)
        self.cache: tuple[Tensor, Tensor] | None = None
        self.caching = False

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        b, n, c = x.shape
        bias = torch.cat([self.q_bias, self.zero_k_bias, self.v_bias])
        qkv = F.linear(x, self.qkv.weight, bias).view(b, n, 3, self.heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, n, hd)
        if self.l2_norm:
            mul = self.scale_mul.clamp(max=self.max_scale_mul).exp()
            q = (F.normalize(q, dim=-1) * mul).to(v.dtype)
            k = F.normalize(k, dim=-1).to(v.dtype)
            scale = 1.0
        else:
            scale = self.head_dim**-0.5
        if self.caching:
            if self.cache is not None:
                k = torch.cat([self.cache[0], k], dim=2)
                v = torch.cat([self.cache[1], v], dim=2)
            self.cache = (k, v)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class FFN(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class AdaLNBlock(nn.Module):
    def __init__(self, cfg: VARConfig, drop_path: float) -> None:
        super().__init__()
        c = cfg.width
        self.dim, self.drop_path = c, drop_path
        self.ln = nn.LayerNorm(c, eps=cfg.norm_eps, elementwise_affine=False)
        self.attn = SelfAttention(c, cfg.heads, cfg.attn_l2_norm)
        self.ffn = FFN(c, round(c * cfg.mlp_ratio))
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(c, 6 * c))

    def forward(self, x: Tensor, cond: Tensor, mask: Tensor | None) -> Tensor:
        g1, g2, s1, s2, b1, b2 = self.ada_lin(cond).view(-1, 1, 6, self.dim).unbind(2)
        h = self.attn(self.ln(x) * (1 + s1) + b1, mask)
        x = x + _drop_path(h * g1, self.drop_path, self.training)
        h = self.ffn(self.ln(x) * (1 + s2) + b2)
        return x + _drop_path(h * g2, self.drop_path, self.training)


class AdaLNHead(nn.Module):
    def __init__(self, cfg: VARConfig) -> None:
        super().__init__()
        c = cfg.width
        self.dim = c
        self.ln = nn.LayerNorm(c, eps=cfg.norm_eps, elementwise_affine=False)
        self.ada_lin = nn.Sequential(nn.SiLU(), nn.Linear(c, 2 * c))
        self.head = nn.Linear(c, cfg.vocab_size)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        scale, shift = self.ada_lin(cond).view(-1, 1, 2, self.dim).unbind(2)
        return self.head(self.ln(x) * (1 + scale) + shift)


class VAR(nn.Module):
    # No weight decay on these (and on every bias / 1-D parameter): VAR train.py's nowd_keys
    # for filter_params (utils/lr_control.py) that exist here: pos_1LC (here ``pos``),
    # pos_start, lvl_embed, scale_mul. Its other keys (cls_token, gamma, beta, ...) name
    # parameters this model does not have; class_emb and word_embed ARE decayed, as in VAR.
    NO_WEIGHT_DECAY = ("pos", "pos_start", "lvl_embed", "scale_mul")

    def __init__(self, cfg: VARConfig, quantizer: MultiScaleQuantizer) -> None:
        super().__init__()
        if tuple(quantizer.patch_nums) != tuple(cfg.patch_nums):
            raise ValueError(f"quantizer patch_nums {quantizer.patch_nums} != {cfg.patch_nums}")
        if quantizer.dim != cfg.token_dim:
            raise ValueError(f"quantizer dim {quantizer.dim} != token_dim {cfg.token_dim}")
        if quantizer.codebook_size != cfg.vocab_size:
            raise ValueError(
                f"quantizer codebook size {quantizer.codebook_size} != vocab {cfg.vocab_size}"
            )
        self.cfg = cfg
        c, n = cfg.width, cfg.num_tokens
        self.first_l = cfg.patch_nums[0] ** 2
        self.quantizer = quantizer
        self.quantizer.requires_grad_(False)
        self.quantizer.eval()

        self.class_emb = nn.Embedding(cfg.num_classes + 1, c)  # last row: unconditional
        self.pos_start = nn.Parameter(torch.empty(1, self.first_l, c))
        self.pos = nn.Parameter(torch.empty(1, n, c))
        self.lvl_embed = nn.Embedding(len(cfg.patch_nums), c)
        self.word_embed = nn.Linear(cfg.token_dim, c)
        dpr = torch.linspace(0, cfg.drop_path, cfg.depth).tolist()
        self.blocks = nn.ModuleList(AdaLNBlock(cfg, p) for p in dpr)
        self.head = AdaLNHead(cfg)
        self.register_buffer("lvl_ids", scale_ids(cfg.patch_nums), persistent=False)
        self.register_buffer("mask", block_causal_mask(cfg.patch_nums), persistent=False)
        self.init_weights()

    # ---------------------------------------------------------------------------- setup
    @torch.no_grad()
    def init_weights(self) -> None:
        cfg, c = self.cfg, self.cfg.width
        std = cfg.init_std if cfg.init_std > 0 else math.sqrt(1 / c / 3)
        for name, m in self.named_modules():
            if name.startswith("quantizer"):
                continue
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=std)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.Embedding):
                nn.init.trunc_normal_(m.weight, std=std)
        for p in (self.pos_start, self.pos):
            nn.init.trunc_normal_(p, std=std)
        self.head.head.weight.mul_(cfg.init_head)
        self.head.ada_lin[-1].weight.mul_(cfg.init_adaln)
        self.head.ada_lin[-1].bias.zero_()
        rescale = math.sqrt(2 * cfg.depth)
        for blk in self.blocks:
            blk.attn.proj.weight.div_(rescale)
            blk.ffn.fc2.weight.div_(rescale)
            lin = blk.ada_lin[-1]
            lin.weight[: 2 * c].mul_(cfg.init_adaln_gamma)  # gamma1, gamma2
            lin.weight[2 * c :].mul_(cfg.init_adaln)  # scales, shifts
            lin.bias.zero_()

    def train(self, mode: bool = True) -> VAR:
        super().train(mode)
        self.quantizer.eval()  # the tokenizer's quantizer is frozen: always eval
        return self

    def _check_labels(self, labels: Tensor) -> None:
        check_labels(labels, self.cfg.num_classes)

    # ---------------------------------------------------------------------------- forward
    def _logits(self, x_in: Tensor, class_ids: Tensor) -> Tensor:
        """Full block-causal pass. x_in (B, L - p_0^2, Cvae) teacher inputs, class_ids (B,) in
        [0, num_classes] (num_classes = unconditional) -> logits (B, L, V), float32."""
        b = class_ids.shape[0]
        with torch.autocast(device_type=x_in.device.type, enabled=False):
            cond = self.class_emb(class_ids)
            sos = cond[:, None, :].expand(b, self.first_l, -1) + self.pos_start
            x = torch.cat([sos, self.word_embed(x_in.float())], dim=1)
            x = x + self.lvl_embed(self.lvl_ids)[None] + self.pos
        for blk in self.blocks:
            x = blk(x, cond, self.mask)
        return self.head(x.float(), cond).float()

    def logits(self, tokens: Tensor, labels: Tensor, *, unconditional: bool = False) -> Tensor:
        """Teacher-forced logits (B, L, V) of a token sequence (B, L), no class dropout;
        ``unconditional`` uses the unconditional class for every row."""
        self._check_labels(labels)
        x_in = self.quantizer.teacher_inputs(self.quantizer.split_scales(tokens))
        ids = torch.full_like(labels, self.cfg.num_classes) if unconditional else labels
        return self._logits(x_in, ids)

    def forward(self, tokens: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Training loss: cross-entropy over all L tokens (uniform weight); in training mode the
        label is replaced by the unconditional id w.p. ``class_dropout`` (global RNG)."""
        self._check_labels(labels)
        if self.training and self.cfg.class_dropout > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.cfg.class_dropout
            labels = torch.where(drop, torch.full_like(labels, self.cfg.num_classes), labels)
        x_in = self.quantizer.teacher_inputs(self.quantizer.split_scales(tokens))
        logits = self._logits(x_in, labels)
        flat = logits.reshape(-1, logits.shape[-1])
        loss = F.cross_entropy(flat, tokens.reshape(-1), label_smoothing=self.cfg.label_smoothing)
        with torch.no_grad():
            acc = (flat.argmax(-1) == tokens.reshape(-1)).float().mean()
        return {"loss": loss, "acc": acc}

    # ---------------------------------------------------------------------------- sampling
    def _set_caching(self, on: bool) -> None:
        for blk in self.blocks:
            blk.attn.caching = on
            blk.attn.cache = None

    @torch.no_grad()
    def sample(
        self,
        labels: Tensor,
        *,
        generator: torch.Generator,
        cfg: float = 1.5,  # VAR README FID protocol
        top_k: int = 900,  # VAR README FID protocol
        top_p: float = 0.96,  # VAR README FID protocol
        temperature: float = 1.0,
        _return_logits: bool = False,
    ) -> Tensor:
        """Tokens (B, L) for class ``labels`` (B,), scale by scale with a KV cache and the
        ramped classifier-free guidance; all randomness from ``generator``. The caller puts the
        model in eval(). ``_return_logits`` (tests) also returns the guided logits per scale."""
        self._check_labels(labels)
        b, pn = labels.shape[0], self.cfg.patch_nums
        n_scales = len(pn)
        ids = torch.cat([labels, torch.full_like(labels, self.cfg.num_classes)])
        dev = labels.device
        with torch.autocast(device_type=dev.type, enabled=False):
            cond = self.class_emb(ids)  # (2B, C): conditional half, unconditional half
            lvl_pos = self.lvl_embed(self.lvl_ids)[None] + self.pos  # (1, L, C)
            x = cond[:, None, :].expand(2 * b, self.first_l, -1) + self.pos_start
            x = x + lvl_pos[:, : self.first_l]
        f_hat, out, all_logits, at = None, [], [], 0
        self._set_caching(True)
        try:
            for si, p in enumerate(pn):
                at += p * p
                for blk in self.blocks:
                    x = blk(x, cond, None)  # queries of scale si see every cached key
                logits = self.head(x.float(), cond).float()
                t = guidance_ramp(cfg, si, n_scales)
                guided = cfg_logits(logits[:b], logits[b:], t)
                all_logits.append(guided)
                idx = sample_logits(
                    guided, generator, temperature=temperature, top_k=top_k, top_p=top_p
                ).view(b, p, p)
                out.append(idx)
                f_hat, nxt = self.quantizer.next_input(si, f_hat, idx)
                if nxt is not None:
                    with torch.autocast(device_type=dev.type, enabled=False):
                        nxt = self.word_embed(nxt.float()) + lvl_pos[:, at : at + pn[si + 1] ** 2]
                    x = nxt.repeat(2, 1, 1)
        finally:
            self._set_caching(False)
        tokens = self.quantizer.flatten_scales(out)
        if _return_logits:
            return tokens, all_logits
        return tokens
