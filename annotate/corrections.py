"""Write the store's corrections (or FER+-style vote counts) to a file: ``python -m annotate.corrections --out FILE``.

    python -m annotate.corrections --db fer_annotations.db --out corrections.csv
    python -m fer_core.train ../shared/fer2013/train --val ../shared/fer2013/val --out runs/corrected \\
        --corrections corrections.csv

The corrections file (one row per face with votes: ``dataset``, ``sample_id``,
``content_sha256``, original and resolved label, the vote counts; see
:data:`annotate.export.CORRECTION_COLUMNS`) is how corrections reach training: ``fer_core``
reads the file and never imports :mod:`annotate`. The Relabel tab's *Corrections* export is
the same file. ``--table ferplus`` writes the FER+-style vote counts instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fer_core._cli import cli_main

from .errors import AnnotateError
from .export import add_db_argument, corrections, ferplus_votes, open_existing_store, table_format, write_table

__all__ = ["get_args_parser", "main"]


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m annotate.corrections", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_db_argument(parser)
    parser.add_argument("--out", required=True, help="the file to write: .csv or .parquet")
    parser.add_argument("--dataset", default=None, help="one data set's faces only; None: every data set")
    parser.add_argument("--table", choices=["corrections", "ferplus"], default="corrections",
                        help="corrections: one row per face with votes and its resolved label (what "
                             "`python -m fer_core.train --corrections` reads); ferplus: vote counts per label")
    parser.add_argument("--only-changed", action="store_true", help="corrections: only the relabelled faces")
    parser.add_argument("--format", choices=["csv", "parquet"], default=None, help="None: from --out's suffix")
    return parser


@cli_main
def main(args: argparse.Namespace) -> int:
    from .engine import default_db_url

    if args.only_changed and args.table != "corrections":
        raise AnnotateError("--only-changed applies to the corrections table only")
    table_format(Path(args.out), args.format)  # refused before the store is opened
    store = open_existing_store(args.db or default_db_url())
    try:
        table = (corrections(store, args.dataset, only_changed=args.only_changed) if args.table == "corrections"
                 else ferplus_votes(store, args.dataset))
        known = sorted(set(store.resolved_labels()["dataset"])) if args.dataset is not None and not len(table) else []
    finally:
        store.close()
    if known:
        print(f"warning: the store holds no votes for data set {args.dataset!r} "
              f"(it has votes for: {', '.join(map(repr, known))})", file=sys.stderr)
    path = write_table(table, args.out, args.format)
    print(f"wrote {path} ({len(table)} faces with votes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
