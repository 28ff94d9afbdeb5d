"""fastgpu-ray's transfer optimiser: run subtasks where their data is, when that finishes sooner.

Pure-Python cost-model side (no Ray import): ``args`` finds a subtask's inputs, ``locate`` says where
objects are (``RayObjectLocator`` / ``FakeLocator``), ``model`` turns that into per-node bytes local /
to move (``Demand.input_bytes``/``input_total``) and seconds through ``placement.cost.CostModel``,
``bandwidth`` parses and resolves the link bandwidth, ``optimizer`` ties them together for the runtime.
Ray-side helpers live in ``transfer.ray_hooks`` (prefetch, bandwidth probe) and import Ray lazily.
"""
import importlib

# Names re-exported from the submodules, imported on first use (PEP 562): a GPU worker imports
# ``transfer.args`` alone, and must not pay for ``model``'s numpy and placement imports at its start.
_FROM = {
    "args": ("INLINE_THRESHOLD", "find_refs", "large_values", "promote_large_values", "value_size"),
    "bandwidth": ("ENV_VAR", "FALLBACK_BANDWIDTH", "BandwidthError", "LinkBandwidth", "format_bandwidth",
                  "parse_bandwidth", "resolve_link_bandwidth"),
    "locate": ("UNKNOWN", "FakeLocator", "ObjectLocation", "ObjectLocator", "RayObjectLocator", "ref_key"),
    "model": ("InputObject", "NodeTransfer", "TransferEstimate", "TransferLedger", "build_estimate"),
    "optimizer": ("TransferOptimizer",),
}
_WHERE = {name: mod for mod, names in _FROM.items() for name in names}


def __getattr__(name: str):
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{mod}", __name__), name)


__all__ = list(_WHERE)
