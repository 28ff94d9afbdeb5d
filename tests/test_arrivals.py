"""A node scheduler's report waits for the driver's calls sent before it (fastgpu_ray.core.arrivals), without Ray."""
from __future__ import annotations

import asyncio

from fastgpu_ray.core.arrivals import Arrivals


def test_a_report_waits_for_the_calls_sent_before_it_and_sees_what_they_queued():
    async def main():
        arrivals, queue = Arrivals(), []

        async def submit(i):  # as NodeScheduler.submit: counted before its first await, then queued
            await asyncio.sleep(0.01 * i)  # (Ray delivers them late, and out of order)
            arrivals.arrived()
            queue.append(i)

        async def report(sent):
            ok = await arrivals.until(sent, timeout_s=2.0)
            return ok, sorted(queue)

        calls = [asyncio.ensure_future(submit(i)) for i in (3, 1, 2)]
        got = await report(3)  # asked for right after three submits that have not arrived yet
        await asyncio.gather(*calls)
        return got

    assert asyncio.run(main()) == (True, [1, 2, 3])


def test_a_call_that_never_arrives_delays_the_report_only_by_the_timeout():
    async def main():
        arrivals = Arrivals()
        arrivals.arrived()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        ok = await arrivals.until(2, timeout_s=0.05)
        waited = loop.time() - t0
        t1 = loop.time()  # the missing call is not waited for again (a restarted actor never gets it)
        again = await arrivals.until(2, timeout_s=5.0)
        return ok, waited, again, loop.time() - t1

    ok, waited, again, second = asyncio.run(main())
    assert not ok and 0.04 <= waited < 1.0 and again and second < 0.01
