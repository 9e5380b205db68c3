"""A feature extractor for FID on the Shapes world that needs no downloaded weights.

A small CNN is trained to read every grid cell's object attributes (shape, colour, size, or
"empty") from rendered Shapes scenes; its penultimate layer is the feature space. Features that
must predict all attributes are a meaningful (if domain-specific) FID space for Shapes: they move
when objects are missing, mis-coloured or malformed. It trains in about a minute on a CPU, saves
with safetensors, and the reconstruction ablation (paper Table 7) reuses it.

Dimension key: B batch, C channels, H/W height/width, D feature dimension, K grid cells (9).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from vilgkit.metrics.inception import FeatureExtractor

WEIGHTS_FILE = "shapes_features.safetensors"
CONFIG_FILE = "shapes_features.json"


def _world():
    from vilgkit.data.shapes import world

    return world


class ShapesFeatureExtractor(FeatureExtractor):
    """CNN over Shapes images; ``forward`` gives the ``feature_dim``-d penultimate features.

    Args:
        input_size: images are resized to this side before the CNN (train and use at one size).
        width: channels of the first conv layer (doubling twice).
        cell_dim: feature width per grid cell; ``feature_dim = 9 · cell_dim``.
    """

    def __init__(self, input_size: int = 64, width: int = 32, cell_dim: int = 32) -> None:
        super().__init__()
        world = _world()
        self.input_size, self.width, self.cell_dim = input_size, width, cell_dim
        self.feature_dim = 9 * cell_dim
        self.num_shapes, self.num_colors, self.num_sizes = len(world.SHAPES), len(world.COLORS), len(world.SIZES)
        c = width

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=2, padding=1),
                nn.GroupNorm(8, cout),
                nn.GELU(),
                nn.Conv2d(cout, cout, 3, padding=1),
                nn.GroupNorm(8, cout),
                nn.GELU(),
            )

        self.cnn = nn.Sequential(block(3, c), block(c, 2 * c), block(2 * c, 4 * c))
        self.pool = nn.AdaptiveAvgPool2d(3)  # one position per cell of the 3×3 Shapes grid
        # Per-cell projection and heads are shared by all cells (1×1 convs): what an object looks
        # like does not depend on where it is, so every cell trains the same weights.
        self.proj = nn.Sequential(nn.Conv2d(4 * c, cell_dim, 1), nn.GELU())
        # Per cell: shape / colour / size, each with an extra "empty cell" class at index 0.
        self.heads = nn.Conv2d(cell_dim, self.num_shapes + self.num_colors + self.num_sizes + 3, 1)
        self.name = "shapes-cnn"

    def config(self) -> dict[str, int]:
        return {"input_size": self.input_size, "width": self.width, "cell_dim": self.cell_dim}

    def cell_features(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [-1, 1] → per-cell features ``[B, cell_dim, 3, 3]``."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images [B, 3, H, W], got {list(images.shape)}")
        x = images.float()
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.proj(self.pool(self.cnn(x)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, 3, H, W]`` in [-1, 1] → features ``[B, D]`` (``D = 9 · cell_dim``, cells in raster order)."""
        return rearrange(self.cell_features(images), "b d h w -> b (h w d)")

    def logits(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Features ``[B, D]`` → per-cell logits for shape, colour, size ``[B, K, classes+1]``."""
        cells = rearrange(features, "b (h w d) -> b d h w", h=3, w=3)
        out = rearrange(self.heads(cells), "b n h w -> b (h w) n")
        s, c = self.num_shapes + 1, self.num_colors + 1
        return out[..., :s], out[..., s : s + c], out[..., s + c :]

    def save(self, directory: str | Path) -> Path:
        """Write ``shapes_features.safetensors`` + its config JSON into ``directory``."""
        from vilgkit import artifacts

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        artifacts.save_weights(directory / WEIGHTS_FILE, {k: v.contiguous() for k, v in self.state_dict().items()})
        artifacts.write_json(directory / CONFIG_FILE, self.config())
        return directory / WEIGHTS_FILE

    @classmethod
    def load(cls, path: str | Path) -> ShapesFeatureExtractor:
        """Load from a directory written by :meth:`save` (or the ``.safetensors`` file inside it)."""
        from vilgkit import artifacts

        path = Path(path).expanduser()
        directory = path.parent if path.suffix == ".safetensors" else path
        weights, config = directory / WEIGHTS_FILE, directory / CONFIG_FILE
        if not weights.is_file() or not config.is_file():
            raise FileNotFoundError(
                f"no Shapes feature extractor at {directory} (expected {WEIGHTS_FILE} and {CONFIG_FILE}); "
                "train one with the TrainShapesFeatures stage or vilgkit.metrics.train_shapes_feature_extractor"
            )
        model = cls(**artifacts.read_json(config))
        artifacts.load_weights(model, weights)
        model.name = f"shapes-cnn:{directory}"
        return model.eval().requires_grad_(False)


def scene_targets(scenes: list[list[dict]]) -> torch.Tensor:
    """Per-cell class targets ``[B, 9, 3]`` (shape, colour, size; 0 = empty cell)."""
    world = _world()
    out = torch.zeros(len(scenes), 9, 3, dtype=torch.long)
    for i, scene in enumerate(scenes):
        for obj in scene:
            k = 3 * obj["row"] + obj["col"]
            out[i, k, 0] = world.SHAPES.index(obj["shape"]) + 1
            out[i, k, 1] = world.COLORS.index(obj["color"]) + 1
            out[i, k, 2] = world.SIZES.index(obj["size"]) + 1
    return out


def render_batch(rng: np.random.Generator, batch_size: int, image_size: int) -> tuple[torch.Tensor, list[list[dict]]]:
    """Random Shapes scenes over all colour–shape pairs, rendered ``[B, 3, H, W]`` in [-1, 1]."""
    world = _world()
    pairs = [(c, s) for c in world.COLORS for s in world.SHAPES]
    scenes = [world.sample_scene(rng, pairs) for _ in range(batch_size)]
    images = torch.stack([world.to_tensor_image(world.render_scene(s, image_size)) for s in scenes])
    return images, scenes


def attribute_accuracy(model: ShapesFeatureExtractor, images: torch.Tensor, scenes: list[list[dict]]) -> float:
    """Fraction of (cell, attribute) predictions that are right."""
    with torch.no_grad():
        shape, color, size = model.logits(model(images))
    pred = torch.stack([shape.argmax(-1), color.argmax(-1), size.argmax(-1)], dim=-1)
    return float((pred == scene_targets(scenes)).float().mean())


def train_shapes_feature_extractor(
    *,
    image_size: int = 64,
    steps: int = 500,
    batch_size: int = 64,
    lr: float = 3e-3,
    noise: float = 0.15,
    seed: int = 0,
    bf16: bool = True,
    out_dir: str | Path | None = None,
    log=None,
) -> tuple[ShapesFeatureExtractor, dict[str, float]]:
    """Train the extractor on freshly rendered scenes; returns it (eval mode) and held-out accuracy.

    Args:
        image_size: render size (also the extractor's ``input_size``).
        steps, batch_size, lr: AdamW with cosine decay.
        noise: std of Gaussian pixel noise added during training, so features stay meaningful on
            generated (noisy) images.
        seed: seeds the scenes and the initialisation.
        bf16: train under bf16 autocast (features are then computed in fp32).
        out_dir: when given, the extractor is saved there.
        log: optional callable receiving progress strings.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = ShapesFeatureExtractor(input_size=image_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    # OneCycleLR divides by (pct_start * steps - 1): 10% warm-up is exactly 1 step at steps=10 (a
    # ZeroDivisionError); short runs warm up for 30% instead, which is never a whole step below 20
    pct_start = 0.1 if steps >= 20 else 0.3
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=pct_start)
    model.train()
    for step in range(steps):
        images, scenes = render_batch(rng, batch_size, image_size)
        images = images + noise * torch.rand(()) * torch.randn_like(images)
        # bf16 autocast: convolutions and matmuls run several times faster on AMX/tensor cores.
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=bf16):
            shape, color, size = model.logits(model(images))
        target = scene_targets(scenes)
        loss = sum(
            F.cross_entropy(lg.float().flatten(0, 1), target[..., i].flatten())
            for i, lg in enumerate((shape, color, size))
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log is not None and (step % 100 == 0 or step == steps - 1):
            log(f"shapes features step {step}/{steps} loss {loss.item():.4f}")
    model.eval().requires_grad_(False)
    test_images, test_scenes = render_batch(np.random.default_rng(seed + 10_000), 256, image_size)
    metrics = {"attribute_accuracy": attribute_accuracy(model, test_images, test_scenes), "final_loss": loss.item()}
    if out_dir is not None:
        model.save(out_dir)
        (Path(out_dir) / "shapes_features_metrics.json").write_text(json.dumps(metrics, indent=2))
    return model, metrics
