"""fastgpu-ray's transfer optimiser: run subtasks where their data is, when that finishes sooner.

Pure-Python cost-model side (no Ray import): ``args`` finds a subtask's inputs, ``locate`` says where
objects are (``RayObjectLocator`` / ``FakeLocator``), ``model`` turns that into per-node bytes local /
to move (``Demand.input_bytes``/``input_total``) and seconds through ``placement.cost.CostModel``,
``bandwidth`` parses and resolves the link bandwidth, ``optimizer`` ties them together for the runtime.
Ray-side helpers live in ``transfer.ray_hooks`` (prefetch, bandwidth probe) and import Ray lazily.
"""
from .args import INLINE_THRESHOLD, find_refs, large_values, promote_large_values, value_size
from .bandwidth import (ENV_VAR, FALLBACK_BANDWIDTH, BandwidthError, LinkBandwidth, format_bandwidth,
                        parse_bandwidth, resolve_link_bandwidth)
from .locate import UNKNOWN, FakeLocator, ObjectLocation, ObjectLocator, RayObjectLocator, ref_key
from .model import InputObject, NodeTransfer, TransferEstimate, TransferLedger, build_estimate
from .optimizer import TransferOptimizer

__all__ = [
    "INLINE_THRESHOLD", "find_refs", "large_values", "promote_large_values", "value_size", "ENV_VAR",
    "FALLBACK_BANDWIDTH", "BandwidthError", "LinkBandwidth", "format_bandwidth", "parse_bandwidth",
    "resolve_link_bandwidth", "UNKNOWN", "FakeLocator", "ObjectLocation", "ObjectLocator",
    "RayObjectLocator", "ref_key", "InputObject", "NodeTransfer", "TransferEstimate", "TransferLedger",
    "build_estimate", "TransferOptimizer",
]
