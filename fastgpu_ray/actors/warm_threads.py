"""Threads that run calls, each call on the thread that went idle last (a stack, not a queue).

Why a GPU worker needs it (``worker.Runner``): glibc serves each thread from its own malloc arena, so a
large array allocated on a thread whose arena has not held one is page-faulted in afresh. Ray hands a
threaded actor's calls to any thread of its pool; a ``ThreadPoolExecutor`` reuses an idle thread but lets
all idle ones race for the next call, so once calls had run side by side, later one-at-a-time calls
cycled through every thread (measured: 4 threads for 12 calls). Here the next call goes to the thread
that finished last, whose memory is warm; a new thread starts only while every one is busy.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable


class WarmThreads:
    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue] = []  # one inbox per idle thread; the last one is the warmest
        self._count = 0

    @property
    def threads(self) -> int:
        """How many threads were started (each runs until the process ends)."""
        return self._count

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on one of these threads; returns its result or raises its exception."""
        fut: Future = Future()
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
            if inbox is None:
                self._count += 1
                inbox = queue.SimpleQueue()
                threading.Thread(target=self._loop, args=(inbox,), daemon=True,
                                 name=f"{self._name}-{self._count}").start()
        inbox.put((fn, args, fut))
        return fut.result()

    def _loop(self, inbox: queue.SimpleQueue) -> None:
        while True:
            fn, args, fut = inbox.get()
            try:
                res, err = fn(*args), None
            except BaseException as e:  # (SystemExit from exit_actor too: the caller's thread raises it)
                res, err = None, e
            with self._lock:  # idle again before the caller sees the result: its next call comes back here
                self._idle.append(inbox)
            if err is None:
                fut.set_result(res)
            else:
                fut.set_exception(err)
            # Held until the next call otherwise: a result, or an input pinned in Ray's object store.
            fn = args = fut = res = err = None
