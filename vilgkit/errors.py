"""User-facing errors: one clear line, no traceback unless ``--debug``."""


class VilgkitError(Exception):
    """An error caused by the user's input (recipe, paths, arguments), printed as one line."""


class RecipeError(VilgkitError):
    """A recipe that cannot be parsed or validated; the message names the file and the key."""


class NotYetImplementedError(VilgkitError):
    """A subcommand or feature that has not landed yet (the CLI exits non-zero, never pretends)."""
