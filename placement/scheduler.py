"""One placement call: filter -> score -> select -> reserve, over a ClusterState.

``Scheduler.place`` handles one demand and is what the trace simulator calls in its hot loop;
``schedule`` is the request-in / plan-out call the live runtime and tests use. Both run the same phases.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import registry
from .model import Assignment, Candidate, Demand, Explanation, Plan, PlacementRequest, Unplaced
from .policy import Policy
from .state import ClusterState


EXPLAIN_TOP = 16  # feasible candidates an explanation lists (best scores first; the others are counted)


@dataclass(frozen=True)
class Decision:
    demand: Demand
    node: int  # -1 when unplaced
    gpus: tuple[int, ...]
    unplaced: Unplaced | None = None
    explanation: Explanation | None = None


def filter_nodes(state: ClusterState, d: Demand) -> np.ndarray:
    """Phase 1: indices of the nodes that can hold ``d`` now."""
    return np.flatnonzero(state.feasible(d))


def select_node(state: ClusterState, nodes: np.ndarray, scores: np.ndarray) -> int:
    """Phase 3: the highest score; ties go to the lowest rank (a per-run random permutation)."""
    scores = np.asarray(scores)
    best = scores.max()
    tied = nodes[scores == best]
    return int(tied[np.argmin(state.rank[tied])]) if len(tied) > 1 else int(tied[0])


class Scheduler:
    def __init__(self, state: ClusterState, policy: Policy) -> None:
        self.state = state
        self.policy = policy

    def place(self, d: Demand, explain: bool = False, bind: bool = True, reasons: bool = True) -> Decision:
        """Place one demand. ``reasons=False`` skips wording why a demand is unplaced (the simulator's
        hot loop drops failed pods without reading why)."""
        st, pol = self.state, self.policy
        nodes = filter_nodes(st, d)
        if len(nodes) == 0:
            never = not st.could_ever_fit(d) if reasons or explain else False
            reason = self._why_not(d, never) if reasons or explain else "does not fit"
            expl = Explanation(d.id, pol.name, (), st.rejections(d), None, reason) if explain else None
            return Decision(d, -1, (), Unplaced(d.id, reason, never), expl)
        scores = None
        if len(nodes) == 1 and not explain:
            node = int(nodes[0])  # one feasible node: taken without scoring, as the k8s scheduler does
        else:
            scores = pol.score(st, d, nodes)
            node = select_node(st, nodes, scores)
        gpus = pol.select_gpus(st, node, d)
        expl = self._explain(d, nodes, node, gpus, scores) if explain else None
        if bind:
            st.bind(node, gpus, d)
        return Decision(d, node, gpus, None, expl)

    def _why_not(self, d: Demand, never: bool) -> str:
        st = self.state
        if never and d.gpu_types and not (st.type_mask(d.gpu_types) & st.alive).any():
            return (f"no node has a GPU of model {' or '.join(d.gpu_types)} for {describe(d)}; the cluster's "
                    f"models are {', '.join(st.model_names)}. Fix the gpu_types, or add such a node.")
        if never:
            big = largest_gpu(st)
            return (f"no node could ever hold {describe(d)}; the largest is {big}. "
                    "Ask for less, or add a node that has it.")
        rej = st.rejections(d)
        why = "; ".join(f"{n} node(s): {r}" for r, n in rej.items())
        return f"no node can hold {describe(d)} now ({why}); it may fit once running work finishes"

    def _explain(self, d: Demand, nodes: np.ndarray, node: int, gpus: tuple[int, ...], scores) -> Explanation:
        """``scores``: the policy's scores of ``nodes`` that chose ``node`` (before it was bound). Terms are
        computed over every feasible node (a term may depend on the others, as ties do), but only the
        ``EXPLAIN_TOP`` best-scored become candidates in the record, the winner always among them; the
        rest are counted (``Explanation.more``): at a thousand nodes, a candidate per node cost more than
        the placement."""
        st, pol = self.state, self.policy
        total = np.asarray(scores, dtype=float)
        terms = pol.terms(st, d, nodes, scores=total)
        keep = range(len(nodes))
        if len(nodes) > EXPLAIN_TOP:
            order = np.argsort(-total, kind="stable")[:EXPLAIN_TOP]
            won = int(np.flatnonzero(nodes == node)[0])
            keep = sorted(set(order.tolist()) | {won})
        cands = []
        for k in keep:
            i = nodes[k]
            g = gpus if int(i) == node else ()
            cands.append(Candidate(st.names[i], float(total[k]), {t: float(v[k]) for t, v in terms.items()}, g))
        n_best = int((total == total.max()).sum())
        reason = (f"highest {pol.name} score {total.max():.4g}"
                  + (f", tie among {n_best} broken by node rank" if n_best > 1 else "")
                  if len(nodes) > 1 else "the only feasible node")
        return Explanation(d.id, pol.name, tuple(cands), st.rejections(d), st.names[node], reason,
                           more=len(nodes) - len(cands))


def describe(d: Demand) -> str:
    parts = []
    if d.num_gpus:
        share = f"{d.gpu_milli / 1000:g} GPU" if d.gpu_milli else "GPU"
        parts.append(f"{d.num_gpus} x {share}" + (f" with {d.gpu_memory_mib} MiB" if d.gpu_memory_mib else ""))
        if d.gpu_types:
            parts.append(f"of model {'|'.join(d.gpu_types)}")
    if d.cpu_milli:
        parts.append(f"{d.cpu_milli / 1000:g} CPU")
    if d.memory_mib:
        parts.append(f"{d.memory_mib} MiB memory")
    return f"{d.id!r} ({', '.join(parts) or 'nothing'})"


def largest_gpu(st: ClusterState) -> str:
    """The biggest GPU and node of the live cluster, in words, for 'can never fit' errors."""
    if not st.n:
        return "nothing: the cluster has no nodes"
    alive = np.flatnonzero(st.alive)
    if len(alive) == 0:
        return "nothing: no node is alive"
    mem = np.where(st.real, st.gmem_cap, 0)[alive]
    i, g = np.unravel_index(np.argmax(mem), mem.shape)
    node = int(alive[i])
    gm = int(mem[i, g])
    mem_txt = "untracked memory" if gm >= (1 << 40) else f"{gm} MiB"
    most = alive[np.argmax(st.gpu_count[alive])]
    return (f"GPU {g} on {st.names[node]} ({st.model_names[st.model[node]]}, {mem_txt}); the most GPUs on "
            f"one node is {st.gpu_count[most]} ({st.names[most]}), the most CPU {st.cpu_cap[alive].max() / 1000:g}")


def schedule(request: PlacementRequest, policy: str | Policy = registry.DEFAULT_POLICY) -> Plan:
    """Request in, plan out. Demands go in priority order (higher first), then in the given order.

    Nothing raises for a demand that does not fit: it is returned in ``Plan.unplaced`` with a reason.
    """
    pol = registry.create(policy) if isinstance(policy, str) else policy
    state = ClusterState.from_snapshot(request.snapshot)
    pol.prepare(state, request.demands)
    sched = Scheduler(state, pol)
    order = sorted(range(len(request.demands)), key=lambda i: (-request.demands[i].priority, i))
    assigned, unplaced, expls = [], [], []
    for i in order:
        dec = sched.place(request.demands[i], explain=request.explain)
        if dec.unplaced:
            unplaced.append(dec.unplaced)
        else:
            assigned.append(Assignment(dec.demand.id, state.names[dec.node], dec.node, dec.gpus))
        if dec.explanation:
            expls.append(dec.explanation)
    return Plan(tuple(assigned), tuple(unplaced), tuple(expls))
