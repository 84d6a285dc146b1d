"""Records that are stored in files: checkpoints, bundles and sample metadata.

One rule for every value that crosses a file, message or environment boundary: pydantic
validates it. Settings and MQTT documents are pydantic models; the records stored in
checkpoints, bundles and sample metadata are `@record` classes, frozen pydantic dataclasses
that check every field's type, refuse unknown keys and keep dataclass semantics (positional
construction, `dataclasses.replace`, `asdict`). Values that live only in memory are plain
dataclasses.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, TypeVar

from pydantic import ConfigDict, ValidationError
from pydantic.dataclasses import dataclass as _pydantic_dataclass

T = TypeVar("T", bound="Record")

# Lax type checking ("640" and numpy integers become ints; "x" and unknown literals are
# refused) and no unknown keys: a record written by a newer build fails loudly.
RECORD_CONFIG = ConfigDict(extra="forbid")


class Record:
    """The JSON round trip of a `@record` class."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[T], d: dict[str, Any]) -> T:
        """Validate a stored record; any problem (unknown or mistyped field) is a ValueError."""
        if not isinstance(d, dict):
            raise ValueError(f"{cls.__name__} must be a mapping, got {type(d).__name__}")
        try:
            return cls(**d)
        except ValidationError as e:
            raise ValueError(f"{cls.__name__}: {describe(e)}") from None


def describe(e: ValidationError) -> str:
    """A pydantic error in one line: 'field: problem; field: problem'."""
    return "; ".join(error_lines(e, root=""))


def error_lines(e: ValidationError, root: str = "(root)") -> list[str]:
    """'path.to.field: problem' for every error of a pydantic ValidationError (`root` names
    the whole object, for errors of no single field)."""
    out = []
    for err in e.errors():
        where = ".".join(str(p) for p in err.get("loc", ())) or root
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        if err["type"] == "unexpected_keyword_argument":
            out.append(f"unknown field {where!r}")
        else:
            out.append(f"{where}: {msg}" if where else msg)
    return out


def record(cls: type[T]) -> type[T]:
    """Make a `Record` subclass a frozen, validated pydantic dataclass."""
    if not issubclass(cls, Record):
        raise TypeError(f"@record needs a Record subclass, got {cls.__name__}")
    make: Callable[[type[T]], type[T]] = _pydantic_dataclass(frozen=True, config=RECORD_CONFIG)
    return make(cls)
