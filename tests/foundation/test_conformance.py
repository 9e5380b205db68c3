"""vilgkit's own conformance run: every registered component, built-in plugins and core alike."""

from vilgkit.testing.conformance import *  # noqa: F401,F403
