"""The commands' one way of ending on a user error: ``error: <message>`` on stderr and exit code 2."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import ParamSpec

from fer_core._validation import FERError

__all__ = ["USER_ERROR", "cli_main", "run_cli"]

#: The exit code of a command stopped by a user error (a missing file, a bad flag value ...).
USER_ERROR = 2

P = ParamSpec("P")


def run_cli(main_fn: Callable[P, int], *args: P.args, **kwargs: P.kwargs) -> int:
    """``main_fn(*args, **kwargs)``; a :class:`~fer_core._validation.FERError` (``AnnotateError``,
    ``DatasetError``, ``WeightsError`` ... are subclasses) is printed as ``error: <message>`` on
    stderr and gives :data:`USER_ERROR`. Other exceptions (bugs) propagate with their traceback."""
    try:
        return main_fn(*args, **kwargs)
    except FERError as err:
        print(f"error: {err}", file=sys.stderr)
        return USER_ERROR


def cli_main(main_fn: Callable[P, int]) -> Callable[P, int]:
    """Decorate a command's ``main`` so that it ends on user errors as :func:`run_cli` says."""

    @functools.wraps(main_fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> int:
        return run_cli(main_fn, *args, **kwargs)

    return wrapper
