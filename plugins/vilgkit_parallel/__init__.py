"""Built-in vilgkit plugin: parallel strategies (single device, DDP, FSDP2, FairScale FSDP).

Importing the package registers ``SingleDevice``, ``DDP``, ``FSDP`` and ``FairScaleFSDP`` in
``PARALLEL_STRATEGIES``; the ``vilgkit_recipe_loaded`` hook refuses a FairScale recipe on a
machine without CUDA before anything is built.
"""

from typing import Any

from vilgkit.hookspecs import hookimpl
from vilgkit_parallel import (  # noqa: F401
    ddp,
    fairscale_fsdp,
    fsdp,
    single,  # noqa: F401
)
from vilgkit_parallel.ddp import DDP
from vilgkit_parallel.fairscale_fsdp import FairScaleFSDP
from vilgkit_parallel.fsdp import FSDP

__all__ = ["DDP", "FSDP", "FairScaleFSDP"]


@hookimpl
def vilgkit_recipe_loaded(recipe: dict[str, Any], path: str) -> None:
    fairscale_fsdp.check_recipe(recipe, path)
