"""Where objects are: a small interface, its Ray implementation and a fake for tests.

A locator answers, for a list of refs, each object's size and the nodes (Ray node id hex) holding a
copy. The transfer model only ever sees ``ObjectLocation`` values, so it runs without Ray.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Protocol, Sequence


@dataclass(frozen=True)
class ObjectLocation:
    """``size`` in bytes (``None``: not known yet, e.g. its task has not finished); ``nodes`` hold a copy."""

    size: int | None
    nodes: tuple[str, ...] = ()


UNKNOWN = ObjectLocation(None, ())


def ref_key(ref: Any) -> str:
    """The identity of a ref across processes: its hex id (``ObjectRef.hex()``)."""
    return ref.hex()


class ObjectLocator(Protocol):
    def locate(self, refs: Sequence[Any]) -> list[ObjectLocation]:
        """One ``ObjectLocation`` per ref, in order; ``UNKNOWN`` where the lookup says nothing."""


class RayObjectLocator:
    """``ray.experimental.get_object_locations``: asks each object's owner; needs a connected worker.

    A lookup that fails or times out (``timeout_ms``) leaves the object ``UNKNOWN``: placement then
    treats it as free to move rather than waiting, because a late answer is worth less than no answer.
    """

    def __init__(self, timeout_ms: int = 1000) -> None:
        self.timeout_ms = timeout_ms

    def locate(self, refs: Sequence[Any]) -> list[ObjectLocation]:
        if not refs:
            return []
        import ray  # the only Ray import of the cost model's side

        try:
            found = ray.experimental.get_object_locations(list(refs), self.timeout_ms)
        except ray.exceptions.GetTimeoutError:
            found = {}
        out = []
        for r in refs:
            info = found.get(r)
            if not info:
                out.append(UNKNOWN)
                continue
            size = info.get("object_size")
            out.append(ObjectLocation(None if size is None else int(size), tuple(info.get("node_ids") or ())))
        return out


class FakeLocator:
    """A locator over a fixed table ``{ref key: ObjectLocation}``; unknown refs are ``UNKNOWN``.

    ``calls`` counts lookups so tests can check that one placement asks once, not once per node.
    """

    def __init__(self, table: Mapping[str, ObjectLocation] | None = None) -> None:
        self.table: dict[str, ObjectLocation] = dict(table or {})
        self.calls = 0

    def put(self, key: str, size: int | None, nodes: Iterable[str]) -> None:
        self.table[key] = ObjectLocation(size, tuple(nodes))

    def locate(self, refs: Sequence[Any]) -> list[ObjectLocation]:
        self.calls += 1
        return [self.table.get(ref_key(r), UNKNOWN) for r in refs]
