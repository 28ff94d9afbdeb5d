"""Wait, in a node scheduler, until a subtask's ObjectRef inputs exist on this node, before it is queued.

Like Ray's own task scheduling: a subtask whose inputs are still being produced (a chain of stages submitted
at once) must not hold a GPU slot while it waits for them, or a GPU idles with ready work queued behind
it. One thread runs ``ray.wait(..., fetch_local=True)`` over every pending input of this scheduler, so a
ready input is also pulled to this node (the GPU that will read it is here) while the GPU still works on
something else. One thread for all waits: a pool of blocking waits could fill up with later stages'
subtasks whose producers are still waiting behind them.
"""
from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

log = logging.getLogger("fastgpu.deps")

POLL_S = 0.05


class DependencyWaiter:
    def __init__(self, wait=None) -> None:
        if wait is None:
            import ray

            wait = ray.wait
        self._wait = wait
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pending: list[tuple[list, asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._thread: threading.Thread | None = None

    async def ready(self, refs: list[Any]) -> None:
        """Return once every ref in ``refs`` is ready (produced, or failed) and local to this node."""
        if not refs:
            return
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        with self._lock:
            self._pending.append((list(refs), loop, fut))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="fastgpu-deps", daemon=True)
                self._thread.start()
        self._wake.set()
        await fut

    def _run(self) -> None:
        while True:
            self._wake.wait(1.0)
            self._wake.clear()
            with self._lock:
                pending = [p for p in self._pending if not p[2].cancelled()]
                self._pending = pending
            refs = list({r: None for refs, _, _ in pending for r in refs})
            if not refs:
                continue
            try:
                done, _ = self._wait(refs, num_returns=1, timeout=POLL_S, fetch_local=True)
                if done:  # take every other one that is ready too, without waiting
                    more, _ = self._wait(refs, num_returns=len(refs), timeout=0, fetch_local=True)
                    done = set(done) | set(more)
            except Exception:  # a ref Ray cannot wait on: let the worker call raise its error
                log.exception("waiting for inputs failed")
                done = set(refs)
            finished = []
            with self._lock:
                keep = []
                for item in self._pending:
                    item[0][:] = [r for r in item[0] if r not in done]
                    (finished if not item[0] else keep).append(item)
                self._pending = keep
            for _, loop, fut in finished:
                loop.call_soon_threadsafe(_set, fut)
            if self._pending:
                self._wake.set()


def _set(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)
