"""The class-label check the generators share."""

from __future__ import annotations

from torch import Tensor


def check_labels(labels: Tensor, top: int) -> None:
    """Refuse labels that are not (B,) or not in ``[0, top)``, naming the range found.

    The range is read only from labels on the CPU: on an accelerator the read would wait for
    the device at every training step, so there the callers validate their label arrays on the
    host once (``generator.TokenSet``, ``generator.sample_labels``).
    """
    if labels.dim() != 1:
        raise ValueError(f"labels must be (B,), got shape {tuple(labels.shape)}")
    if labels.device.type != "cpu" or not labels.numel():
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= top:
        raise ValueError(f"labels must lie in [0, {top}), got [{low}, {high}]")
