"""`fastgpu demo` (not built yet)."""


def add_parser(sub):
    p = sub.add_parser("demo", help="(not built yet)")
    p.set_defaults(run=run)


def run(args) -> int:
    raise SystemExit("fastgpu demo is not built yet")
