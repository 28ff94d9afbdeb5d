"""The scheduling core, without Ray: a node's dispatch core and the books it keeps (queue, worker pool,
reservations, records), the driver's routing, hand-offs, slots, fair share, scaling rules, and the
messages between driver and node schedulers. Tested with fakes, as ``placement`` is."""
