"""Network-namespace "hosts" joined by a bridge, each link limited with `tc` (needs root).

    with NetnsHosts(4, rate="1gbit") as hosts:      # h0..h3 at 10.213.T.10..13
        hosts.popen(0, ["python", "-c", "..."])      # a process inside host 0
        hosts.link_bytes()                            # bytes each host's link carried, both directions

Everything this creates is named after a per-run tag (``fg<tag>h<i>``, ``fgv<tag>i``, ``fgbr<tag>``) and
recorded in ``/tmp/fastgpu-netns/<tag>.json`` before it is created, so ``down`` -- run on exit, on
SIGTERM/SIGINT, or later as ``python -m benchmarks.netns.hosts down [--tag T]`` -- removes exactly what
this harness made and nothing else. Processes are ended by the pids ``ip netns pids`` lists for our own
namespaces (never by name: other Ray clusters on the machine are not ours).

Links: upload shaped on the host's ``eth0`` inside its namespace, download on the root-side veth, both
``tbf rate RATE burst 256kb latency 50ms``. The bridge has no address and no namespace has a default
route: nothing is routed anywhere but between our hosts.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

STATE_DIR = Path("/tmp/fastgpu-netns")


def sh(*argv: str, check: bool = True, ns: str | None = None) -> subprocess.CompletedProcess:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    res = subprocess.run(cmd, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


class NetnsHosts:
    def __init__(self, n_hosts: int = 4, rate: str | None = "1gbit", tag: str | None = None) -> None:
        if os.geteuid() != 0:
            raise PermissionError("network namespaces need root; run as root or use the one-machine mode")
        if not 2 <= n_hosts <= 50:
            raise ValueError(f"n_hosts must be 2..50, got {n_hosts}")
        self.tag = tag or f"{os.getpid() % 1000:03d}"
        self.n, self.rate = n_hosts, rate
        octet = 100 + int(self.tag) % 150  # third octet: separate runs get separate subnets
        self.hosts = [f"fg{self.tag}h{i}" for i in range(n_hosts)]
        self.veths = [f"fgv{self.tag}{i}" for i in range(n_hosts)]
        self.addrs = [f"10.213.{octet}.{10 + i}" for i in range(n_hosts)]
        self.bridge = f"fgbr{self.tag}"
        self.state_file = STATE_DIR / f"{self.tag}.json"
        self._up = False

    # ------------------------------------------------------------------------------- lifecycle
    def up(self) -> "NetnsHosts":
        STATE_DIR.mkdir(exist_ok=True)
        self.state_file.write_text(json.dumps({"tag": self.tag, "hosts": self.hosts, "veths": self.veths,
                                               "bridge": self.bridge, "pid": os.getpid()}))
        self._up = True
        atexit.register(self.down)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        try:
            sh("ip", "link", "add", self.bridge, "type", "bridge")
            sh("ip", "link", "set", self.bridge, "up")
            for h, v, a in zip(self.hosts, self.veths, self.addrs):
                sh("ip", "netns", "add", h)
                sh("ip", "link", "set", "lo", "up", ns=h)
                sh("ip", "link", "add", v, "type", "veth", "peer", "name", f"p{v}")
                sh("ip", "link", "set", f"p{v}", "netns", h)
                sh("ip", "link", "set", f"p{v}", "name", "eth0", ns=h)
                sh("ip", "addr", "add", f"{a}/24", "dev", "eth0", ns=h)
                sh("ip", "link", "set", "eth0", "up", ns=h)
                sh("ip", "link", "set", v, "master", self.bridge)
                sh("ip", "link", "set", v, "up")
                if self.rate:
                    tbf = ["root", "tbf", "rate", self.rate, "burst", "256kb", "latency", "50ms"]
                    sh("tc", "qdisc", "add", "dev", "eth0", *tbf, ns=h)  # upload
                    sh("tc", "qdisc", "add", "dev", v, *tbf)  # download
            self._wait_reachable()
        except BaseException:
            self.down()
            raise
        return self

    def _wait_reachable(self, timeout_s: float = 10.0) -> None:
        """Host 0 can reach every other host: a TCP connect to a closed port is refused (answered)."""
        probe = ("import socket, sys\n"
                 "try: socket.create_connection((sys.argv[1], 9), timeout=1)\n"
                 "except ConnectionRefusedError: sys.exit(0)\n"
                 "except OSError: sys.exit(1)\n")
        end = time.time() + timeout_s
        for a in self.addrs[1:]:
            while sh(sys.executable, "-c", probe, a, check=False, ns=self.hosts[0]).returncode != 0:
                if time.time() > end:
                    raise RuntimeError(f"host {a} not reachable from {self.addrs[0]} after {timeout_s}s")
                time.sleep(0.2)

    def _on_signal(self, signum, frame) -> None:
        self.down()
        sys.exit(128 + signum)

    def down(self) -> None:
        """Remove everything this run created; safe to call twice and after a partial ``up``."""
        if not self._up:
            return
        self._up = False
        teardown(self.hosts, self.veths, self.bridge)
        self.state_file.unlink(missing_ok=True)

    def __enter__(self) -> "NetnsHosts":
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    # ------------------------------------------------------------------------------------ use
    def popen(self, i: int, argv: list[str], **kw) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", self.hosts[i], *argv], **kw)

    def run(self, i: int, argv: list[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.hosts[i], *argv], **kw)

    def link_bytes(self) -> dict[str, dict[str, int]]:
        """Per host: bytes it sent (``up``) and received (``down``) over its link, from the root-side
        veth counters (the veth's rx is what the host sent)."""
        stats = {}
        for line in Path("/proc/net/dev").read_text().splitlines()[2:]:
            name, data = line.split(":", 1)
            f = data.split()
            stats[name.strip()] = (int(f[0]), int(f[8]))
        return {h: {"up": stats[v][0], "down": stats[v][1]} for h, v in zip(self.hosts, self.veths)}


def _ns_pids(ns: str) -> list[int]:
    return [int(p) for p in sh("ip", "netns", "pids", ns, check=False).stdout.split()]


def _kill_ns_processes(namespaces: list[str], grace_s: float = 5.0) -> None:
    """SIGTERM every process in our namespaces, then SIGKILL whatever is left after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for ns in namespaces:
            for p in _ns_pids(ns):
                try:
                    os.kill(p, sig)
                except ProcessLookupError:
                    pass
        end = time.time() + grace_s
        while time.time() < end and any(_ns_pids(ns) for ns in namespaces):
            time.sleep(0.1)


def teardown(hosts, veths, bridge) -> None:
    existing = set(sh("ip", "netns", "list", check=False).stdout.split())
    mine = [h for h in hosts if h in existing]
    _kill_ns_processes(mine)
    for v in veths:
        sh("ip", "link", "del", v, check=False)
    for h in mine:
        sh("ip", "netns", "del", h, check=False)
    sh("ip", "link", "del", bridge, check=False)


def down_recorded(tag: str | None = None) -> list[str]:
    """Tear down recorded runs (one tag, or all whose creating process is gone). Returns the tags."""
    done = []
    for f in sorted(STATE_DIR.glob("*.json")) if STATE_DIR.exists() else []:
        st = json.loads(f.read_text())
        if tag is not None and st["tag"] != tag:
            continue
        if tag is None and _alive(st.get("pid")):
            continue  # a live run cleans up after itself
        teardown(st["hosts"], st["veths"], st["bridge"])
        f.unlink(missing_ok=True)
        done.append(st["tag"])
    return done


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (ProcessLookupError, TypeError, ValueError):
        return False


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("down", help="remove namespaces left by a crashed run (only ours, from their records)")
    d.add_argument("--tag")
    args = p.parse_args(argv)
    if args.cmd == "down":
        print("removed:", down_recorded(args.tag) or "nothing")


if __name__ == "__main__":
    main()
