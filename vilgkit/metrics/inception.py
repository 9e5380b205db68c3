"""Feature extractors for FID: the interface and InceptionV3 with the standard FID weights.

FID's numbers are only comparable with published ones when the features come from the exact
TensorFlow Inception graph of 2015-12-05 (Heusel et al.). Its PyTorch ports are distributed as
``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid) and
``weights-inception-2015-12-05-6726825d.pth`` (torch-fidelity); both use torchvision's parameter
names, with a 1008-way ``fc``. We build torchvision's Inception3 and swap in the blocks whose
pooling the TF graph does differently (average pools exclude padding; the last block max-pools),
then load either file with ``torch.load(weights_only=True)``. Nothing is ever downloaded.

Dimension key: B batch, C channels, H/W height/width, D feature dimension.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

#: file names of the two published ports (same tensors, same key layout)
FID_WEIGHT_NAMES = ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth")
#: where the weights are looked for when no path is given (override with $VILGKIT_FID_WEIGHTS)
DEFAULT_FID_WEIGHTS = Path("~/.cache/vilgkit") / FID_WEIGHT_NAMES[0]


class FeatureExtractor(nn.Module):
    """Images ``[B, 3, H, W]`` in [-1, 1] → features ``[B, D]`` (eval mode, no gradients needed).

    Attributes:
        feature_dim: ``D``.
        name: identifies the extractor and its weights in evaluation records and stat caches.
    """

    feature_dim: int
    name: str = "features"


def default_fid_weights_path() -> Path:
    """``$VILGKIT_FID_WEIGHTS`` or ``~/.cache/vilgkit/pt_inception-2015-12-05-6726825d.pth``."""
    return Path(os.environ.get("VILGKIT_FID_WEIGHTS", str(DEFAULT_FID_WEIGHTS))).expanduser()


def build_fid_inception() -> nn.Module:
    """InceptionV3 in the FID graph's variant, randomly initialised, 1008 classes, no aux head."""
    from vilgkit.metrics.fid_inception_net import build_fid_inception as build

    return build()


def pool3_features(net: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The pool3 features ``[B, 2048]`` of an FID Inception ``net`` (:func:`build_fid_inception`) for
    images ``[B, 3, H, W]`` in [-1, 1]: the layers up to ``Mixed_7c``, then a global average pool."""
    # pytorch-fid's input path: bilinear resize to 299 (the TF graph then sees [-1, 1]).
    x = F.interpolate(images.float(), size=(299, 299), mode="bilinear", align_corners=False)
    for name in (
        "Conv2d_1a_3x3",
        "Conv2d_2a_3x3",
        "Conv2d_2b_3x3",
        "maxpool1",
        "Conv2d_3b_1x1",
        "Conv2d_4a_3x3",
        "maxpool2",
        "Mixed_5b",
        "Mixed_5c",
        "Mixed_5d",
        "Mixed_6a",
        "Mixed_6b",
        "Mixed_6c",
        "Mixed_6d",
        "Mixed_6e",
        "Mixed_7a",
        "Mixed_7b",
        "Mixed_7c",
    ):
        x = getattr(net, name)(x)
    return F.adaptive_avg_pool2d(x, 1).flatten(1)


class InceptionFeatureExtractor(FeatureExtractor):
    """The 2048-d pool features of FID's InceptionV3, from a local weights file.

    Args:
        weights_path: ``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid) or
            ``weights-inception-2015-12-05-6726825d.pth`` (torch-fidelity). Default:
            :func:`default_fid_weights_path`.

    Raises:
        FileNotFoundError: the weights file is missing (the message names the expected path).
    """

    feature_dim = 2048

    def __init__(self, weights_path: str | None = None) -> None:
        super().__init__()
        path = Path(weights_path).expanduser() if weights_path else default_fid_weights_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"FID Inception weights not found at {path}. vilgkit never downloads: place pytorch-fid's "
                f"{FID_WEIGHT_NAMES[0]} or torch-fidelity's {FID_WEIGHT_NAMES[1]} there, pass its path, or set "
                "$VILGKIT_FID_WEIGHTS (or use the Shapes feature extractor, which needs no download)"
            )
        self.net = build_fid_inception()
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        missing, unexpected = self.net.load_state_dict(state, strict=False)
        if missing or [k for k in unexpected if not k.startswith("AuxLogits.")]:
            raise ValueError(
                f"{path} is not an FID Inception state dict: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
        self.net.eval().requires_grad_(False)
        self.name = f"inception-2015-12-05:{path.name}"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [-1, 1] → pool3 features ``[B, 2048]``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got {list(images.shape)}")
        return pool3_features(self.net, images)
