"""Loading users' own objects by name: ``package.module:attr`` or ``path/to/file.py:attr``.

Guards (``--guard hook:...``), eval models (``--model py:...``) and eval policies take such specs,
so a team can plug in a moderation API, an offline test model or a custom policy without
packaging it first.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path
from typing import Any

from .errors import ConfigError


def load_object(spec: str, what: str = "object") -> Any:
    """The object named by ``module:attr`` (dots in ``attr`` walk attributes) or
    ``file.py:attr`` (the file is imported as a fresh module). Errors are :class:`ConfigError`."""
    module, sep, attr = spec.rpartition(":") if spec.count(":") > 1 else spec.partition(":")
    if not sep or not module or not attr:
        raise ConfigError(f"{what} {spec!r}: write it as module:name or path/to/file.py:name")
    try:
        if module.endswith(".py"):
            path = Path(module)
            loader_spec = importlib.util.spec_from_file_location(path.stem, path)
            if loader_spec is None or loader_spec.loader is None or not path.is_file():
                raise ImportError(f"no Python file {module!r}")
            obj: Any = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(obj)
        else:
            obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError, SyntaxError) as e:
        raise ConfigError(f"{what} {spec!r} cannot be loaded: {e}") from e
    return obj
