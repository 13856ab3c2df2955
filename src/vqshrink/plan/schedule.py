"""Schedule lengths in epochs -> optimiser steps, shared by the stages and the budget.

Warm-up and the GAN start are set in epochs of the run's own training split, so they scale
with the data: 5,000 warm-up steps are 13 epochs of ImageNet-100 but 294 of ODIR's 300.
"""

from __future__ import annotations


def steps_per_epoch(images: int, batch_size: int, *, drop_last: bool = True) -> int:
    """Optimiser steps of one epoch over ``images`` at global ``batch_size``: the image
    stages drop the last partial batch, the synthetic ones keep it."""
    if drop_last:
        return images // batch_size
    return -(-images // batch_size)


def epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
    """``epochs`` (fractions allowed) of ``steps_per_epoch`` steps, rounded to a step."""
    return int(round(epochs * steps_per_epoch))
