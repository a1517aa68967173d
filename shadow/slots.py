"""Building frozen slots dataclasses on hot paths without their generated `__init__`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["slot_setters", "unfrozen_twin"]


def slot_setters(cls: type, fields: tuple[str, ...]) -> tuple[Callable[[Any, Any], None], ...]:
    """The slot setters of `cls` in `fields` order; RuntimeError if its fields differ."""
    # A frozen dataclass's __init__ calls object.__setattr__ once per field: where a record
    # is built per request, callers set the slots directly, in the order they pass values.
    _check_fields(cls, fields)
    return tuple(getattr(cls, name).__set__ for name in fields)


def unfrozen_twin(cls: type, fields: tuple[str, ...]) -> type:
    """A class with the slots of the frozen slots dataclass `cls` and plain attribute
    assignment: an instance filled in field by field becomes a `cls` when its `__class__`
    is set to `cls` (the two have one memory layout). RuntimeError if the fields of `cls`
    differ from `fields`, or its layout is not the twin's.

    A slot setter (`slot_setters`) is a call through a method wrapper with an argument
    tuple, about 1,000 instructions per field; an assignment to a slot of a class that
    does not freeze it is a specialised store of a few dozen.
    """
    _check_fields(cls, fields)
    twin = type(f"_Unfrozen{cls.__name__}", (), {"__slots__": fields, "__module__": __name__})
    probe: Any = object.__new__(twin)
    try:
        probe.__class__ = cls
    except TypeError as e:
        raise RuntimeError(f"{cls.__name__} cannot be built through a twin: {e}") from None
    return twin


def _check_fields(cls: type, fields: tuple[str, ...]) -> None:
    if getattr(cls, "__slots__", None) != fields:
        raise RuntimeError(f"{cls.__name__} fields changed: expected {fields}")
