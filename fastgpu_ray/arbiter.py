"""The GPU arbiter shared by every fastgpu driver on a cluster: a detached actor on the head node.

Started by the first session that needs it (``get_if_exists``), named with the version of its protocol
(``ARBITER_NAME``), so a driver of an incompatible fastgpu version starts its own instead of talking to a
stranger. It outlives the driver that started it (``lifetime="detached"``) and keeps only soft state: the
node schedulers re-report within a second, so a restarted arbiter (``max_restarts=-1``) rebuilds its books.

It never touches subtasks: per-subtask traffic stays between a driver and its node schedulers. Node
schedulers ``report`` their job's state on their node; the arbiter recomputes the fair share
(``fastgpu_ray.share_book``) and pushes each changed ``Share`` to that job's scheduler on that node
(``NodeScheduler.set_share``). Once a second it drops jobs whose driver Ray's job table shows dead, and
rows that stopped reporting.
"""
from __future__ import annotations

import asyncio
import logging

import ray

from .monitor import NAMESPACE
from .share_book import JobShare, ShareBook

log = logging.getLogger("fastgpu.arbiter")

ARBITER_VERSION = 1
ARBITER_NAME = f"fastgpu-arbiter-v{ARBITER_VERSION}"
SWEEP_S = 1.0  # dead drivers and silent schedulers are looked for this often


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, max_concurrency=10_000)
class Arbiter:
    def __init__(self) -> None:
        logging.basicConfig(level=logging.INFO)
        self.book = ShareBook()
        self.handles: dict[tuple[str, str], object] = {}
        self._sweeper = None

    async def report(self, job: str, node: str, handle, state: dict) -> bool:
        """A node scheduler's state (``state``: weight, ray_job, gpu_total, held, want, running, queued,
        label). ``handle``: that scheduler, or None when the arbiter already has it. Returns False when
        the arbiter does not know the scheduler (it restarted): call again with the handle."""
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep_loop())
        if handle is None and (job, node) not in self.handles:
            return False
        if handle is not None:
            self.handles[(job, node)] = handle
        self.book.report(job, node, **state)
        self._push()
        return True

    async def leave(self, job: str, node: str | None = None) -> None:
        self.book.leave(job, node)
        for key in [k for k in self.handles if k[0] == job and (node is None or k[1] == node)]:
            del self.handles[key]
        self._push()

    def status(self) -> list[JobShare]:
        return self.book.status()

    def version(self) -> int:
        return ARBITER_VERSION

    # ------------------------------------------------------------------------------------ internals
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
                self._push()
            except Exception:
                log.exception("arbiter sweep failed")


def job_shares() -> tuple:
    """Every job's share as the running arbiter sees it (``JobShare`` rows); () when none runs."""
    try:
        return tuple(ray.get(ray.get_actor(ARBITER_NAME, namespace=NAMESPACE).status.remote(), timeout=10))
    except Exception:
        return ()


def get_arbiter():
    """The cluster's arbiter (started on first use, on the head node)."""
    return Arbiter.options(name=ARBITER_NAME, namespace=NAMESPACE, get_if_exists=True, lifetime="detached",
                           resources={"node:__internal_head__": 0.001}).remote()
