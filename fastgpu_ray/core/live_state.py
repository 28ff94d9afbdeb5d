"""The placement state of the live cluster, kept between scheduling rounds (Ray-free).

A round used to rebuild the whole placement snapshot and its ``ClusterState`` from Ray's node list, the
monitors' readings and fastgpu's holds: 27 ms at the openb trace's 1,213 nodes (6,212 GPUs), however little had
changed. ``LiveState`` keeps one ``ClusterState`` and rewrites only the rows of nodes whose inputs changed
since the last round: Ray's ``NodeInfo``, the node's telemetry reading (a refresh replaces it; a node whose
reading is the same object is not rebuilt), fastgpu's holds on it (compared by value: holds are mutated in
place), and which of its GPUs show as busy (running work with a known estimated end). The seconds left on
busy GPUs change with the clock every round; they are written straight into the round's copy, not into
the kept rows. A changed node list (a node joined or left), or a node whose GPU model or GPU count
changed (the state's model list or padded width would differ), rebuilds it all.

``state()`` returns a copy, which the round binds on; the kept one stays as built. The result equals
``ClusterState.from_snapshot(build_snapshot(...))`` on the same inputs (``tests/test_live_state.py``).
"""
from __future__ import annotations

from typing import Mapping

from placement import ClusterState, Snapshot

from .telemetry import GpuHold, NodeInfo, NodeTelemetry, holds_by_node, node_spec


def _hold_key(mine: Mapping[int, GpuHold]) -> tuple:
    """What of a node's holds its row is built from, by value (holds change in place)."""
    return tuple(sorted((g, h.milli_used, h.memory_reserved_mib, h.at_cap, h.util_declared, h.claiming)
                        for g, h in mine.items()))


class LiveState:
    def __init__(self) -> None:
        self._state: ClusterState | None = None
        self._keys: list[tuple] = []
        self._index: dict[str, int] = {}
        self.rebuilt = 0  # rows rewritten (all of them on a full rebuild): what a round cost, for tests

    def state(self, nodes: list[NodeInfo], telemetry: Mapping[str, NodeTelemetry],
              holds: Mapping[tuple[str, int], GpuHold], busy: Mapping[tuple[str, int], float],
              max_side_by_side: int) -> ClusterState:
        """The round's ``ClusterState`` (a copy, to bind on) of ``nodes`` in the given order."""
        mine, late = holds_by_node(holds), holds_by_node(busy)

        def spec(n: NodeInfo, tel: NodeTelemetry | None):
            return node_spec(n, tel, mine.get(n.node_id, {}), late.get(n.node_id, {}))

        keys = [(n, telemetry.get(n.node_id), _hold_key(mine.get(n.node_id, {})),
                 frozenset(late.get(n.node_id, ()))) for n in nodes]
        st = self._state
        if st is None or len(keys) != len(self._keys):
            st = None
        else:
            changed = [i for i, (k, old) in enumerate(zip(keys, self._keys)) if not _same(k, old)]
            if 2 * len(changed) > len(keys):  # (most rows: one rebuild, without a check per row, is cheaper)
                st, changed = None, []
            for i in changed:
                row = spec(nodes[i], keys[i][1])
                if not st.takes(i, row):
                    st = None
                    break
                st.set_node(i, row)
            else:
                self.rebuilt += len(changed)
        if st is None:
            st = ClusterState.from_snapshot(Snapshot(tuple(spec(n, k[1]) for n, k in zip(nodes, keys))))
            self.rebuilt += len(nodes)
            self._index = {name: i for i, name in enumerate(st.names)}
        self._state, self._keys = st, keys
        out = st.copy()
        out.max_side_by_side = max_side_by_side
        for (node, g), left in busy.items():
            if node in self._index:  # (a node gone from Ray's list with work still booked on it: not shown)
                out.busy[self._index[node], g] = left
        out.has_live = bool(out.load.any() or out.busy.any())
        return out


def _same(a: tuple, b: tuple) -> bool:
    # The telemetry reading by identity first (a refresh that found nothing new keeps the object), then by
    # value; NodeInfo, holds and busy sets by value.
    return a[0] == b[0] and (a[1] is b[1] or a[1] == b[1]) and a[2] == b[2] and a[3] == b[3]
