"""`fastgpu status` (not built yet)."""


def add_parser(sub):
    p = sub.add_parser("status", help="(not built yet)")
    p.set_defaults(run=run)


def run(args) -> int:
    raise SystemExit("fastgpu status is not built yet")
