"""pytest plugin (entry point ``pytest11``): the ``--vilgkit-plugin`` option and component fixtures."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("vilgkit")
    group.addoption(
        "--vilgkit-plugin",
        default=None,
        help="restrict vilgkit conformance tests to the components of this plugin (entry-point name)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize any test asking for ``vilgkit_component`` over the registered components.

    A test may narrow the registry with ``@pytest.mark.vilgkit_registry("image_tokenizer")``.
    """
    if "vilgkit_component" not in metafunc.fixturenames:
        return
    from vilgkit.testing.components import registered_components

    marker = metafunc.definition.get_closest_marker("vilgkit_registry")
    registry = marker.args[0] if marker else None
    plugin = metafunc.config.getoption("--vilgkit-plugin")
    cases = registered_components(registry=registry, plugin=plugin)
    kind_marker = metafunc.definition.get_closest_marker("vilgkit_kind")
    if kind_marker:  # an interface check is generated only for the components implementing it
        import inspect

        kind = kind_marker.args[0]
        cases = [c for c in cases if inspect.isclass(c.cls) and issubclass(c.cls, kind)]
    if not cases:
        metafunc.parametrize("vilgkit_component", [pytest.param(None, marks=pytest.mark.skip("none registered"))])
        return
    metafunc.parametrize("vilgkit_component", cases, ids=[c.id for c in cases])


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vilgkit_registry(name): restrict vilgkit_component to one registry")
    config.addinivalue_line("markers", "vilgkit_kind(cls): parametrize only over components subclassing cls")
