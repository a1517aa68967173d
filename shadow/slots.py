"""Building frozen slots dataclasses on hot paths without their generated `__init__`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["slot_setters"]


def slot_setters(cls: type, fields: tuple[str, ...]) -> tuple[Callable[[Any, Any], None], ...]:
    """The slot setters of `cls` in `fields` order; RuntimeError if its fields differ."""
    # A frozen dataclass's __init__ calls object.__setattr__ once per field: where a record
    # is built per request, callers set the slots directly, in the order they pass values.
    if getattr(cls, "__slots__", None) != fields:
        raise RuntimeError(f"{cls.__name__} fields changed: expected {fields}")
    return tuple(getattr(cls, name).__set__ for name in fields)
