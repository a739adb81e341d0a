"""Browse-tab benchmark: start-up on a data set, then 50 fixed filter and page changes, timed.

    python -m benchmarks.browse ../shared/fer2013 [--changes 50]

Loads and enriches the data set as ``python app.py --data`` does (reporting the time, from
the cache when it is warm), builds the app, then replays a fixed list of filter and page
changes through the tab's own handlers and Gradio's gallery encoding (what one event costs
the server), and prints the median and p95 time per change and the process's resident memory.
"""

import argparse
import resource
import statistics
import sys
import time

import numpy as np

from fer_core._cli import cli_main
from fer_core.browse import SORTS, BrowseQuery
from fer_core.labels import EMOTIONS


def fixed_changes(n: int, splits: list[str]) -> list[tuple[str, BrowseQuery | int]]:
    """``n`` filter changes and page turns, the same list every run (seeded)."""
    rng = np.random.default_rng(0)
    changes: list[tuple[str, BrowseQuery | int]] = []
    while len(changes) < n:
        kind = rng.choice(["filter", "filter", "page"])
        if kind == "page":
            changes.append(("page", int(rng.integers(1, 40))))
            continue
        lo = float(rng.choice([0.0, 0.2, 0.4]))
        changes.append(("filter", BrowseQuery(
            split=None if rng.random() < 0.4 else str(rng.choice(splits)),
            emotions=tuple(rng.choice(EMOTIONS, size=int(rng.integers(0, 3)), replace=False)),
            quality=(lo, float(rng.choice([0.6, 0.8, 1.0]))),
            components={"focus_score": (0.0, 0.5)} if rng.random() < 0.2 else {},
            agreement=str(rng.choice(["any", "any", "agrees", "disagrees"])),
            duplicates=str(rng.choice(["any", "any", "any", "duplicated", "cross-split"])),
            sort=str(rng.choice(SORTS)),
            seed=int(rng.integers(0, 100)),
        )))
    return changes


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="data set to browse (any form fer_core.datasets reads)")
    parser.add_argument("--changes", type=int, default=50)
    parser.add_argument("--page-size", type=int, default=48)
    args = parser.parse_args(argv)
    import gradio as gr

    import app
    from ui.browse_tab import Browser

    started = time.perf_counter()
    table = app.load_data(args.data)
    loaded = time.perf_counter() - started
    app.build_demo(table)
    built = time.perf_counter() - started
    browser = Browser(table)
    gallery = gr.Gallery()
    rows = browser.select(BrowseQuery())
    times = []
    for kind, change in fixed_changes(args.changes, browser.splits):
        t0 = time.perf_counter()
        if kind == "filter":
            rows = browser.select(change)
            browser.plots(rows)
            view = browser.page(rows, 1, args.page_size)
        else:
            view = browser.page(rows, change, args.page_size)
        gallery.postprocess(view.faces)  # the PNG encoding Gradio does before answering
        times.append((time.perf_counter() - t0) * 1000)
    print(f"data set {table.name}: {len(table):,} faces; loaded and enriched in {loaded:.1f} s, "
          f"app built after {built:.1f} s")
    print(f"{len(times)} filter/page changes: median {statistics.median(times):.0f} ms, "
          f"p95 {np.percentile(times, 95):.0f} ms, max {max(times):.0f} ms")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"resident memory {_rss_mb():.0f} MB (peak {peak:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
