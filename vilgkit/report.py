"""A self-contained HTML evaluation report: the numbers next to the pictures they come from.

One file, no external assets: images are inlined as base64 PNGs (scaled up without smoothing so
small generated images stay readable). Sections: metrics, settings (sampling, seeds, reranker,
checkpoint), text→image (each prompt with all its candidates, the kept one outlined, reranker scores),
image→text (each image with its generated caption and references), VQA (image, question, answer,
truth). Verdicts from the scorers are shown as ✓ / ✗.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
img{image-rendering:pixelated;width:96px;height:96px;margin:2px;border:3px solid transparent}
img.best{border-color:#2a7}.ok{color:#2a7;font-weight:bold}.bad{color:#c33;font-weight:bold}
.row{display:flex;align-items:center;gap:1em;margin:.4em 0}.cands{display:flex;flex-wrap:wrap}
.cand{text-align:center;font-size:11px}pre{background:#f6f6f6;padding:.6em;overflow:auto;font-size:12px}
"""


def png_data_uri(image: torch.Tensor) -> str:
    """A ``[3, H, W]`` tensor in [-1, 1] → ``data:image/png;base64,…``."""
    from vilgkit.pictures import to_pil

    buf = io.BytesIO()
    to_pil(image[None])[0].save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _verdict(ok: Any) -> str:
    if ok is None:
        return ""
    return '<span class="ok">✓</span>' if ok else '<span class="bad">✗</span>'


def _esc(text: Any) -> str:
    return html.escape(str(text))


def _metrics_table(metrics: dict[str, float]) -> str:
    rows = "".join(f"<tr><td>{_esc(k)}</td><td>{v:.4f}</td></tr>" for k, v in sorted(metrics.items()))
    return f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>"


def _section(title: str, examples: list[dict[str, Any]], row: Callable[[dict[str, Any]], str]) -> str:
    """A task's heading and one ``row`` div per example."""
    return f"<h2>{title}</h2>" + "".join(f'<div class="row">{row(ex)}</div>' for ex in examples)


def _beside_image(ex: dict[str, Any], text: str) -> str:
    """The example's image with ``text`` (HTML) beside it."""
    return f'<img src="{png_data_uri(ex["image"])}"><div>{text}</div>'


def _text2image_row(ex: dict[str, Any]) -> str:
    cands = []
    for j, img in enumerate(ex["candidates"]):
        score = f"{ex['scores'][j]:.2f}" if ex.get("scores") else f"#{j}"
        cls = ' class="best"' if j == ex["best"] else ""
        cands.append(f'<div class="cand"><img{cls} src="{png_data_uri(img)}"><br>{_esc(score)}</div>')
    prompt = f'<div style="width:260px">{_verdict(ex.get("correct"))} {_esc(ex["prompt"])}</div>'
    return f'{prompt}<div class="cands">{"".join(cands)}</div>'


def _image2text_row(ex: dict[str, Any]) -> str:
    refs = "<br>".join(_esc(r) for r in ex["references"][:3])
    caption = f"{_verdict(ex.get('correct'))} <b>{_esc(ex['caption'])}</b>"
    return _beside_image(ex, f"{caption}<br><small>references:<br>{refs}</small>")


def _vqa_row(ex: dict[str, Any]) -> str:
    answer = f"A: <b>{_esc(ex['answer'])}</b> {_verdict(ex.get('correct'))}"
    return _beside_image(ex, f"Q: {_esc(ex['question'])}<br>{answer}<br><small>truth: {_esc(ex['truth'])}</small>")


def _text2image(examples: list[dict[str, Any]]) -> str:
    return _section("Text → image", examples, _text2image_row)


def _image2text(examples: list[dict[str, Any]]) -> str:
    return _section("Image → text", examples, _image2text_row)


def _vqa(examples: list[dict[str, Any]]) -> str:
    return _section("Visual question answering", examples, _vqa_row)


def render_report(record: dict[str, Any], examples: Any, title: str = "vilgkit evaluation") -> str:
    """The report as an HTML string (see :func:`write_report`)."""
    settings = {k: v for k, v in record.items() if k != "metrics"}
    body = [
        f"<h1>{_esc(title)}</h1>",
        "<h2>Metrics</h2>",
        _metrics_table(record.get("metrics", {})),
        "<h2>Settings (reproduce with these)</h2>",
        f"<pre>{_esc(json.dumps(settings, indent=2, ensure_ascii=False))}</pre>",
    ]
    if getattr(examples, "text2image", None):
        body.append(_text2image(examples.text2image))
    if getattr(examples, "image2text", None):
        body.append(_image2text(examples.image2text))
    if getattr(examples, "vqa", None):
        body.append(_vqa(examples.vqa))
    return (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{_CSS}</style></head><body>{''.join(body)}</body></html>"
    )


def write_report(path: str | Path, record: dict[str, Any], examples: Any, title: str = "vilgkit evaluation") -> Path:
    """Write the self-contained HTML report.

    Args:
        path: output ``.html`` file.
        record: what ``eval.json`` holds (``metrics`` plus settings).
        examples: an object with lists ``text2image`` (``prompt``, ``candidates`` ``[N, 3, H, W]``,
            ``best``, ``scores``, ``correct``), ``image2text`` (``image``, ``caption``, ``references``,
            ``correct``) and ``vqa`` (``image``, ``question``, ``answer``, ``truth``, ``correct``).
    """
    path = Path(path)
    path.write_text(render_report(record, examples, title), encoding="utf-8")
    return path
