"""The image tokenizer: taming-transformers' VQGAN encoder/decoder around a pluggable quantizer.

Paper Sec. 6.1: "we follow the tokenizer framework proposed in VQGAN ... resize all input images
to 128x128 ... reduce the backbone's channel size to 64 ... one downsampling layer and its
upsampling layer are removed" (16x16 latent), codebook 16,384. Without the paper's code, the
remaining numbers come from taming ``configs/imagenet_vqgan.yaml`` (ch_mult [1,1,2,2,4],
num_res_blocks 2, attn_resolutions [16], z_channels 256, embed_dim 256, dropout 0). Removing one
level of ch_mult gives 3 down/upsamplings; the level dropped is the first "1", as LlamaGen's
VQ_8 ([1,2,2,4] from VQ_16's [1,1,2,2,4]) and SimVQ's 128-px config ([1,2,2,4]) do.

Blocks (taming ``taming/modules/diffusionmodules/model.py``): ResnetBlock = GroupNorm(32,
eps 1e-6) -> swish -> conv3x3 -> GroupNorm -> swish -> dropout -> conv3x3, 1x1 shortcut when the
width changes; AttnBlock = single-head self-attention with 1x1 q/k/v/proj convs; downsample =
pad (0,1,0,1) + conv3x3 stride 2; upsample = nearest x2 + conv3x3; middle = Res-Attn-Res; the
decoder has num_res_blocks + 1 blocks per level. quant_conv / post_quant_conv are 1x1 (taming
``VQModel``; VAR uses 3x3). GroupNorm(32) needs every width to be a multiple of 32.

Quantizers (``quantizer``): "vq" = learned codebook with codebook + 0.25 commitment loss (the
paper's VQ-VAE, Sec. 6), "simvq" = SimVQ, "multiscale" = VAR's residual multi-scale quantizer,
"multiscale_simvq" = VAR's quantizer over a SimVQ codebook W(C) (Table 2, "+ SimVQ").
``forward(x, quantize=False)`` is the continuous autoencoder of the deferred schedule's first
phase: the same modules minus the quantizer, so its weights load unchanged into the VQ model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqshrink.models.tokens import TokenLayout
from vqshrink.quantizers.multiscale import VAR_PATCH_NUMS, MultiScaleQuantizer, MultiScaleSimVQ
from vqshrink.quantizers.simvq import SimVQ
from vqshrink.quantizers.vq import VectorQuantizer, VQOutput

QUANTIZERS = ("vq", "simvq", "multiscale", "multiscale_simvq")


@dataclass
class VQGANConfig:
    resolution: int = 128  # paper Sec. 6.1: images resized to 128x128
    in_channels: int = 3
    ch: int = 64  # paper Sec. 6.1: backbone channels reduced to 64 (taming: 128)
    # taming [1,1,2,2,4] minus one level (Sec. 6.1), as LlamaGen VQ_8 and SimVQ 128-B configs
    ch_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2  # taming imagenet_vqgan.yaml (decoder: +1 per level)
    attn_resolutions: tuple[int, ...] = (16,)  # taming imagenet_vqgan.yaml: the lowest resolution
    dropout: float = 0.0  # taming imagenet_vqgan.yaml
    z_channels: int = 256  # taming imagenet_vqgan.yaml
    embed_dim: int = 256  # token dimension: taming embed_dim 256 (MaskGIT token_size 256 too)
    codebook_size: int = 16_384  # paper Sec. 6.1
    quantizer: str = "vq"  # "vq" | "simvq" | "multiscale" | "multiscale_simvq"
    beta: float = 0.25  # commitment weight (taming, SimVQ, VAR: 0.25)
    patch_nums: tuple[int, ...] = VAR_PATCH_NUMS  # multiscale only: VAR scales, last = 16
    quant_resi: float = 0.5  # multiscale only: VAR phi ratio
    share_quant_resi: int = 4  # multiscale only: VAR's 4 shared phi convs
    memory_budget_mb: float = 64.0  # nearest-code search: cap on one distance block

    def __post_init__(self) -> None:  # YAML gives lists
        self.ch_mult = tuple(self.ch_mult)
        self.attn_resolutions = tuple(self.attn_resolutions)
        self.patch_nums = tuple(self.patch_nums)
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {QUANTIZERS}, got {self.quantizer!r}")

    @property
    def latent_resolution(self) -> int:
        return self.resolution // 2 ** (len(self.ch_mult) - 1)

    def to_dict(self) -> dict:
        return asdict(self)


def build_quantizer(cfg: VQGANConfig) -> nn.Module:
    k, d = cfg.codebook_size, cfg.embed_dim
    if cfg.quantizer == "vq":
        return VectorQuantizer(
            k, d, beta=cfg.beta, ema_decay=None, memory_budget_mb=cfg.memory_budget_mb
        )
    if cfg.quantizer == "simvq":
        return SimVQ(k, d, beta=cfg.beta, memory_budget_mb=cfg.memory_budget_mb)
    if cfg.patch_nums[-1] != cfg.latent_resolution:
        raise ValueError(
            f"last scale {cfg.patch_nums[-1]} must equal the latent size {cfg.latent_resolution}"
        )
    cls = MultiScaleSimVQ if cfg.quantizer == "multiscale_simvq" else MultiScaleQuantizer
    return cls(
        k,
        d,
        patch_nums=cfg.patch_nums,
        beta=cfg.beta,
        quant_resi=cfg.quant_resi,
        share_quant_resi=cfg.share_quant_resi,
        memory_budget_mb=cfg.memory_budget_mb,
    )


# ----------------------------------------------------------------------------- blocks


def Normalize(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = Normalize(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = Normalize(c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = Normalize(c)
        self.q, self.k, self.v = (nn.Conv2d(c, c, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (m(y).reshape(b, 1, c, h * w).transpose(2, 3) for m in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(c)) v, as taming
        return x + self.proj_out(y.transpose(2, 3).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One resolution of the encoder or decoder: res blocks (+ attention), then resampling."""

    def __init__(
        self, c_in: int, c_out: int, n_blocks: int, attn: bool, resample: nn.Module, dropout: float
    ) -> None:
        super().__init__()
        self.block = nn.ModuleList(
            ResnetBlock(c_in if i == 0 else c_out, c_out, dropout) for i in range(n_blocks)
        )
        self.attn = nn.ModuleList(AttnBlock(c_out) for _ in range(n_blocks)) if attn else None
        self.resample = resample

    def forward(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if self.attn is not None:
                x = self.attn[i](x)
        return self.resample(x)


class Middle(nn.Module):
    def __init__(self, c: int, dropout: float) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(c, c, dropout)
        self.attn_1 = AttnBlock(c)
        self.block_2 = ResnetBlock(c, c, dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Encoder(nn.Module):
    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        res, c_in, levels = cfg.resolution, cfg.ch, []
        for i, c_out in enumerate(widths):
            last = i == len(widths) - 1
            down = nn.Identity() if last else Downsample(c_out)
            attn = res in cfg.attn_resolutions
            levels.append(Level(c_in, c_out, cfg.num_res_blocks, attn, down, cfg.dropout))
            c_in, res = c_out, res if last else res // 2
        self.down = nn.ModuleList(levels)
        self.mid = Middle(c_in, cfg.dropout)
        self.norm_out = Normalize(c_in)
        self.conv_out = nn.Conv2d(c_in, cfg.z_channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        widths = [cfg.ch * m for m in cfg.ch_mult]
        c_in, res = widths[-1], cfg.latent_resolution
        self.conv_in = nn.Conv2d(cfg.z_channels, c_in, 3, padding=1)
        self.mid = Middle(c_in, cfg.dropout)
        levels = []
        for i in reversed(range(len(widths))):  # lowest resolution first
            up = Upsample(widths[i]) if i > 0 else nn.Identity()
            attn = res in cfg.attn_resolutions
            levels.append(Level(c_in, widths[i], cfg.num_res_blocks + 1, attn, up, cfg.dropout))
            c_in, res = widths[i], res * 2 if i > 0 else res
        self.up = nn.ModuleList(levels)
        self.norm_out = Normalize(c_in)
        self.conv_out = nn.Conv2d(c_in, cfg.in_channels, 3, padding=1)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in self.up:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ----------------------------------------------------------------------------- tokenizer


class TokenizerOutput(NamedTuple):
    x_hat: Tensor  # reconstruction (B, 3, H, W), same range as the input ([-1, 1])
    z: Tensor  # pre-quantization embeddings (B, D, h, w), quant_conv output
    indices: Tensor | list[Tensor] | None  # (B, h, w); multiscale [(B, p_k, p_k)]; None: continuous
    vq_loss: Tensor  # quantizer loss (0 without quantization)
    perplexity: Tensor  # exp(entropy) of this batch's token usage (0 without quantization)


class QuantizedAutoencoder(nn.Module):
    """What every image tokenizer shares: quantization in float32 (channels-first in and
    out), the continuous path of the deferred schedule (``quantize=False``), embeddings for
    the k-means init, and index maps both ways. Subclasses provide ``encoder``,
    ``quant_conv``, ``quantizer``, ``decoder``, ``decode`` and ``last_layer``.
    """

    def encode(self, x: Tensor) -> Tensor:
        """Continuous embeddings (B, D, h, w)."""
        return self.quant_conv(self.encoder(x))

    @property
    def multiscale(self) -> bool:
        return isinstance(self.quantizer, MultiScaleQuantizer)

    def quantize(self, z: Tensor) -> VQOutput:
        """Quantize (B, D, h, w) embeddings in float32; z_q comes back channels-first."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            if self.multiscale:
                return self.quantizer(z.float())
            q = self.quantizer(z.float().permute(0, 2, 3, 1))
            return q._replace(z_q=q.z_q.permute(0, 3, 1, 2))

    def forward(self, x: Tensor, quantize: bool = True) -> TokenizerOutput:
        z = self.encode(x)
        if not quantize:
            zero = z.new_zeros((), dtype=torch.float32)
            return TokenizerOutput(self.decode(z), z, None, zero, zero)
        q = self.quantize(z)
        return TokenizerOutput(self.decode(q.z_q), z, q.indices, q.loss, q.perplexity)

    @torch.no_grad()
    def embeddings(self, x: Tensor) -> Tensor:
        """Pre-quantization vectors (B*h*w, D) for the k-means codebook init. For the
        multi-scale quantizer these are the full-resolution features f (before any residual)."""
        z = self.encode(x).float()
        return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])

    @property
    def token_layout(self) -> TokenLayout:
        """Where an image's L tokens sit (models/tokens.py)."""
        if self.multiscale:
            return TokenLayout.scales(self.quantizer.patch_nums)
        side = self.cfg.latent_resolution
        return TokenLayout.single(side, side)

    @torch.no_grad()
    def encode_tokens(self, x: Tensor) -> Tensor:
        """Flat tokens (B, L) of images, in :attr:`token_layout`."""
        return self.token_layout.flat(self.encode_indices(x))

    @torch.no_grad()
    def decode_tokens(self, tokens: Tensor) -> Tensor:
        """Images from flat tokens (B, L) (or the token files' (B, *file_shape))."""
        maps = self.token_layout.split(tokens)
        return self.decode_indices(maps if self.multiscale else maps[0])

    @torch.no_grad()
    def encode_indices(self, x: Tensor) -> Tensor | list[Tensor]:
        """Token map (B, h, w); multiscale: list of (B, p_k, p_k), small to large."""
        z = self.encode(x)
        if self.multiscale:
            return self.quantizer.encode_indices(z.float())
        return self.quantize(z).indices

    @torch.no_grad()
    def decode_indices(self, indices: Tensor | list[Tensor]) -> Tensor:
        """Images from token maps (as ``encode_indices`` returns them)."""
        with torch.autocast(device_type=self.last_layer.device.type, enabled=False):
            if self.multiscale:
                z_q = self.quantizer.decode_indices(indices)
            else:
                z_q = self.quantizer.lookup(indices).float().permute(0, 3, 1, 2)
        return self.decode(z_q)


class Tokenizer(QuantizedAutoencoder):
    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.quantizer = build_quantizer(cfg)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
        self.decoder = Decoder(cfg)

    @property
    def last_layer(self) -> Tensor:
        """The decoder's last weight, for the GAN adaptive weight (taming ``get_last_layer``)."""
        return self.decoder.conv_out.weight

    def decode(self, z_q: Tensor) -> Tensor:
        return self.decoder(self.post_quant_conv(z_q))
