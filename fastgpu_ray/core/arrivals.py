"""Which of one sender's calls an async actor has received: a node scheduler's report must show the work the
driver sent it before asking, and an explain (node scheduler or lobby) must find the subtask (Ray-free).

Ray does not run an async actor's calls in the order one caller sent them: a call whose arguments hold
ObjectRefs may start after a later call without (measured: 14 of 200 reports, asked for right after five
submits, ran before one of those submits). The driver counts the calls it sends to each node scheduler
(``Session.sent``) and passes the count with each report or explain request; the actor answers once that
many have arrived, or after a short wait.
"""
from __future__ import annotations

import asyncio

EXPLAIN_WAIT_S = 2.0  # an explain waits at most this long for the calls the driver sent before it


class Arrivals:
    def __init__(self) -> None:
        self.count = 0
        self._event = asyncio.Event()

    def arrived(self) -> None:
        """One more call arrived. Call it before the call's first await, so that what the call queues is
        in place before anything waiting in ``until`` runs again."""
        self.count += 1
        self._event.set()

    async def until(self, sent: int, timeout_s: float) -> bool:
        """Wait until ``sent`` calls have arrived, at most ``timeout_s``; returns whether they all did. Calls
        still missing then are taken as never coming (failed on the way, or sent to this actor before Ray
        restarted it): later questions do not wait for them again."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while self.count < sent:
            self._event.clear()
            left = end - loop.time()
            try:
                if left <= 0:
                    raise asyncio.TimeoutError
                await asyncio.wait_for(self._event.wait(), left)
            except asyncio.TimeoutError:
                self.count = sent
                return False
        return True
