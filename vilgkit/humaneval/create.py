"""``vilgkit humaneval create``: a campaign from one run (or two, for a blind A/B) and a set of inputs.

Inputs are the run's held-out data (``--items shapes``: the recipe's data class on its ``test``
split, as the ``Evaluate`` stage uses) or a user's JSONL file, one object per line:

* ``text2image``: ``{"prompt": "a red circle"}``;
* ``caption``: ``{"image": "pictures/0001.png"}`` (paths relative to the JSONL file);
* ``vqa``: ``{"image": "...", "question": "...", "answer": "..."}`` (``answer``, the human one, optional).

Each run produces its output for every input with its saved inference settings (best of N images,
captions, answers), stored in the campaign file batch by batch, so an interrupted ``create`` run
again with the same arguments goes on from the last finished batch.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

from PIL import Image

from vilgkit.errors import VilgkitError
from vilgkit.humaneval.protocols import PROTOCOLS
from vilgkit.humaneval.store import Campaign

JSONL_KEYS = {
    "text2image": ({"prompt"}, set()),
    "caption": ({"image"}, set()),
    "vqa": ({"image", "question"}, {"answer"}),
}


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def read_jsonl_inputs(path: str | Path, protocol: str, limit: int | None = None) -> list[dict[str, Any]]:
    """A user's inputs; a bad line is an error naming the file, the line and what is allowed."""
    path = Path(path)
    if not path.is_file():
        raise VilgkitError(f"--items: file not found: {path}")
    required, optional = JSONL_KEYS[protocol]
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise VilgkitError(f"{where}: not JSON ({err.msg})") from None
        if not isinstance(obj, dict) or not required <= set(obj) or set(obj) - required - optional:
            allowed = ", ".join(sorted(required)) + (f" (optional: {', '.join(sorted(optional))})" if optional else "")
            raise VilgkitError(f"{where}: a {protocol} input is an object with the keys {allowed}")
        if any(not isinstance(v, str) or not v.strip() for v in obj.values()):
            raise VilgkitError(f"{where}: every value must be a non-empty string")
        row: dict[str, Any] = {
            "text": obj.get("prompt"),
            "question": obj.get("question"),
            "truth": obj.get("answer"),
        }
        if "image" in obj:
            image_path = (path.parent / obj["image"]).resolve()
            try:
                with Image.open(image_path) as img:
                    row["image"] = png_bytes(img.convert("RGB"))
            except (OSError, ValueError) as err:
                raise VilgkitError(f"{where}: cannot read the image {image_path}: {err}") from None
        rows.append(row)
        if limit is not None and len(rows) >= limit:
            break
    if not rows:
        raise VilgkitError(f"--items: {path} holds no inputs")
    return rows


def shapes_inputs(run_dir: Path, protocol: str, num_items: int) -> list[dict[str, Any]]:
    """Held-out scenes of the run's data (its ``test`` split): captions as prompts, images, VQA pairs."""
    import yaml

    from vilgkit.engine.runner import RESOLVED_RECIPE
    from vilgkit.interfaces import RunContext
    from vilgkit.pictures import to_pil
    from vilgkit.stages.evaluate import default_eval_data

    recipe = {k: v for k, v in yaml.safe_load((run_dir / RESOLVED_RECIPE).read_text()).items() if k != "_versions"}
    try:
        data, _ = default_eval_data(RunContext(run_dir=run_dir, components={}, recipe=recipe), num_items)
    except KeyError as err:
        raise VilgkitError(f"--items shapes: {err.args[0]}") from None
    rows = []
    for i in range(min(num_items, len(data))):
        sample = data[i]
        row: dict[str, Any] = {"text": sample["caption"] if protocol == "text2image" else None}
        if protocol != "text2image":
            row["image"] = png_bytes(to_pil(sample["image"][None])[0])
        if protocol == "vqa":
            row["question"], row["truth"] = sample["question"], sample["answer"]
        rows.append(row)
    return rows


def _outputs(pipe, protocol: str, rows: list[Any], seed: int) -> list[dict[str, Any]]:
    if protocol == "text2image":
        return [{"image": png_bytes(img)} for img in pipe.text_to_image([r["text"] for r in rows], seed=seed)]
    images = [Image.open(io.BytesIO(r["image"])).convert("RGB") for r in rows]
    if protocol == "caption":
        return [{"output_text": c} for c in pipe.image_to_text(images)]
    return [{"output_text": a} for a in pipe.answer(images, [r["question"] for r in rows])]


def create_campaign(
    path: str | Path,
    protocol: str,
    runs: list[str],
    items: str = "shapes",
    *,
    num_items: int = 50,
    raters_per_item: int = 3,
    seed: int = 0,
    batch_size: int = 8,
    device: str = "auto",
    log=print,
) -> Campaign:
    """Build (or finish building) a campaign file; see the module docstring."""
    from vilgkit import Pipeline

    if protocol not in PROTOCOLS:
        raise VilgkitError(f"--protocol: {protocol!r}; allowed: {', '.join(PROTOCOLS)}")
    if not 1 <= len(runs) <= 2:
        raise VilgkitError("give one run, or two for a blind A/B comparison")
    if raters_per_item < 1 or num_items < 1 or batch_size < 1:
        raise VilgkitError("--raters-per-item, --num-items and --batch-size must be at least 1")
    pipes = {label: Pipeline.from_run_dir(run, device=device) for label, run in zip("AB", runs)}
    rows = (
        read_jsonl_inputs(items, protocol, num_items)
        if items != "shapes"
        else shapes_inputs(Path(runs[0]), protocol, num_items)
    )
    systems: dict[str, Any] = {
        label: {
            "name": Path(run).resolve().name,
            "run": str(Path(run).resolve()),
            "settings": pipe.settings.to_dict(),
        }
        for (label, pipe), run in zip(pipes.items(), runs)
    }
    if protocol == "vqa" and all(r.get("truth") for r in rows):  # rated blind beside the model's, as in Table 6
        systems["human"] = {"name": "human answers (the data's ground truth)"}
    meta = {
        "protocol": protocol,
        "systems": systems,
        "raters_per_item": raters_per_item,
        "seed": seed,
        "items_source": str(items),
        "num_inputs": len(rows),
        "created": time.time(),
    }
    campaign = Campaign.create(path, meta)
    campaign.add_inputs(rows)
    todo = campaign.input_ids(done=False)
    for start in range(0, len(todo), batch_size):
        ids = todo[start : start + batch_size]
        stored = [dict(r) for r in campaign.inputs(ids)]
        out: list[dict[str, Any]] = []
        for label, pipe in pipes.items():
            for row, result in zip(stored, _outputs(pipe, protocol, stored, seed + ids[0])):
                out.append({"input_id": row["id"], "system": label, **result})
        if "human" in systems:
            out += [{"input_id": row["id"], "system": "human", "output_text": row["truth"]} for row in stored]
        campaign.add_items(ids, out)
        log(f"humaneval create: {min(start + batch_size, len(todo))}/{len(todo)} inputs done")
    counts = campaign.counts()
    log(
        f"humaneval create: {campaign.path}: {counts['items']} items ({protocol}, systems {', '.join(systems)}), "
        f"{raters_per_item} raters per item"
    )
    return campaign
