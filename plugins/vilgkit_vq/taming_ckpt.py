"""Published taming-transformers VQGAN checkpoints: a Lightning ``.ckpt`` plus its ``model.yaml``.

Both published kinds load: ``taming.models.vqgan.VQModel`` (e.g. ImageNet f=16, 16384 codes) and
``taming.models.vqgan.GumbelVQ`` (OpenImages f=8, 8192 codes — the paper's tokenizer). Nothing is
imported from ``taming.models`` (it needs an old Lightning): the architecture is rebuilt from the
YAML as a :class:`VQGANTokenizer`, whose module names are taming's, and the weights load key for key.

Safety: the ``.ckpt`` is read with ``torch.load(weights_only=True)``. Lightning files may also carry
metadata objects (callbacks' state, ``hyper_parameters`` as OmegaConf objects) that the weights-only
unpickler refuses; those globals are then allow-listed as *inert stand-ins* (classes that accept and
drop any arguments), so no code from the file ever runs — only ``state_dict`` is used.
"""

from __future__ import annotations

import functools
import pickle
from pathlib import Path
from typing import Any

import torch
import yaml

from vilgkit.registry import IMAGE_TOKENIZERS
from vilgkit_vq.vqgan import AUTOENCODER_MODULES, VQGANTokenizer

KINDS = {"VQModel": "vq", "GumbelVQ": "gumbel"}


class CheckpointKeyError(ValueError):
    """A checkpoint whose keys do not match the model; the message lists them."""


class _Inert:
    """Stand-in for a global the checkpoint names but we refuse to import or run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __new__(cls, *args: Any, **kwargs: Any) -> _Inert:
        return object.__new__(cls)

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, item: Any) -> None:
        pass

    def extend(self, items: Any) -> None:
        pass


def _inert(qualified: str) -> tuple[type, str]:
    module, _, name = qualified.rpartition(".")
    return type(name or qualified, (_Inert,), {"__module__": module or "builtins"}), qualified


def read_lightning_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a Lightning checkpoint (or a bare state dict), without running its code.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file holds no mapping of names to tensors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # metadata the weights-only unpickler does not know: allow-list inert stand-ins, retry
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        with torch.serialization.safe_globals([_inert(n) for n in names]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path}: no state_dict (a mapping of parameter names to tensors) in the checkpoint")
    bad = sorted(k for k, v in state.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise ValueError(f"{path}: state_dict entries that are not tensors: {bad}")
    return state


def read_taming_config(path: str | Path) -> tuple[str, dict[str, Any]]:
    """``(kind, VQGANTokenizer kwargs)`` from a taming ``model.yaml`` (``model: {target, params}``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"taming config not found: {path}")
    cfg = yaml.safe_load(path.read_text()) or {}
    model = cfg.get("model", cfg)
    target = str(model.get("target", ""))
    kind = KINDS.get(target.rpartition(".")[2])
    if kind is None:
        raise ValueError(f"{path}: model.target {target!r} is not one of taming.models.vqgan.{{{', '.join(KINDS)}}}")
    params = model.get("params") or {}
    dd = params.get("ddconfig") or {}
    missing = [k for k in ("embed_dim", "n_embed") if k not in params] + [
        f"ddconfig.{k}"
        for k in ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "z_channels", "resolution")
        if k not in dd
    ]
    if missing:
        raise ValueError(f"{path}: missing model.params keys {missing}")
    if dd.get("double_z", True) or dd.get("in_channels", 3) != 3 or dd.get("out_ch", 3) != 3:
        raise ValueError(f"{path}: only RGB VQGANs with double_z: false are supported")
    if params.get("remap") is not None:
        raise ValueError(f"{path}: index remapping (params.remap) is not supported")
    kwargs: dict[str, Any] = dict(
        codebook_size=int(params["n_embed"]),
        code_dim=int(params["embed_dim"]),
        z_channels=int(dd["z_channels"]),
        ch=int(dd["ch"]),
        ch_mult=[int(m) for m in dd["ch_mult"]],
        num_res_blocks=int(dd["num_res_blocks"]),
        attn_resolutions=[int(r) for r in dd["attn_resolutions"]],
        resolution=int(dd["resolution"]),
        dropout=float(dd.get("dropout", 0.0)),
        quantizer=kind,
    )
    if kind == "vq":
        kwargs["legacy_beta"] = True  # the published models were trained with taming's legacy beta placement
    else:
        kwargs["gumbel_kl_weight"] = float(params.get("kl_weight", 1e-8))
    loss = (params.get("lossconfig") or {}).get("params") or {}
    for ours, theirs in (
        ("disc_start", "disc_start"),
        ("disc_weight", "disc_weight"),
        ("codebook_weight", "codebook_weight"),
        ("disc_layers", "disc_num_layers"),
        ("disc_ndf", "disc_ndf"),
        ("disc_factor", "disc_factor"),
    ):
        if theirs in loss:
            kwargs[ours] = loss[theirs]
    return kind, kwargs


def find_taming_config(checkpoint: str | Path) -> Path:
    """The ``model.yaml`` of a checkpoint in taming's layout: next to it, or in the log folder's
    ``configs/`` (``logs/<run>/checkpoints/last.ckpt`` + ``logs/<run>/configs/*-project.yaml``)."""
    ckpt = Path(checkpoint).expanduser()
    candidates = [ckpt.parent / "model.yaml", ckpt.parent.parent / "configs" / "model.yaml"]
    candidates += sorted((ckpt.parent.parent / "configs").glob("*-project.yaml"))
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"no taming config for {ckpt}: looked for {candidates[0]} and {candidates[1]} "
        "(or ../configs/*-project.yaml); give `config:` explicitly"
    )


@IMAGE_TOKENIZERS.register_module()
class TamingVQGAN(VQGANTokenizer):
    """A published taming VQGAN: architecture from ``config``, weights from ``checkpoint``.

    Discriminator and LPIPS weights in the file are ignored (a fresh discriminator is built, so the
    model can be fine-tuned). Every autoencoder key must be present with the right shape.

    Args:
        checkpoint: path to the Lightning ``.ckpt`` (or a ``.safetensors`` state dict).
        config: path to its ``model.yaml`` (default: found by :func:`find_taming_config`).
        codebook_size: optional; when given it must equal the config's ``n_embed`` (lets recipes
            link the generator's image vocabulary to it).
        perceptual_weight: LPIPS weight for fine-tuning (0: off).
        lpips_weights: local LPIPS weights when ``perceptual_weight > 0``.

    Raises:
        CheckpointKeyError: listing missing, unexpected or mis-shaped keys.
    """

    #: the published files are copied into the run (``external/``): it loads after they move
    EXTERNAL_FILES = ("checkpoint", "config", "lpips_weights", "vgg_weights")

    def __init__(
        self,
        checkpoint: str,
        config: str | None = None,
        codebook_size: int | None = None,
        perceptual_weight: float = 0.0,
        lpips_weights: str | None = None,
    ) -> None:
        config = str(config) if config is not None else str(find_taming_config(checkpoint))
        kind, kwargs = read_taming_config(config)
        if codebook_size is not None and codebook_size != kwargs["codebook_size"]:
            raise ValueError(f"codebook_size={codebook_size} but {config} says n_embed={kwargs['codebook_size']}")
        super().__init__(**kwargs, perceptual_weight=perceptual_weight, lpips_weights=lpips_weights)
        self.kind, self.checkpoint_path = kind, str(checkpoint)
        if str(checkpoint).endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(str(checkpoint))
        else:
            state = read_lightning_checkpoint(checkpoint)
        self.load_autoencoder_state(state, source=str(checkpoint))

    @classmethod
    def implied_files(cls, init_args: dict[str, Any]) -> dict[str, str]:
        """The config this tokenizer finds next to its checkpoint when ``config`` is not given (so a
        run copies it in with the checkpoint)."""
        if init_args.get("config") is not None or not init_args.get("checkpoint"):
            return {}
        try:
            return {"config": str(find_taming_config(init_args["checkpoint"]))}
        except FileNotFoundError:
            return {}  # the constructor reports it

    def load_autoencoder_state(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
        """Load taming-layout autoencoder weights strictly; ``loss.*`` (discriminator, LPIPS) is ignored."""
        own = {k: v for k, v in self.state_dict().items() if k.split(".")[0] in AUTOENCODER_MODULES}
        given = {k: v for k, v in state.items() if not k.startswith("loss.")}
        missing = sorted(set(own) - set(given))
        unexpected = sorted(set(given) - set(own))
        mismatched = sorted(
            f"{k}: checkpoint {tuple(given[k].shape)} vs model {tuple(own[k].shape)}"
            for k in set(own) & set(given)
            if given[k].shape != own[k].shape
        )
        if missing or unexpected or mismatched:
            parts = [
                f"missing keys {missing}" if missing else "",
                f"unexpected keys {unexpected}" if unexpected else "",
                f"mismatched shapes {mismatched}" if mismatched else "",
            ]
            raise CheckpointKeyError(f"{source} does not fit its config: " + "; ".join(p for p in parts if p))
        self.load_state_dict(given, strict=False)

    @classmethod
    def conformance_args(cls) -> dict[str, Any]:
        """A tiny taming-layout checkpoint + config, written once per process to a temporary folder."""
        return dict(_tiny_published_checkpoint())


@functools.lru_cache(maxsize=1)
def _tiny_published_checkpoint() -> tuple[tuple[str, str], ...]:
    import tempfile

    from vilgkit_vq.taming_export import export_taming_checkpoint

    tiny = VQGANTokenizer(**VQGANTokenizer.conformance_args())
    folder = Path(tempfile.mkdtemp(prefix="vilgkit-taming-"))
    ckpt, cfg = export_taming_checkpoint(tiny, folder)
    return (("checkpoint", str(ckpt)), ("config", str(cfg)))
