"""Objects handed to `unipo.train` in this process (reward functions, judges), published under a name so that a
config points at them by dotted path, `unipo.live.<name>`, like any other user object (unipo/api.py)."""

from __future__ import annotations

from typing import Any


def publish(obj: Any, name: str) -> str:
    """Publish `obj` as `unipo.live.<name>` (numbered when another object holds that name); returns the dotted path."""
    key, n = name, 1
    while globals().get(key, obj) is not obj:
        n += 1
        key = f"{name}_{n}"
    globals()[key] = obj
    return f"{__name__}.{key}"
