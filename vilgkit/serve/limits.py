"""What one request to ``vilgkit serve`` may ask for, and the checks that turn bad input into 4xx errors.

Every check raises :class:`RequestError` with an HTTP status and one line naming the field and what
is allowed; the app turns it into ``{"error": "..."}``. Settings a request leaves out are the run's
saved inference settings (``RUN_DIR/inference.json``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

from PIL import Image, UnidentifiedImageError

from vilgkit.inference_settings import (
    ANSWER_METHODS,
    CAPTION_METHODS,
    InferenceSettings,
)


class RequestError(Exception):
    """A request the server refuses: ``status`` (4xx/503) and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Limits:
    """Request limits of a server (``vilgkit serve`` flags set them).

    Attributes:
        max_prompt_chars: longest prompt or question, in characters (the model's token budget is
            checked as well).
        max_candidates: most images sampled for one prompt.
        max_upload_bytes: largest uploaded image file.
        max_image_pixels: largest uploaded image, width × height (guards against decompression bombs).
        max_pending: requests waiting or running at once; more are refused with 503.
        max_temperature, max_cfg_scale, max_beams: sampling ranges.
    """

    max_prompt_chars: int = 300
    max_candidates: int = 16
    max_upload_bytes: int = 4 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_pending: int = 256
    max_temperature: float = 5.0
    max_cfg_scale: float = 20.0
    max_beams: int = 8

    def public(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def check_text(text: Any, field: str, limits: Limits) -> str:
    """A non-empty string of at most ``max_prompt_chars`` characters."""
    if not isinstance(text, str) or not text.strip():
        raise RequestError(422, f"{field}: give a non-empty text")
    if len(text) > limits.max_prompt_chars:
        raise RequestError(
            422,
            f"{field}: {len(text)} characters; at most {limits.max_prompt_chars} are allowed",
        )
    return text.strip()


def image_settings(request: dict[str, Any], saved: InferenceSettings, limits: Limits, vocab: int) -> dict[str, Any]:
    """Text→image settings: the request's values where given (checked), else the run's saved ones."""

    def pick(name: str) -> Any:
        value = request.get(name)
        return getattr(saved, name) if value is None else value

    n = pick("num_candidates")
    if not isinstance(n, int) or not 1 <= n <= limits.max_candidates:
        raise RequestError(422, f"num_candidates: {n!r}; allowed: 1 to {limits.max_candidates}")
    high = limits.max_temperature
    temperature = _from_zero("temperature", float(pick("temperature")), high, f"0 (greedy) to {high}")
    top_k = pick("top_k") or None  # 0: off
    if top_k is not None and not 1 <= int(top_k) <= vocab:
        raise RequestError(422, f"top_k: {top_k}; allowed: 0 (off) or 1 to the code book size {vocab}")
    top_p = pick("top_p")
    top_p = None if top_p is None or float(top_p) == 1.0 else float(top_p)
    if top_p is not None and not 0 < top_p <= 1:
        raise RequestError(422, f"top_p: {top_p}; allowed: more than 0, at most 1 (1: off)")
    high = limits.max_cfg_scale
    cfg_scale = _from_zero("cfg_scale", float(pick("cfg_scale")), high, f"0 to {high} (1: no guidance)")
    reranker = str(pick("reranker"))
    seed = request.get("seed")
    seed = 0 if seed is None else int(seed)
    if not 0 <= seed < 2**63:
        raise RequestError(422, f"seed: {seed}; allowed: 0 to 2**63 - 1")
    return {
        "num_candidates": n,
        "reranker": reranker,
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "cfg_scale": cfg_scale,
        "seed": seed,
    }


def _from_zero(field: str, value: float, high: float, allowed: str) -> float:
    """``value`` when it lies in ``[0, high]``; else a 422 naming ``field`` and what is ``allowed``."""
    if not 0 <= value <= high:
        raise RequestError(422, f"{field}: {value}; allowed: {allowed}")
    return value


def text_settings(request: dict[str, Any], saved: InferenceSettings, limits: Limits, *, vqa: bool) -> dict[str, Any]:
    """Caption / answer decoding: the request's ``method``/``num_beams`` where given, else the run's."""
    methods = ANSWER_METHODS if vqa else CAPTION_METHODS
    method = request.get("method") or (saved.answer_method if vqa else saved.caption_method)
    if method not in methods:
        raise RequestError(422, f"method: {method!r}; allowed: {', '.join(methods)}")
    beams = request.get("num_beams")
    beams = saved.num_beams if beams is None else beams
    if not isinstance(beams, int) or not 1 <= beams <= limits.max_beams:
        raise RequestError(422, f"num_beams: {beams!r}; allowed: 1 to {limits.max_beams}")
    return {"method": method, "num_beams": beams}


def read_image(data: bytes, field: str, limits: Limits) -> Image.Image:
    """Uploaded bytes → an RGB image, refusing over-large files, unknown formats and huge dimensions."""
    if not data:
        raise RequestError(422, f"{field}: the uploaded file is empty")
    if len(data) > limits.max_upload_bytes:
        raise RequestError(
            413,
            f"{field}: {len(data)} bytes; at most {limits.max_upload_bytes} are allowed",
        )
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in ("PNG", "JPEG", "WEBP", "GIF", "BMP"):
                raise RequestError(
                    415,
                    f"{field}: {img.format} images are not accepted; send PNG, JPEG, WebP, GIF or BMP",
                )
            if img.width * img.height > limits.max_image_pixels:
                raise RequestError(
                    413,
                    f"{field}: {img.width}×{img.height} pixels; at most {limits.max_image_pixels} allowed",
                )
            img.load()
            return img.convert("RGB")
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        Image.DecompressionBombError,
    ) as err:
        raise RequestError(422, f"{field}: not a readable image ({err})") from None
