"""Run every benchmark module in this folder and write their results to one JSON file.

A benchmark module is ``benchmarks/bench_*.py`` with a ``run() -> dict`` function. Results are
ratios measured within one run, so they compare like with like on whatever machine runs them.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results.json"))
    parser.add_argument(
        "--only", default=None, help="substring of the benchmark module names to run"
    )
    args = parser.parse_args()
    results = {"machine": {"platform": platform.platform(), "python": platform.python_version()}}
    for path in sorted(Path(__file__).parent.glob("bench_*.py")):
        if args.only and args.only not in path.stem:
            continue
        print(f"== {path.stem}", flush=True)
        started = time.perf_counter()
        results[path.stem] = importlib.import_module(f"benchmarks.{path.stem}").run()
        results[path.stem]["wall_s"] = round(time.perf_counter() - started, 2)
        print(json.dumps(results[path.stem], indent=2), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
