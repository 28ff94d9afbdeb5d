"""What a subtask's arguments hold: the ObjectRefs in them (at any depth) and large by-value values.

No Ray import: the caller says what an ObjectRef is (``is_ref``), so tests use plain stand-ins.

Ray's rules this follows: a by-value top-level argument larger than ``INLINE_THRESHOLD`` is put in the
object store of the caller's node; smaller ones travel inline with the task and cost nothing to move.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Iterator, Mapping, Sequence

# Ray's max_direct_call_object_size (RAY_max_direct_call_object_size), 100 KiB by default: objects at
# or under it are inlined in the task spec / owner's memory store, never pulled between object stores.
INLINE_THRESHOLD = 100 * 1024

IsRef = Callable[[Any], bool]
_CONTAINERS = (list, tuple, set, frozenset)


def iter_refs(obj: Any, is_ref: IsRef) -> Iterator[Any]:
    """Every ref in ``obj``, walking lists, tuples, sets and dict keys/values (each container once)."""
    seen: set[int] = set()
    stack = [obj]
    while stack:
        o = stack.pop()
        if is_ref(o):
            yield o
            continue
        if isinstance(o, (_CONTAINERS, dict)):
            if id(o) in seen:  # shared or cyclic containers are walked once
                continue
            seen.add(id(o))
            items = [x for kv in o.items() for x in kv] if isinstance(o, dict) else list(o)
            stack.extend(reversed(items))


def find_refs(args: Sequence[Any], kwargs: Mapping[str, Any], is_ref: IsRef,
              key: Callable[[Any], Any] = id) -> list[Any]:
    """The distinct refs in ``args``/``kwargs`` in order of first appearance (``key`` says "same ref")."""
    out, keys = [], set()
    for r in iter_refs([list(args), dict(kwargs)], is_ref):
        k = key(r)
        if k not in keys:
            keys.add(k)
            out.append(r)
    return out


def value_size(obj: Any, is_ref: IsRef = lambda _: False) -> int:
    """Approximate serialized bytes of a by-value argument, without serializing it.

    Buffers (bytes, numpy arrays, torch tensors: anything with ``nbytes``) count their data; containers
    the sum of their items; refs inside count nothing (they travel separately); other objects
    ``sys.getsizeof``. Good enough to tell 10 KiB from 10 MiB, which is all the inline test needs.
    """
    total, seen, stack = 0, set(), [obj]
    while stack:
        o = stack.pop()
        if is_ref(o):
            continue
        if isinstance(o, (bytes, bytearray, str)):
            total += len(o)
        elif isinstance(o, memoryview):
            total += o.nbytes
        elif isinstance(o, (_CONTAINERS, dict)):
            if id(o) in seen:
                continue
            seen.add(id(o))
            stack.extend(list(o.keys()) + list(o.values()) if isinstance(o, dict) else list(o))
            total += 8 * len(o)
        else:
            nbytes = getattr(o, "nbytes", None)
            if isinstance(nbytes, int):
                total += nbytes
            else:
                total += sys.getsizeof(o)
    return total


def large_values(args: Sequence[Any], kwargs: Mapping[str, Any], is_ref: IsRef,
                 threshold: int = INLINE_THRESHOLD) -> dict[str, int]:
    """Top-level by-value arguments Ray would put in the object store: name -> approximate bytes.

    Names are ``"arg0"``, ``"arg1"``, ... and ``"kw:NAME"``. A top-level ref is not a value.
    """
    out = {}
    named = [(f"arg{i}", a) for i, a in enumerate(args)] + [(f"kw:{k}", v) for k, v in kwargs.items()]
    for name, v in named:
        if is_ref(v):
            continue
        size = value_size(v, is_ref)
        if size > threshold:
            out[name] = size
    return out


def promote_large_values(args: Sequence[Any], kwargs: Mapping[str, Any], is_ref: IsRef,
                         put: Callable[[Any], Any], threshold: int = INLINE_THRESHOLD
                         ) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """``args``/``kwargs`` with every large top-level value replaced by ``put(value)`` (an ObjectRef).

    Why: Ray would copy such a value into the object store once per call, and the copy would follow the
    task through fastgpu's dispatcher. Put once on the caller's node, it is one object that placement can
    locate, that moves at most once per node, and that Ray resolves back to the value on the worker
    (top-level refs are resolved), so the function sees the same arguments.
    """
    big = large_values(args, kwargs, is_ref, threshold)
    if not big:
        return tuple(args), dict(kwargs)
    new_args = tuple(put(a) if f"arg{i}" in big else a for i, a in enumerate(args))
    new_kwargs = {k: (put(v) if f"kw:{k}" in big else v) for k, v in kwargs.items()}
    return new_args, new_kwargs
