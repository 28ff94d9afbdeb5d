"""The namespaced test hosts (benchmarks/netns): built, shaped, measured and always removed.

Needs root and iproute2; skipped elsewhere. No Ray: processes are plain Python.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # benchmarks/ is not an installed package

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("tc") is None,
                                reason="network namespaces need root, ip and tc")


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def links() -> str:
    return subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout


def test_hosts_reach_each_other_at_the_shaped_rate_and_vanish_after_an_error():
    from benchmarks.netns.hosts import NetnsHosts
    from benchmarks.netns.measure_link import measure

    h = NetnsHosts(2, rate="200mbit", tag="901")
    with pytest.raises(RuntimeError, match="boom"):
        with h:
            assert set(h.hosts) <= namespaces()
            sleeper = h.popen(1, ["sleep", "300"])  # a process inside: must be ended by the teardown
            r = measure(h, mib=16)
            assert 150 < r["mbit_s"] < 215, r  # tbf at 200 Mbit/s
            assert r["up_a"] >= 16 * 2**20 and r["down_b"] >= 16 * 2**20  # the veth counters saw it
            raise RuntimeError("boom")
    assert not set(h.hosts) & namespaces()
    assert h.bridge not in links() and not any(v in links() for v in h.veths)
    assert sleeper.wait(timeout=10) is not None
    assert not h.state_file.exists()


def test_down_removes_a_crashed_runs_leftovers_only():
    from benchmarks.netns.hosts import STATE_DIR, NetnsHosts, down_recorded

    h = NetnsHosts(2, rate=None, tag="902").up()
    h._up = False  # as if the process died without cleaning up...
    st = json.loads(h.state_file.read_text())
    st["pid"] = 2**22 + 1  # ...and its pid is gone
    h.state_file.write_text(json.dumps(st))
    other = STATE_DIR / "live.json"  # a record of a live run must be left alone
    other.write_text(json.dumps({"tag": "live", "hosts": ["fglivezz"], "veths": [], "bridge": "fgbrlive",
                                 "pid": os.getpid()}))
    try:
        assert down_recorded() == ["902"]
        assert not set(h.hosts) & namespaces() and not h.state_file.exists()
        assert other.exists()
    finally:
        other.unlink(missing_ok=True)
