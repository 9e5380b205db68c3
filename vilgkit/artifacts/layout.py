"""The run directory's layout: every file and folder name a run uses, and which paths its manifest covers."""

from __future__ import annotations

from pathlib import Path

RESOLVED_RECIPE = "recipe.resolved.yaml"
MANIFEST = "artifacts.json"
LOCK = ".vilgkit.lock"
EXTERNAL_DIR = "external"

CHECKPOINTS_DIR = "checkpoints"
CHECKPOINT_MANIFEST = "MANIFEST.json"
CHECKPOINT_META = "meta.json"
DAMAGED_DIR = "damaged"  # under checkpoints/: step folders that could not be used, kept for inspection

FINAL_WEIGHTS = "model.safetensors"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
SAMPLES_DIR = "samples"

FIT_SUMMARY = "fit_summary.json"
IMAGE_TOKENIZER_WEIGHTS = "image_tokenizer.safetensors"
IMAGE_TOKENIZER_RECORD = "image_tokenizer.json"
TOKENIZER_EVAL = "eval.json"
RECONSTRUCTIONS = "reconstructions.png"

GENERATOR_WEIGHTS = "generator.safetensors"
RECONSTRUCTOR_WEIGHTS = "reconstructor.safetensors"
GENERATOR_RECORD = "generator.json"
TOKENIZED_CACHE = "tokenized.safetensors"

MATCHER_WEIGHTS = "matcher.safetensors"
MATCHER_RECORD = "matcher.json"

SHAPES_FEATURES_DIR = "shapes_features"
EXPORT_RECORD = "export.json"
#: What a generator stage records as its tokenizer source when the recipe's own component is used
#: (a published vocabulary or a pre-trained checkpoint, no fit or training stage).
FROM_RECIPE = "recipe"

MANIFEST_FORMAT = "vilgkit-run/1"

#: component classes name the constructor arguments that are paths to files outside the run in a
#: class attribute of this name (e.g. ``TamingVQGAN.EXTERNAL_FILES = ("checkpoint", "config")``)
EXTERNAL_FILES_ATTR = "EXTERNAL_FILES"


def outside_manifest(rel: Path) -> bool:
    """Paths under a run (``rel``, relative to it) that the manifest does not cover: checkpoints
    (their own manifests), the lock, the manifest, temporary and hidden files."""
    return any(part == CHECKPOINTS_DIR or part.startswith(".") for part in rel.parts) or rel.as_posix() == MANIFEST
