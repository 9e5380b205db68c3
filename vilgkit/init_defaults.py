"""A subclass constructor that is its parent's with other defaults: one signature, not two copies.

A recipe class that differs from its parent only in the default of an argument or two (e.g.
``FinetuneVQA``, whose ``generator_from`` defaults to ``train_generator``) would otherwise repeat
the parent's whole signature and pass every argument on by position, where an argument added to
the parent and forgotten in the copy, or two swapped, goes unnoticed.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any


def init_with_defaults(init: Callable[..., None], **defaults: Any) -> Callable[..., None]:
    """``init`` (a parent class's ``__init__``) with new default values for the parameters named.

    Use as ``__init__ = init_with_defaults(Parent.__init__, name=value)`` in the subclass body.
    ``inspect.signature`` (and so recipe validation and jsonargparse) sees the parent's parameters
    with the new defaults; an argument given explicitly, ``None`` included, is passed on as given.
    """
    signature = inspect.signature(init)
    unknown = sorted(set(defaults) - set(signature.parameters))
    if unknown:
        raise TypeError(f"{init.__qualname__} takes no parameter(s) {unknown}")
    parameters = [p.replace(default=defaults.get(name, p.default)) for name, p in signature.parameters.items()]
    new_signature = signature.replace(parameters=parameters)

    @functools.wraps(init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            bound = new_signature.bind(self, *args, **kwargs)
        except TypeError as err:  # worded as Python words it for a constructor of its own
            raise TypeError(f"{type(self).__qualname__}.__init__() {err}") from None
        bound.apply_defaults()
        init(*bound.args, **bound.kwargs)

    __init__.__signature__ = new_signature
    return __init__
