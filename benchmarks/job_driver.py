"""One job (driver) of a multi-job run: connects to a running cluster, maps ``--n`` subtasks of
``--work-s`` seconds that each need a whole GPU, and writes a JSON record of what ran when.

Used by ``benchmarks/multi_job.py`` and ``tests/test_runtime_multijob.py``, which start several of these as
separate processes (separate Ray jobs) on one cluster. Timing starts at the first submit, not at init.

    python benchmarks/job_driver.py --address ADDR --n 12 --out job.json [--system fastgpu|ray]
        [--weight 2] [--priority 100] [--start-at EPOCH | --go-file F --offset-s 2] [--hold-s 25]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def span(item):
    """Sleeps ``work_s`` holding one GPU; returns (job, start, end, node, GPU ids) in wall-clock time."""
    import ray

    work_s, job = item
    t0 = time.time()
    time.sleep(work_s)
    return job, t0, time.time(), ray.get_runtime_context().get_node_id(), [str(g) for g in ray.get_gpu_ids()]


class RefBox:
    """Holds refs for another job (``--publish``)."""

    def __init__(self, refs):
        self.refs = refs

    def get(self):
        return self.refs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--address", required=True)
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--work-s", type=float, default=1.0)
    ap.add_argument("--system", choices=["fastgpu", "ray"], default="fastgpu")
    ap.add_argument("--weight", type=float, default=1.0)
    ap.add_argument("--priority", type=int, default=0)
    ap.add_argument("--start-at", type=float, default=0.0, help="wall-clock time (epoch s) to start submitting")
    ap.add_argument("--go-file", help="after init, write OUT.ready, wait for this file (an epoch time) and "
                    "start submitting --offset-s after that time (so init time never shifts the start)")
    ap.add_argument("--offset-s", type=float, default=0.0)
    ap.add_argument("--hold-s", type=float, default=0.0, help="keep the session open this long after the work")
    ap.add_argument("--repeat", type=int, default=1, help="run the map this many times (records each)")
    ap.add_argument("--publish", help="name a Ray actor (namespace fastgpu-test) that hands out the first "
                    "run's refs, so another job can try to reach them (tests of the trust boundary)")
    ap.add_argument("--label", default="job")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)

    import ray

    if os.environ.get("FASTGPU_BENCH_DEBUG"):  # the driver's routing and balancing decisions, on stderr
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        logging.getLogger("fastgpu.session").setLevel(logging.DEBUG)
    ray.init(address=a.address, log_to_driver=False)
    rec = {"label": a.label, "pid": os.getpid(), "runs": []}
    if a.system == "fastgpu":
        import fastgpu_ray as fastgpu

        fastgpu.init(emulate=True, job_weight=a.weight)
        f = fastgpu.task(priority=a.priority)(span)

        def submit():
            return f.map([(a.work_s, a.label)] * a.n)
    else:
        fastgpu = None
        g = ray.remote(num_gpus=1, num_cpus=0, max_calls=0)(span)

        def submit():
            return [g.remote((a.work_s, a.label)) for _ in range(a.n)]

    if a.go_file:
        open(a.out + ".ready", "w").close()
        while not os.path.exists(a.go_file):
            time.sleep(0.01)
        time.sleep(0.05)  # (the writer's rename is atomic; this is only politeness)
        a.start_at = float(open(a.go_file).read()) + a.offset_s
    if a.start_at:
        time.sleep(max(0.0, a.start_at - time.time()))
    for i in range(a.repeat):
        t0 = time.time()
        refs = submit()
        if a.publish and i == 0:
            box = ray.remote(num_cpus=0)(RefBox).options(name=a.publish, namespace="fastgpu-test").remote(
                [refs])  # (nested in a list: not resolved)
            ray.get(box.get.remote())
        spans = ray.get(refs, timeout=600)
        rec["runs"].append({"submit": t0, "done": time.time(), "spans": [list(s[1:]) for s in spans]})
    rec["ready_to_hold"] = time.time()
    with open(a.out + ".tmp", "w") as fh:  # written before holding: a test can act while the session stays open
        json.dump(rec, fh)
    os.replace(a.out + ".tmp", a.out)
    if a.hold_s:
        time.sleep(a.hold_s)
    if fastgpu is not None:
        fastgpu.shutdown()
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
