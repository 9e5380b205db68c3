"""CLIP reranking with open_clip weights from a local file (optional extra ``vilgkit[clip]``).

The paper reranks with an image–text matching model (§4.2); DALL-E and minDALL-E use CLIP. Nothing is
downloaded: the architecture comes from open_clip's built-in configs (or a JSON config file you
give), the weights from ``weights_path`` (``.safetensors``, or a ``.pt``/``.bin`` state dict read
with ``torch.load(weights_only=True)``), and the BPE vocabulary ships inside the open_clip package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from vilgkit.interfaces import Reranker, RerankInputs
from vilgkit.registry import RERANKERS

#: OpenAI CLIP's normalisation, the default when a model declares none
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _import_open_clip():
    try:
        import open_clip
    except ImportError as err:
        raise ImportError(
            "ClipReranker needs open_clip: install the optional extra with `pip install 'vilgkit[clip]'` "
            f"(or `pip install open_clip_torch`); import failed: {err}"
        ) from None
    return open_clip


def load_clip_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A CLIP state dict from safetensors or a weights-only torch file (``module.`` prefixes dropped)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in state.items()}


@RERANKERS.register_module()
class ClipReranker(Reranker):
    """Score candidates by the cosine similarity of CLIP image and prompt embeddings.

    The model is built on first use, so a recipe naming this reranker validates without open_clip.

    Args:
        weights_path: local CLIP checkpoint (required; nothing is downloaded).
        model_name: an open_clip architecture name (e.g. ``"ViT-B-32"``) or, with ``model_config``,
            the name inside that config file.
        model_config: optional path to an open_clip model-config JSON (architectures not built in).
        batch_size: candidates per image-encoder pass.
        device: where CLIP runs (default: the candidates' device).
    """

    needs_images = True

    def __init__(
        self,
        weights_path: str | None = None,
        model_name: str = "ViT-B-32",
        model_config: str | None = None,
        batch_size: int = 32,
        device: str | None = None,
    ) -> None:
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.weights_path = weights_path
        self.model_name = model_name
        self.model_config = model_config
        self.batch_size = batch_size
        self.device = device
        self._model: Any = None
        self._tokenizer: Any = None

    def _load(self) -> None:
        if self._model is not None:
            return
        if self.weights_path is None:
            raise ValueError("ClipReranker needs weights_path: a local open_clip checkpoint (nothing is downloaded)")
        path = Path(self.weights_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"CLIP weights not found at {path}")
        open_clip = _import_open_clip()
        if self.model_config is not None:
            config = Path(self.model_config).expanduser()
            if not config.is_file():
                raise FileNotFoundError(f"open_clip model config not found at {config}")
            open_clip.add_model_config(config)
        model = open_clip.create_model(self.model_name, pretrained=None)
        model.load_state_dict(load_clip_state_dict(path))
        self._model = model.eval().requires_grad_(False)
        self._tokenizer = open_clip.get_tokenizer(self.model_name)

    def _preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[-1, 1] images → CLIP input: resize the short side, centre-crop, normalise."""
        visual = self._model.visual
        cfg = getattr(visual, "preprocess_cfg", None) or {}
        size = cfg.get("size", getattr(visual, "image_size", 224))
        size = size if isinstance(size, (tuple, list)) else (size, size)
        mean = torch.tensor(cfg.get("mean", CLIP_MEAN), device=images.device).view(1, 3, 1, 1)
        std = torch.tensor(cfg.get("std", CLIP_STD), device=images.device).view(1, 3, 1, 1)
        x = (images.float().clamp(-1, 1) + 1) / 2
        scale = max(size[0] / x.shape[-2], size[1] / x.shape[-1])
        resized = (round(x.shape[-2] * scale), round(x.shape[-1] * scale))
        x = F.interpolate(x, size=resized, mode="bicubic", align_corners=False).clamp(0, 1)
        top, left = (resized[0] - size[0]) // 2, (resized[1] - size[1]) // 2
        x = x[..., top : top + size[0], left : left + size[1]]
        return (x - mean) / std

    def score(self, inputs: RerankInputs) -> torch.Tensor:
        if inputs.prompts is None:
            raise ValueError("ClipReranker needs the prompt strings (RerankInputs.prompts)")
        if len(inputs.prompts) != inputs.num_prompts:
            raise ValueError(f"{len(inputs.prompts)} prompts for {inputs.num_prompts} candidate groups")
        self._load()
        device = torch.device(self.device) if self.device else inputs.images.device
        model = self._model.to(device)
        with torch.no_grad():
            text = F.normalize(model.encode_text(self._tokenizer(inputs.prompts).to(device)).float(), dim=-1)
            feats = []
            for start in range(0, inputs.images.shape[0], self.batch_size):
                chunk = self._preprocess(inputs.images[start : start + self.batch_size].to(device))
                feats.append(F.normalize(model.encode_image(chunk).float(), dim=-1))
            image = torch.cat(feats)
        return (image * text.repeat_interleave(inputs.num_candidates, dim=0)).sum(dim=-1)
