"""``fgd``: Fragmentation Gradient Descent (Weng et al., ATC '23; the FGD paper's 06).

Place where the node's fragmentation (``placement.frag``) grows least. The score is the published
``int(100 * sigmoid((Frag_before - Frag_after) / 1000))``: the /1000 and the truncation make many nodes
tie, and ties go to the node rank, exactly as in the paper's simulator. A share is tried on every GPU it
fits on; the node scores its best GPU, and that GPU is the one bound (lowest index on ties).

Scores are cached per demand shape and recomputed only for nodes whose state changed since.
"""
from __future__ import annotations

import numpy as np

from ..frag import TargetWorkload, fragmentation, typical_workload
from ..model import GPU_MILLI
from ..policy import Policy
from ..registry import register


class FragScorer:
    """Frag before/after placing a demand shape, per node, cached by node version."""

    def __init__(self, state, tw: TargetWorkload) -> None:
        self.state, self.tw = state, tw
        self.type_ok = tw.type_ok(state.model_names)
        self._frag = np.zeros(state.n)
        self._frag_ver = np.full(state.n, -1, dtype=np.int64)

    def frag_now(self, rows: np.ndarray) -> np.ndarray:
        st = self.state
        stale = rows[self._frag_ver[rows] != st.version[rows]]
        if len(stale):
            self._frag[stale] = fragmentation(self.tw, self.type_ok, st.cpu_left[stale], st.free[stale],
                                              st.model[stale])
            self._frag_ver[stale] = st.version[stale]
        return self._frag[rows]

    def after(self, d, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(Frag after placing ``d``, best GPU) per row; for a share, per row its best GPU's value."""
        st = self.state
        cpu = st.cpu_left[rows] - d.cpu_milli
        free = st.free[rows]
        if d.num_gpus == 1 and d.gpu_share < GPU_MILLI:
            fit = st.gpu_fit(d, rows)  # [M, G]: each fitting GPU is one hypothetical placement
            G = free.shape[1]
            hyp = np.repeat(free[:, None, :], G, axis=1)  # [M, i, G]
            hyp[:, np.arange(G), np.arange(G)] -= d.gpu_share
            new = fragmentation(self.tw, self.type_ok, np.repeat(cpu[:, None], G, 1), hyp,
                                np.repeat(st.model[rows][:, None], G, 1))
            return new, fit
        hyp = free.copy()
        if d.num_gpus:
            fit = st.gpu_fit(d, rows)
            take = fit & (np.cumsum(fit, axis=1) <= d.num_gpus)  # whole GPUs: the first fitting ones
            hyp[take] -= d.gpu_share
        new = fragmentation(self.tw, self.type_ok, cpu, hyp, st.model[rows])
        return new, None


def sigmoid_score(delta: np.ndarray) -> np.ndarray:
    """The published FGD score of a fragmentation decrease ``delta`` (milli-GPU): 0..100, truncated."""
    return ((1.0 / (1.0 + np.exp(-delta / 1000.0))) * 100).astype(np.int64)


@register
class FgdPolicy(Policy):
    name = "fgd"
    description = "least growth of fragmentation against the typical workload (FGD, ATC '23)"

    def __init__(self, rng=None, workload=None, cost=None) -> None:
        super().__init__(rng, cost)
        self._workload = workload
        self._seen = ()
        self._scorer: FragScorer | None = None
        self._cache: dict[tuple, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def prepare(self, state, workload=()) -> None:
        self._seen = workload  # kept: a later, different state is prepared with the same workload
        tw = typical_workload(self._workload if self._workload is not None else workload)
        self._scorer = FragScorer(state, tw)
        self._cache = {}

    def _scorer_for(self, state) -> FragScorer:
        if self._scorer is None or self._scorer.state is not state:
            self.prepare(state, self._seen)
        return self._scorer

    def _ensure(self, state, d, rows):
        """Score and best GPU of ``d``'s shape on ``rows``, recomputing only nodes that changed."""
        sc = self._scorer_for(state)
        entry = self._cache.get(d.shape)
        if entry is None:
            entry = (np.zeros(state.n, np.int64), np.zeros(state.n, np.int64), np.full(state.n, -1, np.int64))
            self._cache[d.shape] = entry
        score, gpu, ver = entry
        stale = rows[ver[rows] != state.version[rows]]
        if len(stale):
            s, g = self.compute(sc, d, stale)
            score[stale], gpu[stale], ver[stale] = s, g, state.version[stale]
        return score[rows], gpu[rows]

    def compute(self, sc: FragScorer, d, rows):
        """Published FGD scores (and the best GPU for a share) on ``rows``."""
        old = sc.frag_now(rows)
        new, fit = sc.after(d, rows)
        if fit is None:
            return sigmoid_score(old - new), np.full(len(rows), -1)
        s = np.where(fit, sigmoid_score(old[:, None] - new), -1)
        return s.max(axis=1), s.argmax(axis=1)

    def score(self, state, d, nodes):
        return self._ensure(state, d, nodes)[0]

    def terms(self, state, d, nodes, scores=None):
        sc = self._scorer_for(state)
        old = sc.frag_now(nodes)
        s, g = self._ensure(state, d, nodes)
        new, fit = sc.after(d, nodes)
        if fit is not None:
            new = new[np.arange(len(nodes)), np.maximum(g, 0)]
        return {"frag_before": old, "frag_after": new, "score": s.astype(float)}

    def select_gpus(self, state, node, d):
        if d.num_gpus == 1 and d.gpu_share < GPU_MILLI:
            _, g = self._ensure(state, d, np.array([node]))
            return (int(g[0]),)
        return super().select_gpus(state, node, d)
