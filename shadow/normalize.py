"""Named normalisers: value rewrites applied to both sides of a comparison at chosen paths.

Each normaliser is a total function: a value it does not understand is returned unchanged,
and it never raises.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any

import orjson

__all__ = ["NORMALIZERS", "Normalizer", "get_normalizer"]

Normalizer = Callable[[Any], Any]


def timestamp_seconds(value: Any) -> Any:
    """ISO 8601 date-times truncated to whole seconds, aware ones in UTC (`Z` == `+00:00`)."""
    if type(value) is str:
        text = value.strip()
        if len(text) <= 10:  # a date (2024-05-01, 20240501, 2024-W18-3): not a date-time
            return value
        if text[-1:] in ("Z", "z"):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return value
        if parsed.tzinfo is not None:
            try:
                parsed = parsed.astimezone(UTC)
            except (OverflowError, ValueError):
                return value
        return parsed.replace(microsecond=0).isoformat()
    if type(value) is float and math.isfinite(value):
        return math.floor(value)
    return value


_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+\-]?[0-9]+)?")


def decimal(value: Any) -> Any:
    """Decimal strings (written as JSON numbers) and numbers as one exact `Decimal`
    (`"12.50"` == `12.5`)."""
    try:
        if type(value) is str:
            if not _JSON_NUMBER.fullmatch(value):  # Decimal also reads "1_000", " 1", "+1"
                return value
            result = Decimal(value)
        elif type(value) is float:
            result = Decimal(repr(value))
        elif type(value) is int:
            result = Decimal(value)
        else:
            return value
    except (InvalidOperation, ValueError):
        return value
    return result if result.is_finite() else value


def lowercase(value: Any) -> Any:
    """Strings in lower case."""
    return value.lower() if type(value) is str else value


def trim(value: Any) -> Any:
    """Strings without leading and trailing white space."""
    return value.strip() if type(value) is str else value


_RANKS: dict[type, int] = {type(None): 0, bool: 1, int: 2, float: 2, Decimal: 2, str: 3}


def _sort_key(item: Any) -> tuple[int, Any]:
    rank = _RANKS.get(type(item))
    if rank is None:
        try:
            return (4, orjson.dumps(item, option=orjson.OPT_SORT_KEYS))
        except (TypeError, ValueError):
            return (5, b"")
    if rank == 2 and item != item:  # NaN sorts last among numbers, keeping the order total
        return (2, math.inf)
    return (rank, item)


def sorted_values(value: Any) -> Any:
    """Arrays in a canonical order (scalars by type then value, containers by their JSON)."""
    if type(value) is not list:
        return value
    try:
        return sorted(value, key=_sort_key)
    except (TypeError, ValueError):
        return value


NORMALIZERS: Mapping[str, Normalizer] = MappingProxyType(
    {
        "timestamp_seconds": timestamp_seconds,
        "decimal": decimal,
        "lowercase": lowercase,
        "trim": trim,
        "sorted": sorted_values,
    }
)


def get_normalizer(name: str) -> Normalizer:
    """The normaliser called `name`; `ValueError` naming the known ones otherwise."""
    try:
        return NORMALIZERS[name]
    except KeyError:
        known = ", ".join(sorted(NORMALIZERS))
        raise ValueError(f"unknown normalizer {name!r} (known: {known})") from None
