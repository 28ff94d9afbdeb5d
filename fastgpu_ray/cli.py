"""``fastgpu``: the command line. Each subcommand lives in ``fastgpu_ray/commands/<name>.py`` and defines
``add_parser(subparsers)`` and ``run(args) -> int``; this file only dispatches (no Ray import here, so
``fastgpu simulate`` starts fast and works where Ray is not installed)."""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = ("demo", "status", "simulate", "bench")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fastgpu", description="GPU placement for Ray")
    sub = p.add_subparsers(dest="command", metavar="{" + ",".join(COMMANDS) + "}")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"fastgpu_ray.commands.{name}").add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
