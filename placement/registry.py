"""Policies by name. A policy module registers its class with ``@register``; nothing branches on names."""
from __future__ import annotations

import importlib
from typing import Callable

from .policy import Policy

_POLICIES: dict[str, type[Policy]] = {}
_BUILTIN = ("random", "dot_product", "gpu_clustering", "gpu_packing", "best_fit", "fgd", "fastgpu")
DEFAULT_POLICY = "fastgpu"


class UnknownPolicyError(ValueError):
    pass


def register(cls: type[Policy]) -> type[Policy]:
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    _POLICIES[cls.name] = cls
    return cls


def _load_builtin() -> None:
    for mod in _BUILTIN:
        importlib.import_module(f"placement.policies.{mod}")


def names() -> list[str]:
    _load_builtin()
    return sorted(_POLICIES)


def policy_class(name: str) -> type[Policy]:
    _load_builtin()
    try:
        return _POLICIES[name]
    except KeyError:
        raise UnknownPolicyError(
            f"unknown placement policy {name!r}; valid policies: {', '.join(names())}") from None


def create(name: str, **kwargs) -> Policy:
    """A fresh policy instance (policies keep per-run caches, so runs do not share instances)."""
    return policy_class(name)(**kwargs)


PolicyFactory = Callable[..., Policy]
