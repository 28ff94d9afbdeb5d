"""`fastgpu bench` (not built yet)."""


def add_parser(sub):
    p = sub.add_parser("bench", help="(not built yet)")
    p.set_defaults(run=run)


def run(args) -> int:
    raise SystemExit("fastgpu bench is not built yet")
