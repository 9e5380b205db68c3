"""Built-in recipe stages. Every module in this package is imported so its stages register in ``STAGES``."""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_info.name}")
