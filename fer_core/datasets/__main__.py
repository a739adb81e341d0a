"""``python -m fer_core.datasets PATH``: read a data set and print what it holds."""

from __future__ import annotations

import argparse
import sys

from fer_core._cli import cli_main


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fer_core.datasets",
        description="Read a FER data set (class folders, fer2013.csv, Parquet or hub id) "
                    "and print its faces per emotion and split.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("data", help="folder, .csv, .jsonl, .parquet file, or hub id user/name")
    parser.add_argument("--no-cache", action="store_true", help="read the files even if a cached copy exists")
    parser.add_argument("--cache-dir", default=None, help="cache folder (default: $FER_CACHE_DIR or ~/.cache/fer_tool)")
    return parser


@cli_main
def main(args: argparse.Namespace) -> int:
    import time

    from fer_core.datasets import load_faces, summary

    start = time.perf_counter()
    table = load_faces(args.data, cache_dir=args.cache_dir, use_cache=not args.no_cache)
    print(f"{table.name}: {len(table)} faces, read in {time.perf_counter() - start:.2f} s")
    print(summary(table).to_string())
    if table.skipped:
        print("skipped: " + ", ".join(f"{k}={v}" for k, v in table.skipped.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
