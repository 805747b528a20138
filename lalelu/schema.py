"""The checks of every TOML file lalelu reads (a host's configuration, a mapping) and of the flags that
override them, in one wording: each complaint names where (file, table, key), the value, and what is
allowed, so a musician fixes it from the one line."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lalelu.errors import ConfigError


def wrong(where: str, value: Any, why: str) -> ConfigError:
    return ConfigError(f"{where} = {value!r} {why}")


_UNSET: Any = object()


def number(
    where: str,
    value: Any,
    lo: float | None = None,
    hi: float | None = None,
    integer: bool = False,
    shown: Any = _UNSET,
) -> Any:
    """`value` if it is a finite number (an integer where `integer`) within [lo, hi]. `shown`: what the
    complaint quotes (a whole list, for one of its items)."""
    shown = value if shown is _UNSET else shown
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (integer and not isinstance(value, int))
    ):
        raise wrong(where, shown, f"has the wrong type: expected {'an integer' if integer else 'a number'}")
    if value != value:
        raise wrong(where, shown, "is not a number: give a finite value")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise wrong(where, shown, f"is out of range: allowed {lo} to {hi}")
    return value


def choice(where: str, value: Any, choices: Sequence[Any], shown: Any = _UNSET) -> Any:
    if value not in choices:
        shown = value if shown is _UNSET else shown
        raise wrong(where, shown, f"is not allowed: choose one of {', '.join(repr(c) for c in choices)}")
    return value
