"""Stand-ins shared by the transfer tests (no Ray)."""
from __future__ import annotations

MiB = 2**20


class Ref:
    """An ObjectRef stand-in: the transfer model only needs identity and ``hex()``."""

    def __init__(self, name):
        self.name = name

    def hex(self):
        return self.name


def is_ref(o) -> bool:
    return isinstance(o, Ref)
