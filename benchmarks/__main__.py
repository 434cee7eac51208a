"""Run the benchmarks; one JSON object per line on stdout, a readable table on stderr."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

# Each module exposes run() -> list[Result]; the name of a benchmark is its module's name.
MODULES = ["xrf_windows", "xrd_integrate", "reader", "live", "lims", "launch", "tomo", "hpc"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="NAME",
        help="run only this benchmark (repeatable); known: " + ", ".join(MODULES),
    )
    parser.add_argument("--json", action="store_true", help="JSON lines only, no table")
    args = parser.parse_args(argv)
    unknown = [n for n in args.only if n not in MODULES]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {MODULES}")
    results = []
    for name in args.only or MODULES:
        module = importlib.import_module(f"benchmarks.{name}")
        for result in module.run():
            results.append(result)
            print(json.dumps(result.as_dict()), flush=True)
    if not args.json:
        for r in results:
            print(
                f"{r.name:40s} {r.value:12.1f} {r.unit:10s} vs {r.baseline} "
                f"{r.baseline_value:.1f}: ratio {r.ratio:.3f}",
                file=sys.stderr,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
