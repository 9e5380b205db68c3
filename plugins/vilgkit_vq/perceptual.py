"""LPIPS perceptual distance (Zhang et al. 2018) from LOCAL weights only.

taming's ``LPIPS`` downloads VGG and LPIPS weights when built; nothing may download here, so this
module builds the same network (same state-dict key layout: ``net.slice{1..5}.*``, ``lin{0..4}.model.1.weight``)
from torchvision's untrained VGG16 and loads weights from files the user gives.

Dimension key: B batch, c channels of one VGG stage, H, W image size.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import vgg16

#: VGG16 ``features`` index ranges of the five LPIPS stages (relu1_2 … relu5_3)
_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
_CHANNELS = (64, 128, 256, 512, 512)


def load_tensor_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` file or a tensors-only PyTorch file (``weights_only=True``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a mapping of tensor names to tensors")
    return state


class LPIPS(nn.Module):
    """Learned perceptual image patch similarity, computed on images in [-1, 1]; output ``[B]``.

    Args:
        weights: file with the LPIPS state dict: the linear heads ``lin{0..4}.model.1.weight``
            (the official ``vgg.pth`` has just these) and, unless ``vgg_weights`` is given, the VGG
            trunk ``net.slice{1..5}.*`` too.
        vgg_weights: optional torchvision ``vgg16`` state dict (``features.N.weight``…) for the trunk.

    Raises:
        ValueError: listing the keys that the files do not provide or that have the wrong shape.
    """

    def __init__(self, weights: str, vgg_weights: str | None = None) -> None:
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])
        features = vgg16(weights=None).features
        self.net = nn.Module()
        for i, (lo, hi) in enumerate(_SLICES, start=1):
            block = nn.Sequential()
            for idx in range(lo, hi):
                block.add_module(str(idx), features[idx])
            setattr(self.net, f"slice{i}", block)
        for i, c in enumerate(_CHANNELS):
            lin = nn.Module()
            lin.model = nn.Sequential(nn.Dropout(), nn.Conv2d(c, 1, 1, bias=False))
            setattr(self, f"lin{i}", lin)
        self._load(weights, vgg_weights)
        self.requires_grad_(False)
        self.eval()

    def _load(self, weights: str, vgg_weights: str | None) -> None:
        state = dict(load_tensor_file(weights))
        if vgg_weights is not None:
            index_to_slice = {idx: i for i, (lo, hi) in enumerate(_SLICES, start=1) for idx in range(lo, hi)}
            for key, value in load_tensor_file(vgg_weights).items():
                parts = key.split(".")
                if parts[0] == "features" and int(parts[1]) in index_to_slice:
                    state[f"net.slice{index_to_slice[int(parts[1])]}.{parts[1]}.{parts[2]}"] = value
        own = {k: v for k, v in self.state_dict().items() if k not in ("shift", "scale")}
        missing = sorted(k for k in own if k not in state)
        bad = sorted(
            f"{k} {tuple(state[k].shape)}≠{tuple(v.shape)}"
            for k, v in own.items()
            if k in state and state[k].shape != v.shape
        )
        if missing or bad:
            raise ValueError(
                f"LPIPS weights {weights}"
                + (f" + {vgg_weights}" if vgg_weights else "")
                + (f": missing keys {missing}" if missing else "")
                + (f": mismatched shapes {bad}" if bad else "")
            )
        self.load_state_dict({k: state[k] for k in own}, strict=False)

    def train(self, mode: bool = True) -> LPIPS:
        # frozen metric: dropout stays off even when the tokenizer around it trains
        return super().train(False)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        xa, xb = (a - self.shift) / self.scale, (b - self.shift) / self.scale
        total = a.new_zeros(a.shape[0])
        for i in range(1, 6):
            xa, xb = getattr(self.net, f"slice{i}")(xa), getattr(self.net, f"slice{i}")(xb)
            # unit-normalise channels, squared difference, learned 1×1 weighting, spatial mean
            na = xa / (xa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            nb = xb / (xb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + getattr(self, f"lin{i - 1}").model((na - nb).pow(2)).mean(dim=(1, 2, 3))
        return total
