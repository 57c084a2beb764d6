"""A WHERE clause built from optional conditions, its arguments numbered $1, $2, ... as they are added
(the placeholders both engines take), so a store with filters does not count placeholders by hand."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class Where:
    def __init__(self) -> None:
        self.conditions: list[str] = []
        self.args: list[Any] = []

    def arg(self, value: Any) -> str:
        """The placeholder for one more argument."""
        self.args.append(value)
        return f"${len(self.args)}"

    def marks(self, values: Iterable[Any]) -> str:
        """Placeholders for a list of arguments, comma-separated (for `IN (...)`)."""
        return ",".join(self.arg(v) for v in values)

    def add(self, condition: str, *values: Any) -> None:
        """A condition whose `{}`s stand for `values`' placeholders, in order."""
        self.conditions.append(condition.format(*(self.arg(v) for v in values)))

    def __str__(self) -> str:
        return " AND ".join(self.conditions) or "TRUE"
