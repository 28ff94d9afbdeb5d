"""Link bandwidth: parse what users write ("1Gbit", "125MB/s") and decide which figure applies.

Order of precedence (first one set wins):

1. the explicit value, ``fastgpu.init(link_bandwidth="1Gbit")``;
2. the environment variable ``FASTGPU_LINK_BANDWIDTH`` (same syntax);
3. a figure measured on the running cluster (``transfer.probe.measure_link_bandwidth``), when the
   caller has one;
4. ``FALLBACK_BANDWIDTH``: the rate measured on the project's 1 Gbit/s test links
   (docs/BENCHMARKS.md), a conservative guess for "a real network".

Units: the result is always bytes per second. Lower-case ``b``/``bit``/``bps`` means bits, ``B``/``byte``
means bytes; prefixes k, M, G, T are decimal, Ki, Mi, Gi, Ti binary. A bare number is bytes/second.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from typing import Mapping

ENV_VAR = "FASTGPU_LINK_BANDWIDTH"
# 925 Mbit/s: one 64 MiB Ray object pull measured between two hosts joined by `tc`-limited 1 Gbit/s
# links (benchmarks/locality.py on benchmarks/netns; raw TCP on the same links: 941 Mbit/s).
FALLBACK_BANDWIDTH = 925e6 / 8

_PREFIX = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12,
           "ki": 2.0**10, "mi": 2.0**20, "gi": 2.0**30, "ti": 2.0**40}
_RE = re.compile(r"^\s*(?P<num>\d+(?:\.\d*)?|\.\d+)(?:[eE](?P<exp>[+-]?\d+))?\s*"
                 r"(?P<prefix>[kKmMgGtT]i?)?(?P<unit>bits?|bytes?|bps|Bps|b|B)?(?P<per>/s|ps)?\s*$")
_EXAMPLES = "'1Gbit', '10Gbit/s', '100Mbps', '125MB/s', '1GiB/s', or a number of bytes per second"


class BandwidthError(ValueError):
    pass


def parse_bandwidth(value: str | int | float, what: str = "link_bandwidth") -> float:
    """``value`` in bytes per second. Raises ``BandwidthError`` naming ``what`` for anything unclear."""
    if isinstance(value, bool):
        raise BandwidthError(f"{what}={value!r} is not a bandwidth; write {_EXAMPLES}")
    if isinstance(value, (int, float)):
        bps = float(value)
    elif isinstance(value, str):
        m = _RE.match(value)
        if not m:
            raise BandwidthError(f"{what}={value!r} is not understood; write {_EXAMPLES}")
        bps = float(m["num"]) * 10.0 ** int(m["exp"] or 0) * _PREFIX[(m["prefix"] or "").lower()]
        unit = m["unit"] or ""
        if unit in ("b", "bit", "bits", "bps") or (unit == "" and m["per"] == "ps"):
            bps /= 8.0
        elif unit == "" and m["prefix"]:
            # "1G" alone: bits or bytes? Refuse rather than guess by a factor of 8.
            raise BandwidthError(f"{what}={value!r} has no unit (bit or B); write {_EXAMPLES}")
    else:
        raise BandwidthError(f"{what}={value!r} ({type(value).__name__}) is not a bandwidth; write {_EXAMPLES}")
    if not math.isfinite(bps) or bps <= 0:
        raise BandwidthError(f"{what}={value!r} must be a positive, finite bandwidth; write {_EXAMPLES}")
    return bps


def format_bandwidth(bps: float) -> str:
    """Bytes/s in the units networks are sold in: ``'1 Gbit/s'``, ``'951 Mbit/s'``."""
    bits = bps * 8
    for div, name in ((1e12, "Tbit/s"), (1e9, "Gbit/s"), (1e6, "Mbit/s"), (1e3, "kbit/s")):
        if bits >= div:
            return f"{bits / div:.3g} {name}"
    return f"{bits:.3g} bit/s"


@dataclass(frozen=True)
class LinkBandwidth:
    """The bandwidth in force and where it came from (for explanations and ``fastgpu status``)."""

    bytes_per_s: float
    source: str  # "explicit" | "env" | "measured" | "fallback"

    def __str__(self) -> str:
        return f"{format_bandwidth(self.bytes_per_s)} ({self.source})"


def resolve_link_bandwidth(explicit: str | int | float | None = None,
                           environ: Mapping[str, str] | None = None,
                           measured: float | None = None) -> LinkBandwidth:
    """The bandwidth to use, by the precedence in the module docstring."""
    if explicit is not None:
        return LinkBandwidth(parse_bandwidth(explicit, "link_bandwidth"), "explicit")
    env = os.environ if environ is None else environ
    raw = env.get(ENV_VAR)
    if raw is not None and raw.strip():
        return LinkBandwidth(parse_bandwidth(raw, ENV_VAR), "env")
    if measured is not None and measured > 0 and math.isfinite(measured):
        return LinkBandwidth(float(measured), "measured")
    return LinkBandwidth(FALLBACK_BANDWIDTH, "fallback")
