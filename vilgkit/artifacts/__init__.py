"""The run directory: its layout, atomic writes, the hash manifest, the writer lock, and loading
every component back (tokenizers, generator, reconstructor).

Layout of ``run_dir`` (every file name lives in :mod:`vilgkit.artifacts.layout`)::

    recipe.resolved.yaml          the resolved recipe, with the versions it ran under
    artifacts.json                the manifest: size + SHA-256 of every file the run wrote
    .vilgkit.lock                 the writer lock (held by the process writing the run)
    external/<sha256[:16]>/NAME   copies of files the recipe names outside the run (a taming
                                  checkpoint, a BERT vocab.txt), so the run loads after they move
    <stage>/...                   one folder per stage (below)
    <stage>/checkpoints/step_N/   resumable training state; each step folder has its own
                                  MANIFEST.json (engine/checkpoint.py) and is not in artifacts.json

Stage folders hold (depending on the stage): ``model.safetensors`` (the Trainer's final weights),
``metrics.jsonl``, ``tensorboard/``, ``samples/``; the text tokenizer's files and
``fit_summary.json``; ``image_tokenizer.safetensors`` + ``image_tokenizer.json``, ``eval.json``,
``reconstructions.png``; ``generator.safetensors`` (+ ``reconstructor.safetensors``),
``generator.json`` and the ``tokenized.safetensors`` cache.

Writing: :func:`atomic_write` (a temporary file in the same folder, fsync, rename, fsync of the
folder) under every writer here; :class:`RunDir` records what it writes in ``artifacts.json``.
Reading: every loader verifies the file against the manifest of the run that holds it before it
deserialises a byte, and turns an unreadable file into one :class:`ArtifactError` naming it.
One writer per run directory: :meth:`RunDir.lock` (``fcntl.flock``), taken by ``vilgkit run``
(rank 0 only under torchrun), ``vilgkit eval`` and ``vilgkit export`` before they write.

The package, one module a concern (each imports only those above it; every name is re-exported
here, so ``from vilgkit import artifacts`` and ``artifacts.X`` are the way to use it):

* :mod:`~vilgkit.artifacts.layout`: the file and folder names, and which paths the manifest covers;
* :mod:`~vilgkit.artifacts.files`: hashes, atomic writes, safetensors files, unreadable files as
  one error (nothing here knows about manifests);
* :mod:`~vilgkit.artifacts.external`: which recipe arguments name files outside the run;
* :mod:`~vilgkit.artifacts.lock`: the writer lock (:class:`RunDir` has its methods);
* :mod:`~vilgkit.artifacts.rundir`: :class:`RunDir` (the manifest, verification, external copies)
  and reading run files by path, verified against the manifest of the run that holds them;
* :mod:`~vilgkit.artifacts.recorded`: writing run files by path, recorded in that manifest;
* :mod:`~vilgkit.artifacts.loading`: the components of a run loaded back, and :func:`load_run`.
"""

from vilgkit.artifacts.files import (
    ArtifactError,
    CorruptFileError,
    atomic_write,
    file_record,
    first_line,
    fsync_path,
    load_state_strict,
    load_tensors,
    readable,
    save_file_atomic,
    save_tensors,
    sha256_file,
    tensor_metadata,
    tensor_shapes,
    weights_mismatch,
    write_bytes_atomic,
    write_json_atomic,
    write_text_atomic,
)
from vilgkit.artifacts.layout import (
    CHECKPOINT_MANIFEST,
    CHECKPOINT_META,
    CHECKPOINTS_DIR,
    DAMAGED_DIR,
    EXPORT_RECORD,
    EXTERNAL_DIR,
    EXTERNAL_FILES_ATTR,
    FINAL_WEIGHTS,
    FIT_SUMMARY,
    FROM_RECIPE,
    GENERATOR_RECORD,
    GENERATOR_WEIGHTS,
    IMAGE_TOKENIZER_RECORD,
    IMAGE_TOKENIZER_WEIGHTS,
    LOCK,
    MANIFEST,
    MANIFEST_FORMAT,
    MATCHER_RECORD,
    MATCHER_WEIGHTS,
    METRICS_FILE,
    RECONSTRUCTIONS,
    RECONSTRUCTOR_WEIGHTS,
    RESOLVED_RECIPE,
    SAMPLES_DIR,
    SHAPES_FEATURES_DIR,
    TENSORBOARD_DIR,
    TOKENIZED_CACHE,
    TOKENIZER_EVAL,
)
from vilgkit.artifacts.loading import (
    LoadedRun,
    attach_reconstructor,
    build_components,
    image_tokenizer_file,
    last_generator_stage,
    last_matcher_stage,
    load_generator_weights,
    load_image_tokenizer,
    load_matcher,
    load_run,
    load_text_tokenizer,
    read_recipe,
    stage_names,
)
from vilgkit.artifacts.lock import RunDirBusyError
from vilgkit.artifacts.recorded import record_file, record_tree, save_weights, write_json, write_text
from vilgkit.artifacts.rundir import (
    RunDir,
    load_weights,
    read_json,
    read_weights,
    verify_file,
    verify_tree,
    warn,
)

__all__ = [
    "CHECKPOINTS_DIR",
    "CHECKPOINT_MANIFEST",
    "CHECKPOINT_META",
    "DAMAGED_DIR",
    "EXPORT_RECORD",
    "EXTERNAL_DIR",
    "EXTERNAL_FILES_ATTR",
    "FINAL_WEIGHTS",
    "FIT_SUMMARY",
    "FROM_RECIPE",
    "GENERATOR_RECORD",
    "GENERATOR_WEIGHTS",
    "IMAGE_TOKENIZER_RECORD",
    "IMAGE_TOKENIZER_WEIGHTS",
    "LOCK",
    "MATCHER_RECORD",
    "MATCHER_WEIGHTS",
    "MANIFEST",
    "MANIFEST_FORMAT",
    "METRICS_FILE",
    "RECONSTRUCTIONS",
    "RECONSTRUCTOR_WEIGHTS",
    "RESOLVED_RECIPE",
    "SAMPLES_DIR",
    "SHAPES_FEATURES_DIR",
    "TENSORBOARD_DIR",
    "TOKENIZED_CACHE",
    "TOKENIZER_EVAL",
    "ArtifactError",
    "CorruptFileError",
    "LoadedRun",
    "RunDir",
    "RunDirBusyError",
    "atomic_write",
    "attach_reconstructor",
    "build_components",
    "file_record",
    "first_line",
    "fsync_path",
    "image_tokenizer_file",
    "last_generator_stage",
    "last_matcher_stage",
    "load_generator_weights",
    "load_image_tokenizer",
    "load_matcher",
    "load_run",
    "load_state_strict",
    "load_tensors",
    "load_text_tokenizer",
    "load_weights",
    "read_json",
    "read_recipe",
    "read_weights",
    "readable",
    "record_file",
    "record_tree",
    "save_file_atomic",
    "save_tensors",
    "save_weights",
    "sha256_file",
    "stage_names",
    "tensor_metadata",
    "tensor_shapes",
    "verify_file",
    "verify_tree",
    "warn",
    "weights_mismatch",
    "write_bytes_atomic",
    "write_json",
    "write_json_atomic",
    "write_text",
    "write_text_atomic",
]
