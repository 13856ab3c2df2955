"""LlamaGen's class-conditional GPT (the paper's autoregressive generator, GPT-B).

Paper: the LlamaGen generator is trained on the tokenizer's codes in "the smallest configuration",
which is LlamaGen's GPT-B (``autoregressive/models/gpt.py``: n_layer 12, n_head 12, dim 768,
~111M parameters with 16,384 codes and 1,000 classes). Everything else follows LlamaGen
(FoundationVision/LlamaGen ``autoregressive/models/gpt.py``, ``models/generate.py``,
``train/train_c2i.py``); this is our own code, written from those facts:

* Llama blocks, pre-norm: ``h = x + Attn(RMSNorm(x))``, ``out = h + FFN(RMSNorm(h))``;
  RMSNorm eps 1e-5 computed in float32; one fused q/k/v linear and an output linear, no biases
  anywhere; SwiGLU ``w2(silu(w1 x) * w3 x)`` with hidden size ``int(2 * 4 * dim / 3)`` rounded up
  to a multiple of 256 (2048 for dim 768).
* Dropout: 0.1 on the input embeddings (``token_dropout_p``), after the attention output
  projection (``resid_dropout_p``) and after the FFN (``ffn_dropout_p``); none inside attention.
* Sequence: ``[class token] + h*w`` image codes in raster order. The class embedding table has
  ``num_classes + 1`` rows, the last being the unconditional class; in training a label becomes
  unconditional with probability ``class_dropout_prob`` = 0.1 (drawn from the global torch RNG,
  as LlamaGen's ``LabelEmbedder.token_drop``). Loss: next-token cross-entropy over the h*w image
  codes, the class position predicting code 0 (``train_c2i.py``: ``idx = z[:, :-1]``,
  ``targets = z``).
* 2D RoPE, base 10000 (``precompute_freqs_cis_2d``): each head vector is read as head_dim/2
  interleaved pairs ``(x[2i], x[2i+1])``; the first head_dim/4 pairs rotate with the row index,
  the last head_dim/4 with the column index, both with frequencies
  ``base ** (-4j / head_dim)``, j < head_dim/4 (head_dim must be a multiple of 4).
  The class token: LlamaGen prepends a row of *zeros* to its (cos, sin) table, which does not
  leave the class token unrotated but zeroes its query and key (its attention logit is always 0;
  the class reaches later tokens through its value and the residual stream).
  ``zero_cls_qk=True`` (default) keeps that behaviour; ``False`` gives the class token the
  identity rotation instead.
* Init (``Transformer.initialize_weights``): every Linear and Embedding normal(0, 0.02), the
  output head zero (so the untrained model predicts the uniform distribution); untied head.
* Sampling (``generate.py``): KV cache; with ``cfg_scale != 1`` the batch is doubled (conditional
  half first, unconditional half with the null class) and the logits are
  ``uncond + cfg_scale * (cond - uncond)`` at every step (constant schedule), i.e. the shared
  ``cfg_logits`` with ``w = cfg_scale - 1``; then temperature, top-k and top-p. Defaults:
  cfg_scale 2.0 (LlamaGen GETTING_STARTED for GPT-B; its sampler default is 1.5), top_k 0 (off),
  top_p 1.0 (off), temperature 1.0. LlamaGen applies guidance only for ``cfg_scale > 1``; here any
  ``cfg_scale != 1`` is guided, and ``cfg_scale == 1`` runs the conditional half alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqshrink.models.labels import check_labels
from vqshrink.models.sampling import cfg_logits, sample_logits


@dataclass
class LlamaGenConfig:
    vocab_size: int = 16_384  # paper Sec. 6.1 codebook size (LlamaGen ModelArgs default too)
    num_classes: int = 100  # ImageNet-100 (LlamaGen: 1000 for ImageNet)
    token_shape: tuple[int, int] = (16, 16)  # 128 px / 8 (LlamaGen block_size 256 = 16x16)
    n_layer: int = 12  # LlamaGen GPT_B
    n_head: int = 12  # LlamaGen GPT_B
    dim: int = 768  # LlamaGen GPT_B
    multiple_of: int = 256  # LlamaGen ModelArgs: SwiGLU hidden size rounded up to this
    rope_base: float = 10_000.0  # LlamaGen ModelArgs
    norm_eps: float = 1e-5  # LlamaGen ModelArgs
    initializer_range: float = 0.02  # LlamaGen ModelArgs
    token_dropout_p: float = 0.1  # LlamaGen ModelArgs
    attn_dropout_p: float = 0.0  # LlamaGen ModelArgs
    resid_dropout_p: float = 0.1  # LlamaGen ModelArgs
    ffn_dropout_p: float = 0.1  # LlamaGen ModelArgs
    class_dropout_prob: float = 0.1  # LlamaGen ModelArgs (CFG training)
    zero_cls_qk: bool = True  # LlamaGen precompute_freqs_cis_2d: zero (cos, sin) rows for cls

    def __post_init__(self) -> None:  # YAML / JSON give lists
        self.token_shape = tuple(int(s) for s in self.token_shape)
        if len(self.token_shape) != 2:
            raise ValueError(f"token_shape must be (h, w), got {self.token_shape}")
        if self.dim % self.n_head:
            raise ValueError(f"dim {self.dim} is not a multiple of n_head {self.n_head}")
        if (self.dim // self.n_head) % 4:
            raise ValueError(f"2D RoPE needs head_dim % 4 == 0, got {self.dim // self.n_head}")

    @property
    def seq_len(self) -> int:
        """Number of image codes, h * w."""
        return self.token_shape[0] * self.token_shape[1]

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    def to_dict(self) -> dict:
        d = asdict(self)
        d["token_shape"] = list(self.token_shape)
        return d


def swiglu_hidden_dim(dim: int, multiple_of: int = 256) -> int:
    """LlamaGen ``FeedForward``: ``int(2 * 4 * dim / 3)`` rounded up to ``multiple_of``."""
    hidden = int(2 * (4 * dim) / 3)
    return -(-hidden // multiple_of) * multiple_of


# ----------------------------------------------------------------------------- 2D RoPE


def rope_table(
    token_shape: tuple[int, int], head_dim: int, base: float = 10_000.0, zero_cls: bool = True
) -> Tensor:
    """(1 + h*w, head_dim/2, 2) table of (cos, sin): row 0 the class token, then raster order.

    Pair ``i < head_dim/4`` turns by ``row * f_i``, pair ``head_dim/4 + i`` by ``col * f_i``,
    ``f_i = base ** (-4 i / head_dim)``. The class row is (0, 0) with ``zero_cls`` (LlamaGen),
    else (1, 0), the identity.
    """
    h, w = token_shape
    quarter = head_dim // 4
    freqs = 1.0 / base ** (torch.arange(quarter, dtype=torch.float64) * 4 / head_dim)
    rows = torch.arange(h, dtype=torch.float64)[:, None].expand(h, w).reshape(-1)
    cols = torch.arange(w, dtype=torch.float64)[None, :].expand(h, w).reshape(-1)
    angles = torch.cat([rows[:, None] * freqs, cols[:, None] * freqs], dim=1)  # (h*w, hd/2)
    grid = torch.stack([angles.cos(), angles.sin()], dim=-1)
    cls = torch.zeros(1, head_dim // 2, 2, dtype=torch.float64)
    if not zero_cls:
        cls[..., 0] = 1.0
    return torch.cat([cls, grid]).float()


def apply_rope(x: Tensor, table: Tensor) -> Tensor:
    """Rotate x (B, S, H, head_dim) by table (S, head_dim/2, 2); computed in float32."""
    xp = x.float().reshape(*x.shape[:-1], -1, 2)
    cos = table[None, :, None, :, 0]
    sin = table[None, :, None, :, 1]
    a, b = xp[..., 0], xp[..., 1]
    out = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1)
    return out.flatten(-2).type_as(x)


# ----------------------------------------------------------------------------- blocks


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight


class FeedForward(nn.Module):
    def __init__(self, cfg: LlamaGenConfig) -> None:
        super().__init__()
        hidden = swiglu_hidden_dim(cfg.dim, cfg.multiple_of)
        self.w1 = nn.Linear(cfg.dim, hidden, bias=False)
        self.w3 = nn.Linear(cfg.dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, cfg.dim, bias=False)
        self.dropout = nn.Dropout(cfg.ffn_dropout_p)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class KVCache:
    """Keys and values of one attention layer, (B, H, L, head_dim), filled position by position."""

    def __init__(self, max_len: int) -> None:
        self.max_len = max_len
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    def update(self, pos: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (B, H, S, hd) at positions pos..pos+S-1; return all keys/values so far."""
        if self.k is None:
            b, nh, _, hd = k.shape
            self.k = k.new_zeros(b, nh, self.max_len, hd)
            self.v = v.new_zeros(b, nh, self.max_len, hd)
        end = pos + k.shape[2]
        self.k[:, :, pos:end] = k
        self.v[:, :, pos:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]


class Attention(nn.Module):
    def __init__(self, cfg: LlamaGenConfig) -> None:
        super().__init__()
        self.n_head, self.head_dim = cfg.n_head, cfg.head_dim
        self.wqkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.attn_dropout_p = cfg.attn_dropout_p
        self.resid_dropout = nn.Dropout(cfg.resid_dropout_p)

    def forward(
        self, x: Tensor, rope: Tensor, cache: KVCache | None = None, pos: int = 0
    ) -> Tensor:
        b, s, d = x.shape
        q, k, v = self.wqkv(x).view(b, s, 3, self.n_head, self.head_dim).unbind(2)
        q, k = apply_rope(q, rope), apply_rope(k, rope)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, S, hd)
        mask, causal = None, True
        if cache is not None:
            k, v = cache.update(pos, k, v)
            causal = False
            if s > 1:  # query i (absolute pos + i) sees keys 0..pos + i
                qi = torch.arange(s, device=x.device)[:, None] + pos
                mask = torch.arange(k.shape[2], device=x.device)[None, :] <= qi
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal,
            dropout_p=self.attn_dropout_p if self.training else 0.0,
        )
        return self.resid_dropout(self.wo(y.transpose(1, 2).reshape(b, s, d)))


class Block(nn.Module):
    def __init__(self, cfg: LlamaGenConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(
        self, x: Tensor, rope: Tensor, cache: KVCache | None = None, pos: int = 0
    ) -> Tensor:
        h = x + self.attention(self.attention_norm(x), rope, cache, pos)
        return h + self.feed_forward(self.ffn_norm(h))


# ----------------------------------------------------------------------------- model


class LlamaGen(nn.Module):
    """Class-conditional GPT over ``[class] + h*w`` raster-order codes."""

    def __init__(self, cfg: LlamaGenConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.cls_embedding = nn.Embedding(cfg.num_classes + 1, cfg.dim)  # last row: unconditional
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.tok_dropout = nn.Dropout(cfg.token_dropout_p)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        table = rope_table(cfg.token_shape, cfg.head_dim, cfg.rope_base, cfg.zero_cls_qk)
        self.register_buffer("rope", table, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """LlamaGen init: Linear / Embedding weights normal(0, 0.02), output head zero."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=self.cfg.initializer_range)
        nn.init.zeros_(self.output.weight)

    @property
    def null_class(self) -> int:
        """Class id of the unconditional embedding (``num_classes``)."""
        return self.cfg.num_classes

    def _check_labels(self, labels: Tensor) -> None:
        check_labels(labels, self.cfg.num_classes)

    def _flat_tokens(self, tokens: Tensor) -> Tensor:
        flat = tokens.reshape(tokens.shape[0], -1)
        if flat.shape[1] != self.cfg.seq_len:
            raise ValueError(
                f"tokens must be (B, *{self.cfg.token_shape}), got {tuple(tokens.shape)}"
            )
        return flat

    def logits(self, tokens: Tensor, cls_ids: Tensor) -> Tensor:
        """Teacher-forced logits (B, h*w, V), float32; position t predicts code t.

        ``cls_ids`` may hold the null class ``num_classes``; no class dropout here.
        """
        flat = self._flat_tokens(tokens)
        x = torch.cat([self.cls_embedding(cls_ids)[:, None], self.tok_embeddings(flat[:, :-1])], 1)
        x = self.tok_dropout(x)
        rope = self.rope[: x.shape[1]]
        for layer in self.layers:
            x = layer(x, rope)
        return self.output(self.norm(x)).float()

    def forward(self, tokens: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """Next-token cross-entropy over the h*w codes and top-1 accuracy (mean over codes)."""
        self._check_labels(labels)
        targets = self._flat_tokens(tokens)
        cls_ids = labels
        if self.training and self.cfg.class_dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.cfg.class_dropout_prob
            cls_ids = torch.where(drop, torch.full_like(labels, self.null_class), labels)
        logits = self.logits(targets, cls_ids)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        acc = (logits.argmax(-1) == targets).float().mean()
        return {"loss": loss, "acc": acc.detach()}

    def new_caches(self) -> list[KVCache]:
        """Empty KV caches for ``decode_step`` (one per layer, room for 1 + h*w positions)."""
        return [KVCache(self.cfg.seq_len + 1) for _ in self.layers]

    def decode_step(self, inputs: Tensor, pos: int, caches: list[KVCache]) -> Tensor:
        """Logits (B, V), float32, for the next code after the sequence position ``pos``.

        ``inputs`` (B,) are class ids at ``pos == 0`` (the null class allowed) and the code
        ``pos - 1`` otherwise; the positions must be fed in order 0, 1, 2, ...
        """
        emb = self.cls_embedding if pos == 0 else self.tok_embeddings
        x = self.tok_dropout(emb(inputs)[:, None])
        rope = self.rope[pos : pos + 1]
        for layer, cache in zip(self.layers, caches):
            x = layer(x, rope, cache, pos)
        return self.output(self.norm(x[:, -1])).float()

    @torch.no_grad()
    def sample(
        self,
        labels: Tensor,
        *,
        generator: torch.Generator,
        cfg_scale: float = 2.0,
        top_k: int = 0,
        top_p: float = 1.0,
        temperature: float = 1.0,
    ) -> Tensor:
        """Codes (B, h, w) for class ``labels`` (B,); all draws from ``generator``.

        Guided logits ``uncond + cfg_scale * (cond - uncond)`` (LlamaGen); ``cfg_scale == 1``
        runs the conditional model alone. The caller puts the model in ``eval()``.
        """
        self._check_labels(labels)
        b = labels.shape[0]
        guided = cfg_scale != 1.0
        inputs = labels
        if guided:
            inputs = torch.cat([labels, torch.full_like(labels, self.null_class)])
        caches = self.new_caches()
        out = torch.empty(b, self.cfg.seq_len, dtype=torch.long, device=labels.device)
        for t in range(self.cfg.seq_len):
            logits = self.decode_step(inputs, t, caches)
            if guided:
                cond, uncond = logits.chunk(2)
                logits = cfg_logits(cond, uncond, cfg_scale - 1.0)
            tok = sample_logits(
                logits, generator, temperature=temperature, top_k=top_k, top_p=top_p
            )
            out[:, t] = tok
            inputs = torch.cat([tok, tok]) if guided else tok
        return out.view(b, *self.cfg.token_shape)
