"""Measure one link of the namespaced test hosts: raw TCP rate between two hosts (needs root).

    python -m benchmarks.netns.measure_link [--rate 1gbit] [--mib 256]

Prints the rate TCP achieved through the `tc`-shaped links and the bytes both veths counted.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time

from .hosts import NetnsHosts

SERVER = r"""
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 5201)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); n = 0; t0 = None
while True:
    b = c.recv(1 << 20)
    if not b: break
    if t0 is None: t0 = time.perf_counter()
    n += len(b)
print(n, time.perf_counter() - t0, flush=True)
"""
CLIENT = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], 5201)); buf = b"x" * (1 << 20)
for _ in range(int(sys.argv[2])): c.sendall(buf)
c.close()
"""


def measure(hosts: NetnsHosts, mib: int = 256, a: int = 0, b: int = 1) -> dict:
    srv = hosts.popen(b, [sys.executable, "-c", SERVER, hosts.addrs[b]], stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout.readline().strip() == "ready"
        before = hosts.link_bytes()
        hosts.run(a, [sys.executable, "-c", CLIENT, hosts.addrs[b], str(mib)], check=True, timeout=120)
        n, secs = srv.stdout.readline().split()
        srv.wait(timeout=30)
    finally:
        if srv.poll() is None:
            srv.kill()
    after = hosts.link_bytes()
    ha, hb = hosts.hosts[a], hosts.hosts[b]
    return {"bytes": int(n), "seconds": float(secs), "mbit_s": int(n) * 8 / float(secs) / 1e6,
            "up_a": after[ha]["up"] - before[ha]["up"], "down_b": after[hb]["down"] - before[hb]["down"]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rate", default="1gbit", help="tc rate per link direction, or 'none' for unlimited")
    p.add_argument("--mib", type=int, default=256)
    args = p.parse_args(argv)
    rate = None if args.rate == "none" else args.rate
    with NetnsHosts(2, rate=rate) as hosts:
        r = measure(hosts, args.mib)
    print(f"rate={args.rate}: {r['bytes'] / 2**20:.0f} MiB in {r['seconds']:.2f} s = {r['mbit_s']:.0f} Mbit/s; "
          f"link counters: sender up {r['up_a'] / 2**20:.1f} MiB, receiver down {r['down_b'] / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
