"""``init_with_defaults``: a subclass constructor that is its parent's with other defaults."""

from __future__ import annotations

import inspect

import pytest

from vilgkit.init_defaults import init_with_defaults


class Parent:
    def __init__(self, a: int, b: str | None = None, *, c: float = 1.0) -> None:
        self.seen = (a, b, c)


class Child(Parent):
    __init__ = init_with_defaults(Parent.__init__, b="child", c=2.0)


def test_the_new_defaults_apply_and_explicit_values_win():
    assert Child(1).seen == (1, "child", 2.0)
    assert Child(1, None, c=3.0).seen == (1, None, 3.0)  # an explicit None is passed on, not replaced
    assert Child(a=1, b="x").seen == (1, "x", 2.0)
    assert Parent(1).seen == (1, None, 1.0)  # the parent keeps its own


def test_the_signature_is_the_parents_with_the_new_defaults():
    params = inspect.signature(Child).parameters
    assert list(params) == ["a", "b", "c"]
    assert params["b"].default == "child" and params["c"].default == 2.0
    assert params["c"].kind is inspect.Parameter.KEYWORD_ONLY


def test_wrong_arguments_fail_naming_the_class():
    with pytest.raises(TypeError, match=r"Child\.__init__\(\) got an unexpected keyword argument 'd'"):
        Child(1, d=0)
    with pytest.raises(TypeError, match="missing a required argument: 'a'"):
        Child()


def test_an_unknown_parameter_is_refused_at_class_definition():
    with pytest.raises(TypeError, match=r"takes no parameter\(s\) \['z'\]"):
        init_with_defaults(Parent.__init__, z=1)
