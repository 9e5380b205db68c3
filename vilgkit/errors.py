"""User-facing errors: one clear line, no traceback unless ``--debug``."""


class VilgkitError(Exception):
    """An error caused by the user's input (recipe, paths, arguments), printed as one line."""


class RecipeError(VilgkitError):
    """A recipe that cannot be parsed or validated; the message names the file and the key."""


class ComponentArgumentError(RecipeError, ValueError):
    """A recipe component whose constructor rejected its ``init_args`` (also a ``ValueError``, which
    is what the constructor raised, so library code catching that keeps working)."""


class NotYetImplementedError(VilgkitError):
    """A subcommand or feature that has not landed yet (the CLI exits non-zero, never pretends)."""


class VilgkitWarning(UserWarning):
    """Something the user should know that does not stop the command (the CLI prints it as one line)."""


class UnknownWordsWarning(VilgkitWarning):
    """A prompt is mostly words the text tokenizer does not know (they become ``[UNK]``)."""
