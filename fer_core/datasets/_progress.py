"""A tqdm progress bar that stays quiet for small jobs."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")

#: Below this many items a load is quick enough that a bar is only noise.
MIN_ITEMS_FOR_BAR = 2000


def progress_bar(items: Iterable[T], *, total: int, desc: str, enable: bool = True) -> Iterator[T]:
    return iter(tqdm(items, total=total, desc=desc, unit="img", disable=not enable or total < MIN_ITEMS_FOR_BAR))
