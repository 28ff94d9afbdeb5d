"""``fastgpu bench NAME [ARGS...]``: run one of the benchmark scripts under ``benchmarks/`` of a checkout.

Each benchmark runs fastgpu and its baseline side by side in one run and prints ratios; see
docs/BENCHMARKS.md for recorded results.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


def available() -> list[str]:
    return sorted(p.stem for p in BENCH_DIR.glob("*.py")) if BENCH_DIR.is_dir() else []


def add_parser(sub):
    p = sub.add_parser("bench", help="run a benchmark script (fastgpu vs its baseline, side by side)")
    p.add_argument("name", nargs="?", help="benchmark name (omit to list them)")
    p.add_argument("args", nargs="*", help="arguments passed to the benchmark (after --)")
    p.set_defaults(run=run)


def run(args) -> int:
    names = available()
    if not names:
        print(f"fastgpu bench: no benchmarks found at {BENCH_DIR}; run it from a fastgpu-ray checkout",
              file=sys.stderr)
        return 2
    if not args.name:
        print("benchmarks: " + ", ".join(names))
        return 0
    if args.name not in names:
        print(f"fastgpu bench: unknown benchmark {args.name!r}; available: {', '.join(names)}", file=sys.stderr)
        return 2
    return subprocess.call([sys.executable, str(BENCH_DIR / f"{args.name}.py"), *args.args])
