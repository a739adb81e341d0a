"""How fast an annotator answers: ``python -m annotate.pace --db DB``.

    python -m annotate.pace --db fer_annotations.db --dataset fer2013

The pace is the median of the seconds between one answer and the next, over an
annotator's most recent answers (skips included: each took a look). A gap longer than
:data:`PAUSE_SECONDS` is a pause, not an answer, and is left out; so is a gap of zero (answers
recorded in one batch, such as imported votes, say nothing about anyone's pace). The Relabel
tab shows the annotator their own pace; this command prints everyone's, which is what the cost
of a correction (``docs/annotation.md``) is measured with.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from fer_core._cli import cli_main

from .errors import AnnotateError
from .export import add_db_argument, open_existing_store

__all__ = ["PAUSE_SECONDS", "RECENT_ANSWERS", "Pace", "pace_from_times", "annotator_pace", "get_args_parser", "main"]

#: A gap between two answers longer than this (seconds) is a pause and is not counted.
PAUSE_SECONDS = 60.0
#: The pace is measured over this many of the annotator's latest answers.
RECENT_ANSWERS = 200


@dataclass(frozen=True)
class Pace:
    """Seconds an answer takes: the median and the 90th percentile over ``answers`` timed gaps."""

    answers: int
    median_seconds: float
    p90_seconds: float

    @property
    def per_hour(self) -> float:
        """Answers an hour at the median pace, pauses not counted."""
        return 3600.0 / self.median_seconds if self.median_seconds > 0 else math.inf

    def describe(self) -> str:
        """One line: ``2.9 s a face (90% within 5.1 s; 1,241 an hour; 199 answers timed)``."""
        return (f"{self.median_seconds:.1f} s a face (90% within {self.p90_seconds:.1f} s; "
                f"{self.per_hour:,.0f} an hour; {self.answers:,} answers timed)")


def pace_from_times(times: Sequence[datetime], *, pause_seconds: float = PAUSE_SECONDS) -> Pace | None:
    """The pace of answers given at ``times`` (any order), or None when no gap can be timed.

    Each gap between consecutive answers times the later one; gaps of zero (a batch) and
    gaps over ``pause_seconds`` (a pause) are left out.
    """
    if not pause_seconds > 0:
        raise AnnotateError(f"pause_seconds must be positive, got {pause_seconds!r}")
    if len(times) < 2:
        return None
    stamps = np.sort(np.array([t.timestamp() for t in times], dtype=np.float64))
    gaps = np.diff(stamps)
    gaps = gaps[(gaps > 0) & (gaps <= pause_seconds)]
    if not len(gaps):
        return None
    return Pace(int(len(gaps)), float(np.median(gaps)), float(np.percentile(gaps, 90)))


def annotator_pace(store, annotator: str, *, dataset: str | None = None, last: int = RECENT_ANSWERS,
                   pause_seconds: float = PAUSE_SECONDS) -> Pace | None:
    """``annotator``'s pace over their ``last`` answers in ``store`` (one data set's, or all), or None."""
    return pace_from_times(store.answer_times(annotator, dataset=dataset, last=last), pause_seconds=pause_seconds)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m annotate.pace", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_db_argument(parser)
    parser.add_argument("--dataset", default=None, help="answers on one data set's faces only; None: every data set")
    parser.add_argument("--annotator", action="append", default=None, metavar="NAME",
                        help="this annotator only (repeatable); None: everyone in the store")
    parser.add_argument("--last", type=int, default=RECENT_ANSWERS, help="each annotator's latest answers timed")
    parser.add_argument("--pause", type=float, default=PAUSE_SECONDS,
                        help="seconds: a longer gap between two answers is a pause, not counted")
    return parser


@cli_main
def main(args: argparse.Namespace) -> int:
    from .engine import default_db_url

    if args.last < 2:
        raise AnnotateError(f"--last must be at least 2 (one gap needs two answers), got {args.last}")
    if not args.pause > 0:
        raise AnnotateError(f"--pause must be positive, got {args.pause}")
    store = open_existing_store(args.db or default_db_url())
    try:
        names = args.annotator or store.annotators()
        known = set(store.annotators())
        unknown = [name for name in names if name not in known]
        if unknown:
            raise AnnotateError(f"no annotator named {', '.join(map(repr, unknown))} in the store")
        rows = [(name, annotator_pace(store, name, dataset=args.dataset, last=args.last, pause_seconds=args.pause))
                for name in names]
    finally:
        store.close()
    timed = [(name, pace) for name, pace in rows if pace is not None]
    for name, pace in timed:
        print(f"{name}: {pace.describe()}")
    if len(timed) < len(rows):
        print(f"{len(rows) - len(timed)} annotator(s) without timed answers (fewer than two, all in one batch, "
              f"or only pauses over {args.pause:g} s)")
    if len(timed) > 1:
        medians = [pace.median_seconds for _, pace in timed]
        print(f"all {len(timed)} timed annotators: median of their medians {np.median(medians):.1f} s a face")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
