"""clean-fid's FID Inception-v3 architecture with random, seeded weights (no download).

clean-fid's default feature network is the TorchScript file ``inception-2015-12-05.pt``
(:func:`vqshrink.weights.load_inception`). Its PyTorch port, ``cleanfid.inception_pytorch``
(pytorch-fid's FID Inception: torchvision's ``Inception3`` with 1008 classes, no auxiliary
head, and the ``FIDInceptionA/C/E_1/E_2`` blocks whose pooling follows TensorFlow), is the
same architecture in code. :func:`fid_inception_v3_random` builds that network exactly as
``cleanfid.inception_pytorch.fid_inception_v3`` does, from clean-fid's own classes, and
stops before the weight download; the weights are random instead:

- every convolution: He-normal (fan in, ReLU gain), so activations keep their scale through
  the ~40 conv-BN-ReLU layers and the 2048 pool features are neither vanishing nor
  exploding (PyTorch's default conv init shrinks them ~3x per layer, torchvision's
  truncated normal with std 0.1 grows them ~4x per layer);
- batch norms in eval mode with running mean 0, variance 1, weight 1, bias 0 (identity up to
  ``eps``); the unused 1008-way classifier keeps PyTorch's default init.

Everything is drawn from ``torch.manual_seed(seed)`` under a forked RNG: the same seed gives
the same network in every process, and the caller's RNG stream is untouched.

:class:`RandomFIDInception` follows the TorchScript extractor's contract in clean-fid's
"clean" mode (``InceptionV3W(resize_inside=False)``): a float batch (B, 3, 299, 299) with
values in [0, 255], already resized, mapped to ``(x - 128) / 128``, then the FID Inception's
blocks up to the final average pool: (B, 2048). FID values in this feature space are NOT
comparable to any published FID; :data:`RANDOM_INCEPTION_LABEL` says so in every row.
"""

from __future__ import annotations

import torch
from torch import nn

RANDOM_INCEPTION_SEED = 0
RANDOM_INCEPTION_LABEL = (
    f"inception-v3 architecture (clean-fid), RANDOM weights (seed {RANDOM_INCEPTION_SEED}): "
    "not comparable to paper FID"
)
FEATURE_DIM = 2048

# The feature path of cleanfid.inception_pytorch.InceptionV3 (blocks 0-3), by the
# Inception3 attribute names: stem, two max pools, Mixed_5b..7c, global average pool.
FEATURE_LAYERS = (
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1",
    "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2",
    "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
    "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool",
)


def fid_inception_v3_random(seed: int = RANDOM_INCEPTION_SEED) -> nn.Module:
    """``cleanfid.inception_pytorch.fid_inception_v3()``'s network, randomly initialised.

    Its ``state_dict()`` has the parameter names and shapes of pytorch-fid's
    ``pt_inception-2015-12-05`` weights (the file ``fid_inception_v3`` loads strictly).
    """
    from cleanfid import inception_pytorch as ip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ip._inception_v3(num_classes=1008, aux_logits=False, weights=None)
        net.Mixed_5b = ip.FIDInceptionA(192, pool_features=32)
        net.Mixed_5c = ip.FIDInceptionA(256, pool_features=64)
        net.Mixed_5d = ip.FIDInceptionA(288, pool_features=64)
        net.Mixed_6b = ip.FIDInceptionC(768, channels_7x7=128)
        net.Mixed_6c = ip.FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6d = ip.FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6e = ip.FIDInceptionC(768, channels_7x7=192)
        net.Mixed_7b = ip.FIDInceptionE_1(1280)
        net.Mixed_7c = ip.FIDInceptionE_2(2048)
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()
    return net.eval()


class RandomFIDInception(nn.Module):
    """(B, 3, 299, 299) float in [0, 255] -> (B, 2048) pool features of the random FID
    Inception, normalised as clean-fid's TorchScript Inception in clean mode."""

    def __init__(self, seed: int = RANDOM_INCEPTION_SEED):
        super().__init__()
        self.seed = seed
        self.inception = fid_inception_v3_random(seed)
        for p in self.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (299, 299):
            raise ValueError(f"expected (B, 3, 299, 299) after clean-fid's resize, got "
                             f"{tuple(x.shape)}")
        x = (x - 128) / 128
        for name in FEATURE_LAYERS:
            x = getattr(self.inception, name)(x)
        return x.flatten(1)
