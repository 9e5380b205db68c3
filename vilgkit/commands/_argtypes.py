"""Argument types for the subcommands' flags: each checks its value where it is parsed.

argparse turns an ``ArgumentTypeError`` into ``vilgkit CMD: argument --flag: MESSAGE`` (one line,
exit 2), so every message here says what is allowed; the flag and the value are added by argparse.
"""

from __future__ import annotations

import argparse
import math
from typing import Any


def _number(text: str, kind: type) -> float | int:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None


def positive_int(text: str) -> int:
    """An integer ≥ 1."""
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: give an integer ≥ 1")
    return value


def non_negative_int(text: str) -> int:
    """An integer ≥ 0."""
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: give an integer ≥ 0")
    return value


def seed(text: str) -> int:
    """A random seed: an integer in [0, 2**63)."""
    value = _number(text, int)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"{value} is not allowed: give an integer in [0, 2**63)")
    return value


def non_negative_float(text: str) -> float:
    """A finite number ≥ 0 (a temperature: 0 means greedy; a guidance scale)."""
    value = _number(text, float)
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text} is not allowed: give a finite number ≥ 0")
    return value


def probability(text: str) -> float:
    """A nucleus mass in (0, 1]."""
    value = _number(text, float)
    if not (0 < value <= 1):  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is not allowed: give a number in (0, 1]")
    return value


def text(value: str) -> str:
    """Text that is valid UTF-8 (argv bytes that are not arrive as lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise argparse.ArgumentTypeError(f"{value.encode('utf-8', 'surrogateescape')!r} is not UTF-8 text") from None
    if "\x00" in value:
        raise argparse.ArgumentTypeError("text with a NUL character is not allowed")
    return value


def device(value: str) -> str:
    """``auto``, ``cpu``, ``cuda`` or ``cuda:N`` — and CUDA only when this machine has it."""
    import torch

    if value in ("auto", "cpu"):
        return value
    if value == "cuda" or (value.startswith("cuda:") and value[5:].isdigit()):
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{value}: CUDA is not available on this machine; use cpu or auto")
        index = int(value[5:]) if ":" in value else 0
        if index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{value}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return value
    raise argparse.ArgumentTypeError(f"{value!r} is not a device: use auto, cpu, cuda or cuda:N")


def flags(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The values of the flags ``names`` as keyword arguments, for a subcommand that forwards its
    flags unchanged to the library function of the same parameter names."""
    return {name: getattr(args, name) for name in names}
