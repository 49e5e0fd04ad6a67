"""Search methods. Each module registers itself in ``METHODS``; see ``base.Method`` for the interface."""

import dataclasses
import types
import typing

from ..errors import NetfitError
from . import blockwise as _blockwise  # noqa: F401  (registers "blockwise")
from . import dna as _dna  # noqa: F401  (registers "dna")
from . import dnad as _dnad  # noqa: F401  (registers "dnad", "snps")
from . import odn as _odn  # noqa: F401  (registers "odn")
from . import random_search as _random_search  # noqa: F401  (registers "random")
from . import spider as _spider  # noqa: F401  (registers "spider")
from . import uniform as _uniform  # noqa: F401  (registers "uniform")
from .base import METHODS, Candidate, Method, Seed, Target

__all__ = ["METHODS", "Candidate", "Method", "Seed", "Target", "create_method"]


def create_method(name: str, options: dict | None = None):
    """Instantiate a registered method with its options; unknown options and values of the wrong type give a
    clear error."""
    cls = METHODS.get(name)
    options = options or {}
    known = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    unknown = sorted(set(options) - known)
    if unknown:
        raise NetfitError(
            f"unknown option(s) {', '.join(unknown)} for method {name!r}; its options are: "
            f"{', '.join(sorted(known)) or 'none'}"
        )
    hints = typing.get_type_hints(cls)
    for key, value in options.items():
        if key in hints and not _matches(value, hints[key]):
            raise NetfitError(
                f"method option {key}={value!r} of {name!r} must be {_type_name(hints[key])} "
                "(values are JSON: numbers, true/false, null, [lists], or else a string)"
            )
    return cls(**options)


def _matches(value, hint) -> bool:
    """Whether an option's value fits its declared type (ints count as floats; bools are not numbers)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arm) for arm in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (bool, str):
        return isinstance(value, hint)
    if origin in (list, tuple) or hint in (list, tuple):
        items = [a for a in args if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and all(_matches(v, items[0]) for v in value if items)
    return True


def _type_name(hint) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
