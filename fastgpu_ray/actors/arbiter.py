"""The GPU arbiter shared by every fastgpu driver on a cluster: a detached actor on the head node.

Started by the first session that needs it (``get_if_exists``), named with the version of its protocol
(``ARBITER_NAME``), so a driver of an incompatible fastgpu version starts its own instead of talking to a
stranger. It outlives the driver that started it (``lifetime="detached"``) and keeps only soft state: the
node schedulers re-report within a second, so a restarted arbiter (``max_restarts=-1``) rebuilds its books.

It never touches subtasks: per-subtask traffic stays between a driver and its node schedulers. Node
schedulers ``report`` their job's state on their node; the arbiter recomputes the fair share
(``fastgpu_ray.core.share_book``) and pushes each changed ``Share`` to that job's scheduler on that node
(``NodeScheduler.set_share``). Once a second it drops jobs whose driver Ray's job table shows dead, and
rows that stopped reporting.

It is also fastgpu's one voice to Ray's autoscaler (``fastgpu_ray.actors.autoscaler``): every job's work on live
nodes (``want``) and the subtasks waiting in its lobby for a node to be launched (``waiting``) become one
resource request, rewritten when it changes, so the cluster grows for fastgpu's backlog and may shrink
once it drains. It reads what the autoscaler can launch (``scaling``) for the drivers' routers.
"""
from __future__ import annotations

import asyncio
import logging

import ray

from ..core.scaling import Scaling, demand_bundles
from ..core.share_book import STALE_S, JobShare, ShareBook
from .monitor import NAMESPACE

log = logging.getLogger("fastgpu.arbiter")

ARBITER_VERSION = 1
ARBITER_NAME = f"fastgpu-arbiter-v{ARBITER_VERSION}"
SWEEP_S = 1.0  # dead drivers and silent schedulers are looked for this often
SCALING_S = 2.0  # the autoscaler's state (node types, nodes up and launching) is re-read this often


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=10_000)
class Arbiter:
    def __init__(self) -> None:
        logging.basicConfig(level=logging.INFO)
        self.book = ShareBook()
        self.handles: dict[tuple[str, str], object] = {}
        self._sweeper = None
        self._scaling = Scaling()
        self._scaling_at = -1e9
        self.waiting: dict[str, tuple[list[float], float]] = {}  # job -> (GPUs of each lobby subtask, seen)
        self._requested: list | None = None  # the last resource request Ray holds (None: unknown)
        self._requested_ever = False  # whether fastgpu ever sent one (a request it did not make stays)
        self._request_lock = asyncio.Lock()  # one request at a time, so Ray holds the last one computed

    async def report(self, job: str, node: str, handle, state: dict) -> bool:
        """A node scheduler's state (``state``: weight, ray_job, gpu_total, held, want, running, queued,
        label). ``handle``: that scheduler, or None when the arbiter already has it. Returns False when
        the arbiter does not know the scheduler (it restarted): call again with the handle."""
        self._start_sweeper()
        if handle is None and (job, node) not in self.handles:
            return False
        if handle is not None:
            self.handles[(job, node)] = handle
        self.book.report(job, node, **state)
        self._push()
        return True

    async def leave(self, job: str, node: str | None = None) -> None:
        self.book.leave(job, node)
        if node is None:
            self.waiting.pop(job, None)
        for key in [k for k in self.handles if k[0] == job and (node is None or k[1] == node)]:
            del self.handles[key]
        self._push()

    async def scaling(self) -> Scaling:
        """What the autoscaler can launch and is launching (re-read when older than ``SCALING_S``)."""
        self._start_sweeper()
        if asyncio.get_running_loop().time() - self._scaling_at > SCALING_S:
            await self._read_scaling()
        return self._scaling

    async def wait_for_node(self, job: str, gpus: list[float]) -> None:
        """A job's lobby: the GPUs of each subtask it holds until a node can take it (``[]``: none)."""
        self._start_sweeper()
        if gpus:
            self.waiting[job] = (list(gpus), asyncio.get_running_loop().time())
        else:
            self.waiting.pop(job, None)
        await self._request()

    def autoscaler_line(self) -> str:
        """The autoscaler in one line, for ``fastgpu status`` ("" when the cluster has none)."""
        sc = self._scaling
        if not sc.autoscaler:
            return ""
        types = ("node types unknown (fastgpu could not read them)" if not sc.known else
                 "can launch " + ", ".join(t.describe() for t in sc.gpu_types()) if sc.gpu_types()
                 else "no node type with GPUs")
        up = ", ".join(f"{k} x{v}" for k, v in sorted(sc.nodes.items())) or "none"
        coming = ", ".join(f"{k} x{v}" for k, v in sorted(sc.launching.items())) or "none"
        asked = sum(b["GPU"] for b in self._requested or ())
        return f"{types}; nodes up: {up}; launching: {coming}; fastgpu asks it for {asked:g} GPU(s)"

    def status(self) -> list[JobShare]:
        return self.book.status()

    def version(self) -> int:
        return ARBITER_VERSION

    # ------------------------------------------------------------------------------------ internals
    def _start_sweeper(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep_loop())

    async def _read_scaling(self) -> None:
        from .autoscaler import read_scaling

        self._scaling = await asyncio.to_thread(read_scaling)
        self._scaling_at = asyncio.get_running_loop().time()

    async def _request(self) -> None:
        """Send the autoscaler fastgpu's demand if it changed: work on live nodes + subtasks waiting."""
        if not self._scaling.autoscaler:
            return
        async with self._request_lock:
            want = sum(r.want for r in self.book.rows.values())
            bundles = demand_bundles(want, [g for gs, _ in self.waiting.values() for g in gs])
            if bundles == self._requested or (not self._requested_ever and not bundles):
                return  # (never clear a request fastgpu did not make)
            from .autoscaler import request

            log.info("asking the autoscaler for %d GPU(s) in %d bundle(s) (%d on live nodes, %d waiting for a "
                     "node)", sum(b["GPU"] for b in bundles), len(bundles), want,
                     sum(len(g) for g, _ in self.waiting.values()))
            try:
                await asyncio.to_thread(request, bundles)
                self._requested, self._requested_ever = bundles, True
            except Exception:
                log.exception("resource request to the autoscaler failed (retried at the next sweep)")
                self._requested = None

    def _push(self) -> None:
        for key, share in self.book.changed():
            log.info("job %s node %s: %s", key[0], key[1][:12], share)
            h = self.handles.get(key)
            if h is not None:
                asyncio.ensure_future(self._send(key, h, share))

    async def _send(self, key, handle, share) -> None:
        try:
            await handle.set_share.remote(share)
        except Exception:  # that scheduler is gone (its driver or node died): forget it
            log.info("job %s on node %s no longer answers; dropping it", key[0], key[1][:12])
            self.handles.pop(key, None)
            self.book.leave(*key)
            self._push()

    async def _sweep_loop(self) -> None:
        gcs = None
        while True:
            await asyncio.sleep(SWEEP_S)
            try:
                if gcs is None:
                    from ray._raylet import GcsClient

                    gcs = GcsClient(ray.get_runtime_context().gcs_address)
                info = await asyncio.to_thread(gcs.get_all_job_info)
                dead = [jid.hex() for jid, j in info.items() if j.is_dead]
                gone = self.book.drop_dead(dead)
                for j in gone:
                    log.info("job %s: its driver died; its GPUs go to the other jobs", j)
                for key in [k for k in self.handles if (k[0], k[1]) not in self.book.rows]:
                    del self.handles[key]
                now = asyncio.get_running_loop().time()
                for j in [j for j, (_, seen) in self.waiting.items() if j in gone or now - seen > STALE_S]:
                    del self.waiting[j]
                self._push()
                if now - self._scaling_at > SCALING_S:
                    await self._read_scaling()
                await self._request()
            except Exception:
                log.exception("arbiter sweep failed")


def job_shares() -> tuple:
    """Every job's share as the running arbiter sees it (``JobShare`` rows); () when none runs."""
    try:
        return tuple(ray.get(ray.get_actor(ARBITER_NAME, namespace=NAMESPACE).status.remote(), timeout=10))
    except Exception:
        return ()


def autoscaler_line() -> str:
    try:
        return ray.get(ray.get_actor(ARBITER_NAME, namespace=NAMESPACE).autoscaler_line.remote(), timeout=10)
    except Exception:
        return ""


def get_arbiter():
    """The cluster's arbiter (started on first use, on the head node)."""
    return Arbiter.options(name=ARBITER_NAME, namespace=NAMESPACE, get_if_exists=True, lifetime="detached",
                           resources={"node:__internal_head__": 0.001}).remote()
