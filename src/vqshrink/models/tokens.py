"""The one token interface of every image tokenizer: flat ``(B, L)`` indices and a layout.

A tokenizer turns an image into L codebook indices. Where they sit on the latent grid is
its :class:`TokenLayout`: one ``h x w`` map (VQ, SimVQ, the CIFAR VQ-VAE), or VAR's maps
``p_k x p_k`` for its scales, small to large. Callers (evaluation, token export, the
generators' decoding) hold flat rows and the layout, and never ask which quantizer made them.

In a flat row the maps follow one another, each row-major: for one map that is the map
flattened; for VAR it is VAR's own sequence order (``models/var.py``'s ``idxBl`` concatenation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class TokenLayout:
    """``maps``: the (h, w) of each token map in flat order; ``kind``: "map" (one map) or
    "scales" (VAR's multi-scale maps, small to large)."""

    kind: str
    maps: tuple[tuple[int, int], ...]

    @classmethod
    def single(cls, h: int, w: int) -> TokenLayout:
        return cls("map", ((int(h), int(w)),))

    @classmethod
    def scales(cls, patch_nums: tuple[int, ...]) -> TokenLayout:
        return cls("scales", tuple((int(p), int(p)) for p in patch_nums))

    def __post_init__(self) -> None:
        if self.kind not in ("map", "scales") or not self.maps:
            raise ValueError(f"a token layout is one 'map' or 'scales', got {self.kind!r} "
                             f"with maps {self.maps}")
        if self.kind == "map" and len(self.maps) != 1:
            raise ValueError(f"a single-map layout has one map, got {self.maps}")

    @property
    def length(self) -> int:
        """L: tokens per image."""
        return sum(h * w for h, w in self.maps)

    @property
    def patch_nums(self) -> tuple[int, ...] | None:
        """VAR's scales (side of each square map); None for a single map."""
        return tuple(h for h, _ in self.maps) if self.kind == "scales" else None

    @property
    def file_shape(self) -> tuple[int, ...]:
        """Per-image shape of the token files: ``(h, w)`` for one map, ``(L,)`` for scales."""
        return self.maps[0] if self.kind == "map" else (self.length,)

    def describe(self) -> str:
        if self.kind == "map":
            return "(N, h, w)"
        return "(N, L): VAR scales small to large, each p x p row-major, concatenated"

    def flat(self, maps: Tensor | list[Tensor] | tuple[Tensor, ...]) -> Tensor:
        """``(B, L)`` from the maps: one ``(B, h, w)`` tensor, or a list of them in order."""
        maps = [maps] if isinstance(maps, Tensor) else list(maps)
        if len(maps) != len(self.maps):
            raise ValueError(f"expected {len(self.maps)} token maps, got {len(maps)}")
        return torch.cat([m.reshape(len(m), -1) for m in maps], dim=1)

    def split(self, tokens: Tensor) -> list[Tensor]:
        """The maps ``[(B, h_k, w_k)]`` of ``(B, L)`` tokens (or of ``(B, *file_shape)``)."""
        tokens = tokens.reshape(len(tokens), -1)
        if tokens.shape[1] != self.length:
            raise ValueError(f"expected {self.length} tokens per image ({self.describe()}), "
                             f"got {tokens.shape[1]}")
        out, at = [], 0
        for h, w in self.maps:
            out.append(tokens[:, at:at + h * w].reshape(-1, h, w))
            at += h * w
        return out
