"""Versioned PostgreSQL migrations of the comparison store: `NNNN_name.sql`, applied in order."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

__all__ = ["Migration", "migrations"]


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema step: its version number, name and SQL statements."""

    version: int
    name: str
    statements: tuple[str, ...]


def _statements(sql: str) -> tuple[str, ...]:
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    return tuple(s.strip() for s in "\n".join(lines).split(";") if s.strip())


def migrations() -> tuple[Migration, ...]:
    """Every migration shipped with the package, by ascending version."""
    found: list[Migration] = []
    for entry in resources.files(__name__).iterdir():
        name = entry.name
        if not name.endswith(".sql") or not name[:4].isdigit():
            continue
        found.append(
            Migration(int(name[:4]), name[5:-4], _statements(entry.read_text(encoding="utf-8")))
        )
    found.sort(key=lambda m: m.version)
    return tuple(found)
