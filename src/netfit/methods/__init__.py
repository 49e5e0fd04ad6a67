"""Search methods. Each module registers itself in ``METHODS``; see ``base.Method`` for the interface."""

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
    """Instantiate a registered method with its options; unknown options give a clear error."""
    import dataclasses

    from ..errors import NetfitError

    cls = METHODS.get(name)
    options = options or {}
    known = {f.name for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else set()
    unknown = sorted(set(options) - known)
    if unknown:
        raise NetfitError(
            f"unknown option(s) {', '.join(unknown)} for method {name!r}; its options are: "
            f"{', '.join(sorted(known)) or 'none'}"
        )
    return cls(**options)
