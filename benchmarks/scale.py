"""Scale benchmark: load, quality, duplicates and Browse on 32k, 100k and 1M faces, time and peak memory.

    python -m tools.make_large ../shared/fer2013 --faces 100000 --out /work/runs/million/p100000 --form parquet
    python -m benchmarks.scale --sizes 32000 100000 1000000 --data-dir /work/runs/million

For each size ``N`` the data set is ``<data-dir>/<form-letter><N>`` (``p100000`` for Parquet,
``f100000`` for a folder tree), made with :mod:`tools.make_large` when missing (``--make``).
Each size runs in two fresh processes, with its own cache folder (``<data-dir>/cache-<name>``,
emptied first), so that nothing is shared between sizes and the start is cold:

1. ``load (cold)``: :func:`~fer_core.datasets.load_faces` decoding every image and writing the
   cache; ``load (warm)``: the same from the cache (memory-mapped above 116,000 faces);
   ``score``: :func:`~fer_core.quality.add_quality`; ``duplicates``:
   :func:`~fer_core.duplicates.find_duplicates` (its pairs cached); ``browse start (cold)``:
   :func:`~fer_core.browse.enrich` without the model (quality again, pairs from the cache) and
   the tab's :class:`~ui.browse_tab.Browser` showing its first page.
2. ``browse start (warm)``: a new process loading the data set and its derived columns from the
   cache, as the app's second start does, to the first page; ``filter change``: 20 fixed
   filter changes (split, emotions, quality ranges, duplicates, order), each the selection, the
   plots' data and the first page; median and maximum.

Time is wall-clock; memory is the process's resident set (VmRSS, pages of memory-mapped files
included) sampled every 10 ms, the peak during each step, and the process's ``ru_maxrss``.
Each step's growth is its time's exponent between consecutive sizes, ``log(t2/t1) / log(n2/n1)``:
1 is linear. The model's opinion (a CNN over every face) is left out: see docs/scale.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

STEPS = ("load (cold)", "load (warm)", "score", "duplicates", "browse start (cold)", "browse start (warm)",
         "filter change (median)", "filter change (max)")


class PeakMemory:
    """Samples the process's VmRSS every ``interval`` seconds in a thread; :meth:`step` gives a step's peak."""

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def rss() -> int:
        """The resident set now, in bytes."""
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.rss())

    @contextmanager
    def step(self, results: dict[str, Any], name: str) -> Iterator[None]:
        """Time the block and record its peak resident memory under ``name``."""
        self.peak = self.rss()
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        results[name] = {"seconds": seconds, "peak_rss_mb": max(self.peak, self.rss()) / 2**20}
        print(f"    {name}: {seconds:.2f} s, peak RSS {results[name]['peak_rss_mb']:.0f} MB", flush=True)


def _queries(splits: list[str], n: int = 20) -> list[Any]:
    """``n`` fixed filter changes (those of ``benchmarks.browse`` without the model's filters and orders)."""
    from benchmarks.browse import fixed_changes
    from fer_core.browse import BrowseQuery

    queries = [q for kind, q in fixed_changes(3 * n, splits) if kind == "filter"]
    plain = [replace(q, agreement="any", sort=q.sort if "model" not in q.sort else "quality, highest first")
             for q in queries if isinstance(q, BrowseQuery)]
    return plain[:n]


def _first_page(browser: Any) -> None:
    from fer_core.browse import BrowseQuery

    rows = browser.select(BrowseQuery())
    browser.plots(rows)
    browser.page(rows, 1, 48)


def run_first(data: Path, results: dict[str, Any], memory: PeakMemory) -> None:
    """Part 1 of a size: cold and warm load, score, duplicates, cold browse start (see the module docstring)."""
    from fer_core.browse import enrich
    from fer_core.datasets import load_faces
    from fer_core.duplicates import find_duplicates
    from fer_core.quality import add_quality
    from ui.browse_tab import Browser

    with memory.step(results, "load (cold)"):
        table = load_faces(data, progress=False)
    del table
    with memory.step(results, "load (warm)"):
        table = load_faces(data, progress=False)
    results["faces"] = len(table)
    results["memory_mapped"] = hasattr(table.images, "_mmap")
    with memory.step(results, "score"):
        add_quality(table)
    with memory.step(results, "duplicates"):
        report = find_duplicates(table)
    results["duplicate_summary"] = {k: v for k, v in report.summary().items() if not isinstance(v, dict)}
    del report
    with memory.step(results, "browse start (cold)"):
        browser = Browser(enrich(table, model=False))
        _first_page(browser)


def run_second(data: Path, results: dict[str, Any], memory: PeakMemory) -> None:
    """Part 2 of a size: warm browse start in a new process, then fixed filter changes."""
    from fer_core.browse import enrich
    from fer_core.datasets import load_faces
    from ui.browse_tab import Browser

    with memory.step(results, "browse start (warm)"):
        browser = Browser(enrich(load_faces(data, progress=False), model=False))
        _first_page(browser)
    times = []
    memory.peak = memory.rss()
    for query in _queries(browser.splits):
        start = time.perf_counter()
        rows = browser.select(query)
        browser.plots(rows)
        browser.page(rows, 1, 48)
        times.append(time.perf_counter() - start)
    peak = memory.peak / 2**20
    results["filter change (median)"] = {"seconds": statistics.median(times), "peak_rss_mb": peak}
    results["filter change (max)"] = {"seconds": max(times), "peak_rss_mb": peak}
    print(f"    filter change: median {statistics.median(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms "
          f"over {len(times)} changes, peak RSS {peak:.0f} MB", flush=True)


def _child(args: argparse.Namespace) -> int:
    """One part of one size in this process; the results go to ``args.out`` as JSON."""
    memory = PeakMemory()
    results: dict[str, Any] = {}
    part: Callable[[Path, dict[str, Any], PeakMemory], None] = run_first if args.part == 1 else run_second
    part(Path(args.data), results, memory)
    results["ru_maxrss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


def _data_path(args: argparse.Namespace, size: int) -> Path:
    path = Path(args.data_dir) / f"{args.form[0]}{size}"
    if not path.exists():
        if not args.make:
            raise SystemExit(f"error: {path} does not exist; make it with tools.make_large or pass --make")
        subprocess.run([sys.executable, "-m", "tools.make_large", args.source, "--faces", str(size), "--out",
                        str(path), "--form", args.form], check=True)
    return path


def run_size(args: argparse.Namespace, size: int) -> dict[str, Any]:
    """Both parts of one size, each in a fresh process with the size's own, emptied cache folder."""
    data = _data_path(args, size)
    cache = Path(args.data_dir) / f"cache-{data.name}"
    shutil.rmtree(cache, ignore_errors=True)
    env = {**os.environ, "FER_CACHE_DIR": str(cache), "HF_DATASETS_CACHE": str(cache / "hf")}
    results: dict[str, Any] = {"size": size}
    for part in (1, 2):
        out = cache / f"part{part}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        print(f"  {data.name} part {part}", flush=True)
        subprocess.run([sys.executable, "-m", "benchmarks.scale", "--child", "--part", str(part), "--data",
                        str(data), "--out", str(out)], env=env, check=True)
        part_results = json.loads(out.read_text())
        part_results[f"ru_maxrss_mb (part {part})"] = part_results.pop("ru_maxrss_mb")
        results.update(part_results)
    return results


def format_table(runs: list[dict[str, Any]]) -> str:
    """Seconds and peak RSS per step and size, and each step's growth exponent between sizes."""
    header = f"{'step':24s}" + "".join(f"{r['faces']:>22,}" for r in runs)
    growth = [f"growth {a['faces'] // 1000}k->{b['faces'] // 1000}k" for a, b in zip(runs, runs[1:])]
    lines = [header + "".join(f"{g:>22s}" for g in growth)]
    for step in STEPS:
        cells = "".join(f"{r[step]['seconds']:>9.2f} s {r[step]['peak_rss_mb']:>7.0f} MB" for r in runs)
        exps = []
        for a, b in zip(runs, runs[1:]):
            ta, tb = max(a[step]["seconds"], 1e-3), max(b[step]["seconds"], 1e-3)
            exps.append(f"{math.log(tb / ta) / math.log(b['faces'] / a['faces']):>22.2f}")
        lines.append(f"{step:24s}{cells}{''.join(exps)}")
    lines.append(f"{'process peak (ru_maxrss)':24s}" + "".join(
        f"{max(r['ru_maxrss_mb (part 1)'], r['ru_maxrss_mb (part 2)']):>19.0f} MB" for r in runs))
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[32000, 100000], help="data set sizes")
    parser.add_argument("--data-dir", default="/work/runs/million", help="where the data sets and caches live")
    parser.add_argument("--form", choices=("parquet", "folder"), default="parquet", help="data form to read")
    parser.add_argument("--source", default="../shared/fer2013", help="real faces for --make")
    parser.add_argument("--make", action="store_true", help="make missing data sets with tools.make_large")
    parser.add_argument("--json", default=None, help="also write every figure to this JSON file")
    child = parser.add_argument_group("internal (one part of one size)")
    child.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    child.add_argument("--part", type=int, default=1, help=argparse.SUPPRESS)
    child.add_argument("--data", default=None, help=argparse.SUPPRESS)
    child.add_argument("--out", default=None, help=argparse.SUPPRESS)
    return parser


def main(args: argparse.Namespace) -> int:
    if args.child:
        return _child(args)
    runs = []
    for size in sorted(args.sizes):
        print(f"size {size:,}", flush=True)
        runs.append(run_size(args, size))
        print(format_table(runs), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
