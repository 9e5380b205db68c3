"""Conformance testing for vilgkit components, usable by third-party plugin authors.

Every class registered in a vilgkit registry gets the same checks (build, forward/backward where
the interface has one, state-dict round trip, bad arguments rejected). Use it from a test file::

    # tests/test_conformance.py of your plugin
    from vilgkit.testing.conformance import *  # noqa: F401,F403

and restrict it to your plugin with ``pytest --vilgkit-plugin=<entry-point name>``. A component
builds with no arguments, or from ``cls.conformance_args()`` (a classmethod returning tiny kwargs).
"""

from vilgkit.testing.components import ComponentCase, build_component, registered_components

__all__ = ["ComponentCase", "build_component", "registered_components"]
