"""User-facing errors: one clear line, no traceback unless ``--debug``."""

from __future__ import annotations

import errno


class VilgkitError(Exception):
    """An error caused by the user's input (recipe, paths, arguments), printed as one line."""


class RecipeError(VilgkitError):
    """A recipe that cannot be parsed or validated; the message names the file and the key.

    ``key`` is the dotted recipe key at fault (``stages.2.init_args.trainer.steps``) when known, so a
    bad value that came from a command-line override can be blamed on the override.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class ComponentArgumentError(RecipeError, ValueError):
    """A recipe component whose constructor rejected its ``init_args`` (also a ``ValueError``, which
    is what the constructor raised, so library code catching that keeps working)."""


class InputError(VilgkitError):
    """Bad user input for inference (empty prompt, over-long prompt, unreadable image...)."""


class NotYetImplementedError(VilgkitError):
    """A subcommand or feature that has not landed yet (the CLI exits non-zero, never pretends)."""


class VilgkitWarning(UserWarning):
    """Something the user should know that does not stop the command (the CLI prints it as one line)."""


class UnknownWordsWarning(VilgkitWarning):
    """A prompt is mostly words the text tokenizer does not know (they become ``[UNK]``)."""


#: file-system failures the CLI reports as one line (they are about the machine, not a bug)
_OS_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def os_error_line(err: OSError) -> str | None:
    """``"no space left on the device writing FILE"``-style line for a file-system failure, else ``None``."""
    what = _OS_ERRORS.get(err.errno)
    if what is None:
        return None
    target = f" writing {err.filename}" if err.errno in (errno.ENOSPC, errno.EDQUOT) else f": {err.filename}"
    return what + (target if err.filename else "")
