"""Make the bundled sample of real faces: a few per emotion from FER2013's training split, with quality fields.

    python -m tools.make_sample ../shared/fer2013/train --out fer_core/assets/fer2013_sample.parquet

The same command with the same data and seed gives the same sample.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from fer_core.config import SAMPLE_PATH
from fer_core.datasets import load_faces, save_table
from fer_core.labels import EMOTIONS
from fer_core.quality import add_quality


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("data", help="FER2013 training faces in any form fer_core.datasets reads")
    parser.add_argument("--out", default=str(SAMPLE_PATH), help="Parquet file to write")
    parser.add_argument("--per-class", type=int, default=50, help="faces per emotion")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the selection")
    return parser


def main(args: argparse.Namespace) -> int:
    table = load_faces(args.data)
    rng = np.random.default_rng(args.seed)
    chosen = []
    for label in range(len(EMOTIONS)):
        rows = np.flatnonzero(table.labels == label)
        chosen.extend(sorted(rng.choice(rows, size=min(args.per_class, len(rows)), replace=False)))
    sample = add_quality(table.select(np.array(chosen)))
    # Record where each face came from relative to the data set, not this machine's paths.
    root = Path(args.data).resolve()
    sources = [Path(s).relative_to(root.parent).as_posix() if Path(s).is_absolute() else s
               for s in sample.frame["source"]]
    sample.frame["source"] = sources
    out = save_table(sample, args.out)
    print(f"wrote {len(sample)} faces ({out.stat().st_size / 1e6:.2f} MB) to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
