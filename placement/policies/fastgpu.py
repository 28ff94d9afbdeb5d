"""``fastgpu``: the default policy. Three objectives, compared lexicographically:

1. ``finish_s``: the estimated finish time of the demand on the node's best GPU (``placement.cost``):
   wait until the GPU is free + move the inputs not already on the node + compute at the GPU's live
   load. Times within ``resolution`` (5 %, at least 10 ms) of the best count as equal. In the trace
   simulator there is no load, no wait and no data, so every node ties here.
2. ``move_bytes``: among finishes that count as equal, the node that moves less of the input (in
   tenths); a move that gains nothing measurable still loads the network.
3. ``pack``: FGD's integer fragmentation score against ``placement.packing.packing_workload`` (the
   typical shapes plus every whole multi-GPU shape); among the nodes it ties, the least growth of
   CPU-stranded GPU milli, then the GPU model least needed by model-restricted demands, then the least
   loss of multi-GPU hosting capability (``placement.packing.tie_key``); a share goes to the fullest of
   the GPUs that tie on the node. See docs/design-fastgpu-policy.md.
"""
from __future__ import annotations

import numpy as np

from ..cost import CostModel
from ..durations import UNKNOWN_WORK_S
from ..model import GPU_MILLI
from ..packing import (capability_loss, cpu_per_gpu_milli, model_pressure, packing_workload, stranding_growth,
                       tie_key, whole_targets)
from ..registry import register
from .fgd import FgdPolicy, FragScorer, sigmoid_score

RESOLUTION = 0.05
MIN_RESOLUTION_S = 0.01
TIE_SPAN = 0.9  # the tie-break adds at most this to an integer FGD score, so it never overrides one


def resolution(best_s: float) -> float:
    """Finish times closer than this to the best count as equal (estimates are not more precise)."""
    return max(best_s * RESOLUTION, MIN_RESOLUTION_S)


@register
class FastGpuPolicy(FgdPolicy):
    name = "fastgpu"
    description = "earliest estimated finish (wait + transfer + compute at live load), then least fragmentation"

    def __init__(self, rng=None, workload=None, cost: CostModel | None = None) -> None:
        super().__init__(rng, workload, cost)
        self.cpu_per_milli = 0.0
        self.pressure = np.zeros(0)
        self.whole = None
        self._scored = None  # (demand, nodes, pack, finish terms, (state, versions)) of the last ``score``

    # ------------------------------------------------------------------------------------- packing
    def prepare(self, state, workload=()) -> None:
        demands = self._workload if self._workload is not None else workload
        self._scorer = FragScorer(state, packing_workload(demands))
        self._cache = {}
        self.cpu_per_milli = cpu_per_gpu_milli(demands, state.cpu_cap, state.gpu_count)
        self.pressure = model_pressure(state, demands)
        self.whole = whole_targets(self._scorer.tw, self._scorer.type_ok)

    def compute(self, sc, d, rows):
        """FGD's integer score per row; a share's GPU: best score, then the least free (fullest) GPU."""
        old = sc.frag_now(rows)
        new, fit = sc.after(d, rows)
        if fit is None:
            return sigmoid_score(old - new), np.full(len(rows), -1)
        s = np.where(fit, sigmoid_score(old[:, None] - new), -1)
        left = sc.state.free[rows] - d.gpu_share  # in [0, 1000) where it fits
        g = np.where(fit, s - left / (2.0 * GPU_MILLI), -np.inf).argmax(axis=1)
        return s[np.arange(len(rows)), g], g

    def pack_score(self, state, d, nodes) -> np.ndarray:
        """FGD's integer score; its top ties ordered by ``tie_key`` (a fraction below 1 added)."""
        s = FgdPolicy.score(self, state, d, nodes)
        out = s.astype(float)
        top = s == s.max()
        if top.sum() > 1:
            nt = nodes[top]
            key = tie_key(stranding_growth(state, d, nt, self.cpu_per_milli),
                          self.pressure[state.model[nt]],
                          capability_loss(state, d, nt, self._ensure(state, d, nt)[1], self.whole))
            lo, hi = key.min(), key.max()
            if hi > lo:
                out[top] += TIE_SPAN * (key - lo) / (hi - lo)
        return out

    def finish_terms(self, state, d, nodes) -> dict[str, np.ndarray]:
        """Per node: seconds to wait, bytes to move, seconds to move them, seconds to compute, on the
        node's best GPU(s) for ``d``: the one with the earliest ``wait + compute at load`` (a gang: the
        slowest of its best ``num_gpus``). All through ``CostModel``, the single objective."""
        rows = np.arange(len(nodes))
        work = self._work(d)
        if d.num_gpus:
            fit = state.gpu_fit(d, nodes)
            busy, load = state.busy[nodes], state.load[nodes]
            per_gpu = np.where(fit, self.cost.finish_s(busy, 0.0, work, load, d.work_tail_s), np.inf)
            g = np.argsort(per_gpu, axis=1, kind="stable")[:, max(d.num_gpus, 1) - 1]
            wait, util = busy[rows, g], load[rows, g]
        else:
            wait = util = np.zeros(len(nodes))
        local = state.per_node(d.input_bytes)[nodes]
        move = np.maximum(d.input_total - local, 0.0)
        return {"wait_s": wait, "move_bytes": move, "move_s": self.cost.transfer_s(move),
                "compute_s": self.cost.compute_s(work, util, d.work_tail_s),
                "finish_s": self.cost.finish_s(wait, move, work, util, d.work_tail_s)}

    @staticmethod
    def _work(d) -> float:
        """The demand's compute seconds; unknown (0: neither declared nor learned, ``placement.durations``)
        is priced as ``UNKNOWN_WORK_S``, so that load still counts (a loaded GPU is slower for any work)."""
        return d.work_s if d.work_s > 0 else UNKNOWN_WORK_S

    def _live(self, state, d) -> bool:
        return state.has_live or d.input_total > 0 or d.work_s > 0

    def score(self, state, d, nodes):
        pack = self.pack_score(state, d, nodes)
        seen = (state, int(state.version[nodes].sum()))  # (a bind or a wait added since bumps a version)
        self._scored = (d, nodes, pack, None, seen)
        if not self._live(state, d):
            return pack
        t = self.finish_terms(state, d, nodes)
        self._scored = (d, nodes, pack, t, seen)
        finish = t["finish_s"]
        best = finish.min()
        tol = resolution(best)
        # Lexicographic: whole "finish buckets" dominate; within one, moving less data (in tenths of the
        # input) wins -- a move that changes nothing measurable still loads the network; then the
        # packing score (0..100) breaks ties.
        bucket = np.floor((finish - best) / tol)
        moved = np.floor(10 * t["move_bytes"] / d.input_total) if d.input_total else 0.0
        return -bucket * 10000.0 - moved * 200.0 + pack

    def select_gpus(self, state, node, d):
        """GPUs on the chosen node: among the GPUs whose estimated finish (wait + compute at live load) is
        within the resolution of the best, the packing choice. So a loaded or busy GPU is taken only
        when it finishes about as soon, and a queue of waiting subtasks spreads over a node's GPUs."""
        pick = super().select_gpus(state, node, d)
        if not d.num_gpus or not self._live(state, d):
            return pick
        fit = np.flatnonzero(state.gpu_fit(d, node))
        finish = self.cost.finish_s(state.busy[node, fit], 0.0, self._work(d), state.load[node, fit], d.work_tail_s)
        ok = fit[finish <= finish.min() + resolution(finish.min())]
        if set(pick) <= set(ok.tolist()):
            return pick
        if len(ok) < d.num_gpus:  # a gang: the GPUs that finish first
            return tuple(int(g) for g in fit[np.argsort(finish, kind="stable")[: d.num_gpus]])
        if d.gpu_share < GPU_MILLI and d.num_gpus == 1:  # a share: the fullest of them, as packing does
            ok = sorted(ok, key=lambda g: (state.free[node, g], state.gmem_free[node, g], g))
        return tuple(int(g) for g in ok[: d.num_gpus])

    def terms(self, state, d, nodes, scores=None):
        out = super().terms(state, d, nodes)  # (its "score" term is FGD's, a part of this policy's score)
        out["stranding_growth"] = stranding_growth(state, d, nodes, self.cpu_per_milli)
        out["capability_loss"] = capability_loss(state, d, nodes, self._ensure(state, d, nodes)[1], self.whole)
        out["model_pressure"] = self.pressure[state.model[nodes]]
        # Asked right after ``score`` on the same demand, node array and state, unchanged since (the
        # scheduler's explain, before it binds), the terms it computed are reused, not computed again.
        last = self._scored
        same = (last is not None and last[0] is d and last[1] is nodes and last[4][0] is state
                and last[4][1] == int(state.version[nodes].sum()))
        out["pack"] = last[2] if same else self.pack_score(state, d, nodes)
        if self._live(state, d):
            out.update(last[3] if same and last[3] is not None else self.finish_terms(state, d, nodes))
        return out
