"""Class-conditional MaskGIT: a bidirectional transformer over VQ tokens, decoded in parallel.

Paper Sec. 6.1: class-conditional MaskGIT, "ViT with depth of 24", 16x16 token maps, codebook
16,384. The rest follows the references (shared notes, reference-implementations.md Sec. 4):

* Sizes: google-research/maskgit ``configs/maskgit_class_cond_config.py`` (24 layers, hidden 768,
  MLP 3072, 16 heads, dropout 0.1, label smoothing 0.1, choice temperature 4.5); valeoai
  Maskgit-pytorch v1 "base" is the same (768, 24, 16, 3072, 0.1).
* Network: valeoai/Maskgit-pytorch v1 ``Network/transformer.py`` (``MaskTransformer``), the one
  reference followed for the whole network (google's is a post-LN BERT whose embedding goes
  through a LayerNorm + dropout instead; its training loop is not public). Input: one embedding
  table holding the ``vocab_size`` codes, the mask token (id ``vocab_size``) and
  ``num_classes + 1`` class tokens (the last one = the dropped / unconditional class, id
  ``num_classes``); the class token is appended after the h*w image tokens; learned position
  embedding, trunc-normal std 0.02; then valeoai's ``first_layer`` (LayerNorm, dropout, Linear,
  GELU, LayerNorm, dropout, Linear; LayerNorm eps 1e-12) before the pre-LN blocks (attention
  dropout on the weights, MLP dropout after GELU and after the MLP; no final LayerNorm).
* Output: valeoai's ``last_layer`` (LayerNorm, dropout, Linear, GELU, LayerNorm), then logits
  tied to the token embedding plus a bias per position and code,
  ``x @ E[:vocab_size].T + bias``. valeoai also scores the mask id (and the class rows, sliced
  away); here only the codebook entries are scored, so sampling never returns the mask id.
* Schedule: ``cosine``, mask_ratio(r) = cos(pi/2 r), clipped to [1e-6, 1] (google
  ``libml/mask_schedule.py``; the MaskGIT paper's choice, and valeoai's ``cosine`` mode). The
  same formula sets the training mask ratio and the decoding schedule. ``arccos``
  (arccos(r) / (pi/2), valeoai's default) is kept as an option for ablations.
* Training (MaskGIT paper Sec. 3.2): r ~ U(0, 1) per sample, ceil(mask_ratio(r) * N) tokens chosen
  uniformly are masked (never fewer than one); cross-entropy with label smoothing 0.1 on all
  positions (valeoai v1 ``Trainer/vit.py``); the class label is replaced by the unconditional id
  with probability 0.1 (valeoai ``drop_label``) for classifier-free guidance.
* Decoding (google ``libml/parallel_decode.py``): each step samples every masked token, gives it
  the confidence log p(token) + choice_temperature * (1 - ratio) * Gumbel (fixed tokens: +inf),
  and re-masks the ``unmask_schedule`` lowest-confidence ones; the last step fixes everything.
  Guidance (valeoai ``sample``): cond + w_t (cond - uncond), w_t = w * step / (steps - 1).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqshrink.models.labels import check_labels
from vqshrink.models.sampling import cfg_logits, gumbel, sample_logits

SCHEDULES = ("cosine", "arccos")


@dataclass
class MaskGITConfig:
    vocab_size: int = 16384  # paper Sec. 6.1: codebook size
    num_classes: int = 100
    token_shape: tuple[int, int] = (16, 16)  # paper Sec. 6.1: 16x16 token maps
    depth: int = 24  # paper Sec. 6.1 "ViT with depth of 24"; google class-cond config
    width: int = 768  # google class-cond config hidden 768 (valeoai "base" too)
    heads: int = 16  # google class-cond config; valeoai "base"
    mlp_dim: int = 3072  # google class-cond config intermediate size
    dropout: float = 0.1  # google class-cond config (hidden and attention dropout); valeoai 0.1
    label_smoothing: float = 0.1  # google class-cond config; valeoai CrossEntropyLoss(0.1)
    class_dropout: float = 0.1  # valeoai drop_label 0.1 (classifier-free guidance)
    mask_schedule: str = "cosine"  # google mask_schedule.py / MaskGIT paper (see module doc)
    sample_steps: int = 12  # google parallel_decode num_iter=12; valeoai sampler step=12
    guidance: float = 3.0  # valeoai sampler w=3
    choice_temperature: float = 4.5  # google sample_choice_temperature; valeoai r_temp

    def __post_init__(self) -> None:  # JSON / YAML give lists
        self.token_shape = tuple(int(s) for s in self.token_shape)
        if len(self.token_shape) != 2:
            raise ValueError(f"token_shape must be (h, w), got {self.token_shape}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not a multiple of heads {self.heads}")
        if self.mask_schedule not in SCHEDULES:
            raise ValueError(f"mask_schedule must be one of {SCHEDULES}, got {self.mask_schedule!r}")
        if not 0.0 <= self.class_dropout <= 1.0:
            raise ValueError(f"class_dropout must be in [0, 1], got {self.class_dropout}")

    @property
    def num_tokens(self) -> int:
        return self.token_shape[0] * self.token_shape[1]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["token_shape"] = list(self.token_shape)
        return d


def mask_ratio(r: Tensor | float, schedule: str = "cosine") -> Tensor:
    """Fraction of tokens masked at progress ``r`` in [0, 1]: 1 at r = 0, ~0 at r = 1.

    ``cosine``: cos(pi/2 r); ``arccos``: arccos(r) / (pi/2). Clipped to [1e-6, 1] as google's
    ``schedule`` does.
    """
    r = r if torch.is_tensor(r) and r.is_floating_point() else torch.as_tensor(r, dtype=torch.float64)
    if schedule == "cosine":
        out = torch.cos(r * (math.pi / 2))
    elif schedule == "arccos":
        out = torch.arccos(r.clamp(-1.0, 1.0)) / (math.pi / 2)
    else:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    return out.clamp(1e-6, 1.0)


def unmask_schedule(num_tokens: int, steps: int, schedule: str = "cosine") -> list[int]:
    """How many tokens are still masked after each of ``steps`` decoding steps (last entry 0).

    google ``parallel_decode``: after step t (ratio = (t+1)/steps) floor(N * mask_ratio(ratio))
    stay masked, at most one fewer than before the step. Where google's lower bound is 1, this one
    is the number of steps left, so every step fixes at least one token (identical for the usual
    N = 256, steps <= 16; it only matters for tiny maps or many steps).
    """
    if not 1 <= steps <= num_tokens:
        raise ValueError(f"steps must be in [1, {num_tokens}], got {steps}")
    remaining, left = [], num_tokens
    for t in range(steps):
        want = math.floor(num_tokens * float(mask_ratio((t + 1) / steps, schedule)))
        left = max(steps - 1 - t, min(left - 1, want)) if t < steps - 1 else 0
        remaining.append(left)
    return remaining


def guidance_at(step: int, steps: int, guidance: float) -> float:
    """valeoai's linear guidance ramp, w * step / (steps - 1): 0 at the first step, w at the last."""
    return guidance if steps == 1 else guidance * step / (steps - 1)


class Block(nn.Module):
    """Pre-LN transformer block: x + Attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, cfg: MaskGITConfig) -> None:
        super().__init__()
        self.heads, self.p = cfg.heads, cfg.dropout
        self.ln1 = nn.LayerNorm(cfg.width)
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.ln2 = nn.LayerNorm(cfg.width)
        self.mlp = nn.Sequential(nn.Linear(cfg.width, cfg.mlp_dim), nn.GELU(), nn.Dropout(cfg.dropout),
                                 nn.Linear(cfg.mlp_dim, cfg.width))
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=self.p if self.training else 0.0)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))  # nn.MultiheadAttention alike
        return x + self.drop(self.mlp(self.ln2(x)))


class MaskGIT(nn.Module):
    def __init__(self, cfg: MaskGITConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.mask_id = cfg.vocab_size
        self.class_offset = cfg.vocab_size + 1  # class c -> row vocab_size + 1 + c
        n_rows = cfg.vocab_size + 1 + cfg.num_classes + 1
        w, p = cfg.width, cfg.dropout
        self.tok_emb = nn.Embedding(n_rows, w)
        self.pos_emb = nn.Parameter(torch.zeros(1, cfg.num_tokens + 1, w))
        # valeoai v1 first_layer / last_layer (module docstring)
        self.first_layer = nn.Sequential(
            nn.LayerNorm(w, eps=1e-12), nn.Dropout(p), nn.Linear(w, w), nn.GELU(),
            nn.LayerNorm(w, eps=1e-12), nn.Dropout(p), nn.Linear(w, w))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.last_layer = nn.Sequential(
            nn.LayerNorm(w, eps=1e-12), nn.Dropout(p), nn.Linear(w, w), nn.GELU(),
            nn.LayerNorm(w, eps=1e-12))
        self.bias = nn.Parameter(torch.zeros(cfg.num_tokens, cfg.vocab_size))
        self.apply(self._init)
        nn.init.trunc_normal_(self.pos_emb, std=0.02)

    @staticmethod
    def _init(m: nn.Module) -> None:  # BERT / valeoai: trunc-normal 0.02, zero biases
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def _check_labels(self, labels: Tensor, allow_uncond: bool) -> None:
        check_labels(labels, self.cfg.num_classes + (1 if allow_uncond else 0))

    def logits(self, tokens: Tensor, labels: Tensor) -> Tensor:
        """(B, L) token ids (mask id = vocab_size allowed), (B,) labels incl. the unconditional id
        ``num_classes`` -> (B, L, vocab_size) logits over the codebook entries."""
        self._check_labels(labels, allow_uncond=True)
        x = torch.cat([tokens, (labels + self.class_offset)[:, None]], dim=1)
        x = self.first_layer(self.tok_emb(x) + self.pos_emb)
        for blk in self.blocks:
            x = blk(x)
        x = self.last_layer(x[:, :-1])
        return x @ self.tok_emb.weight[: self.cfg.vocab_size].T + self.bias

    def drop_labels(self, labels: Tensor) -> Tensor:
        """Labels with each one replaced by the unconditional id w.p. ``class_dropout`` (global RNG)."""
        drop = torch.rand(labels.shape, device=labels.device) < self.cfg.class_dropout
        return labels.masked_fill(drop, self.cfg.num_classes)

    def random_mask(self, b: int, device: torch.device) -> Tensor:
        """(B, N) bool training mask: ceil(N * mask_ratio(r)) uniformly chosen tokens, r ~ U(0, 1)."""
        n = self.cfg.num_tokens
        r = torch.rand(b, device=device)
        n_masked = torch.ceil(mask_ratio(r, self.cfg.mask_schedule) * n).clamp(1, n)
        rank = torch.rand(b, n, device=device).argsort(-1).argsort(-1)
        return rank < n_masked[:, None]

    def forward(self, tokens: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Training loss on a (B, h, w) token map: {"loss", "acc" (argmax accuracy on masked)}."""
        if tuple(tokens.shape[1:]) != self.cfg.token_shape:
            raise ValueError(f"tokens must be (B, {self.cfg.token_shape}), got {tuple(tokens.shape)}")
        self._check_labels(labels, allow_uncond=False)
        target = tokens.reshape(tokens.shape[0], -1)
        labels = self.drop_labels(labels)
        mask = self.random_mask(target.shape[0], target.device)
        logits = self.logits(target.masked_fill(mask, self.mask_id), labels)
        loss = F.cross_entropy(logits.float().reshape(-1, self.cfg.vocab_size), target.reshape(-1),
                               label_smoothing=self.cfg.label_smoothing)
        with torch.no_grad():
            acc = (logits.argmax(-1) == target)[mask].float().mean()
        return {"loss": loss, "acc": acc}

    def guided_logits(self, tokens: Tensor, labels: Tensor, w: float) -> Tensor:
        """float32 cond + w (cond - uncond); one batched pass for both, the cond pass alone at w = 0."""
        if w == 0:
            return self.logits(tokens, labels).float()
        uncond = torch.full_like(labels, self.cfg.num_classes)
        both = self.logits(torch.cat([tokens, tokens]), torch.cat([labels, uncond])).float()
        cond, unc = both.chunk(2)
        return cfg_logits(cond, unc, w)

    @torch.no_grad()
    def sample(self, labels: Tensor, *, generator: torch.Generator, steps: int | None = None,
               guidance: float | None = None, temperature: float = 1.0,
               choice_temperature: float | None = None, schedule: str | None = None) -> Tensor:
        """Class-conditional tokens (B, h, w) in [0, vocab_size); every draw from ``generator``.

        ``None`` arguments take the config's values (steps, guidance, choice temperature,
        schedule). Call under ``model.eval()``.
        """
        cfg = self.cfg
        self._check_labels(labels, allow_uncond=False)
        steps = cfg.sample_steps if steps is None else steps
        guidance = cfg.guidance if guidance is None else guidance
        choice_t = cfg.choice_temperature if choice_temperature is None else choice_temperature
        remaining = unmask_schedule(cfg.num_tokens, steps, schedule or cfg.mask_schedule)
        b, device = labels.shape[0], labels.device
        tokens = torch.full((b, cfg.num_tokens), self.mask_id, dtype=torch.long, device=device)
        for t in range(steps):
            logits = self.guided_logits(tokens, labels, guidance_at(t, steps, guidance))
            masked = tokens == self.mask_id
            sampled = torch.where(masked, sample_logits(logits, generator, temperature=temperature),
                                  tokens)
            logp = (logits / temperature).log_softmax(-1).gather(-1, sampled[..., None])[..., 0]
            noise = gumbel(logp.shape, generator, device)
            conf = (logp + choice_t * (1.0 - (t + 1) / steps) * noise).masked_fill(~masked, math.inf)
            # re-mask the remaining[t] least confident tokens (fixed ones have +inf: never chosen)
            lowest = conf.argsort(-1)[:, : remaining[t]]
            tokens = sampled.scatter(1, lowest, self.mask_id)
        return tokens.view(b, *cfg.token_shape)
