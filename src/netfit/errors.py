"""Errors raised for user mistakes.

Every user-facing problem (unknown name, bad budget, bad data path, corrupt checkpoint...) raises a
``NetfitError`` subclass whose message says what went wrong and what to do. The CLI prints that one line
and exits with code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class NetfitError(Exception):
    """Base class of every error caused by user input or environment, not by a bug."""


class UnknownNameError(NetfitError, KeyError):
    """A registry lookup failed (model, method, data set...)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class BudgetError(NetfitError, ValueError):
    """A budget string is malformed or names an unknown unit."""


class BudgetInfeasibleError(NetfitError):
    """No network of the search space meets the budget."""


class DataError(NetfitError):
    """A data set is missing, malformed or inconsistent."""


class UnsupportedLayerError(NetfitError):
    """A model contains a layer or operation netfit cannot handle."""


class CheckpointError(NetfitError):
    """A checkpoint, weights file or arch spec is missing, corrupt or does not match."""


class TrainingError(NetfitError):
    """Training diverged (NaN/inf loss) or cannot proceed."""


class MissingExtraError(NetfitError, ImportError):
    """An optional dependency is not installed."""


def require(module: str, extra: str):
    """Import an optional dependency or raise ``MissingExtraError`` naming the extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingExtraError(f"{module} is not installed; run: pip install 'netfit[{extra}]'") from e
