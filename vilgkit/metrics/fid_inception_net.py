"""FID's InceptionV3 graph on torchvision's Inception blocks.

Kept apart from :mod:`vilgkit.metrics.inception` so that importing the metrics package does not
import torchvision (about two seconds on a small CPU); this module loads only when FID with the
Inception extractor is actually used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.models import inception as tv


class _FIDInceptionA(tv.InceptionA):
    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        # TF's average pool divides by the number of real (unpadded) inputs.
        pool = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
        return [self.branch1x1(x), b5, b3, pool]


class _FIDInceptionC(tv.InceptionC):
    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        pool = self.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))
        return [self.branch1x1(x), b7, bd, pool]


class _FIDInceptionE(tv.InceptionE):
    """Mixed_7b (average pool without padding) or, with ``max_pool=True``, Mixed_7c (max pool)."""

    def __init__(self, in_channels: int, max_pool: bool = False) -> None:
        super().__init__(in_channels)
        self.max_pool = max_pool

    def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        if self.max_pool:  # the TF graph's last block max-pools here (a known quirk FID keeps)
            pooled = F.max_pool2d(x, 3, stride=1, padding=1)
        else:
            pooled = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
        return [self.branch1x1(x), b3, bd, self.branch_pool(pooled)]


def build_fid_inception() -> tv.Inception3:
    """InceptionV3 in the FID graph's variant, randomly initialised, 1008 classes, no aux head."""
    blocks = [
        tv.BasicConv2d,
        _FIDInceptionA,
        tv.InceptionB,
        _FIDInceptionC,
        tv.InceptionD,
        _FIDInceptionE,
        tv.InceptionAux,
    ]
    net = tv.Inception3(
        num_classes=1008, aux_logits=False, transform_input=False, inception_blocks=blocks, init_weights=False
    )
    net.Mixed_7c = _FIDInceptionE(2048, max_pool=True)
    return net
