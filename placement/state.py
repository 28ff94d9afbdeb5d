"""ClusterState: the mutable, vectorised view of a snapshot that policies score and the scheduler binds.

One row per node; GPU columns padded to the widest node with ``free = -1`` (a padding GPU never fits).
Every bind bumps the node's ``version`` so that policies can cache per-node results and recompute only
nodes that changed since.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from .cost import slowdown
from .model import GPU_MILLI, Demand, NodeSpec, Snapshot

UNTRACKED_MEM = np.int64(1) << 40  # GPU memory of a GPU whose memory is not tracked
MAX_SIDE_BY_SIDE = 8  # at most this many packed demands run on one GPU at once (the runtime's default
#                       max_slots_per_gpu; ``ClusterState.max_side_by_side`` may be set to the session's)
NO_HOLD = np.iinfo(np.int64).min  # ``ClusterState.held`` of a node held for nothing
MAX_TAG = 9  # GpuClustering tags: 0 = sharing, k = whole k-GPU demand (k <= 8)


def node_model(n: NodeSpec) -> str:
    """A node's GPU model: its GPUs' one model, or the models it mixes joined by ``|`` (``none``: no GPU)."""
    kinds = {g.model for g in n.gpus}
    return n.gpus[0].model if len(kinds) == 1 else ("|".join(sorted(kinds)) or "none")


def tag_of(d: Demand) -> int:
    """The demand's kind for per-node counts (GpuClustering): 0 = a share, k = a whole k-GPU demand."""
    return 0 if d.gpu_share < GPU_MILLI else min(d.num_gpus, MAX_TAG - 1)


class ClusterState:
    def __init__(
        self,
        names: Sequence[str],
        cpu: np.ndarray,
        mem: np.ndarray,
        gpu_count: np.ndarray,
        models: Sequence[str],
        *,
        gpu_mem: np.ndarray | None = None,
        rank: np.ndarray | None = None,
    ) -> None:
        self.names = list(names)
        n = len(self.names)
        self.n = n
        self.cpu_cap = np.asarray(cpu, dtype=np.int64).copy()
        self.mem_cap = np.asarray(mem, dtype=np.int64).copy()
        self.cpu_left = self.cpu_cap.copy()
        self.mem_left = self.mem_cap.copy()
        self.gpu_count = np.asarray(gpu_count, dtype=np.int64).copy()
        self.width = int(self.gpu_count.max()) if n else 0
        cols = np.arange(max(self.width, 1))
        real = cols[None, :] < self.gpu_count[:, None]
        self.real = real
        self.free = np.where(real, GPU_MILLI, -1).astype(np.int64)
        if gpu_mem is None:
            self.gmem_cap = np.where(real, UNTRACKED_MEM, 0).astype(np.int64)
        else:
            self.gmem_cap = np.where(real, np.asarray(gpu_mem, dtype=np.int64), 0)
        self.gmem_free = self.gmem_cap.copy()
        self.model_names = sorted(set(models))
        self._model_index = {m: i for i, m in enumerate(self.model_names)}
        self.model = np.array([self._model_index[m] for m in models], dtype=np.int64)
        self.load = np.zeros(self.free.shape, dtype=np.float64)  # live utilisation 0..1 per GPU
        self.external = np.zeros(self.free.shape, dtype=np.int64)  # processes outside fastgpu
        self.busy = np.zeros(self.free.shape, dtype=np.float64)  # seconds until a GPU takes new work
        self.max_side_by_side = MAX_SIDE_BY_SIDE
        self.has_live = False  # any live figure (load, busy) present: the live terms matter
        self.alive = np.ones(n, dtype=bool)
        self.held = np.full(n, NO_HOLD, dtype=np.int64)  # per node: held for a waiting demand of this priority
        self.holding = False  # any node held
        self.pods = np.zeros(n, dtype=np.int64)
        self.tags = np.zeros((n, MAX_TAG), dtype=np.int64)
        self.version = np.zeros(n, dtype=np.int64)
        self.rank = np.arange(n, dtype=np.int64) if rank is None else np.asarray(rank, dtype=np.int64)
        self._type_masks: dict[tuple[str, ...], np.ndarray] = {}
        self._rows: dict[str, int] | None = None  # node name -> row (``per_node``), built when first asked
        self.F = np.zeros(n, dtype=np.int64)  # total free milli
        self.max_free = np.zeros(n, dtype=np.int64)
        self.nfull = np.zeros(n, dtype=np.int64)  # fully free GPUs
        self._refresh(np.arange(n))

    # ----------------------------------------------------------------------------------- building
    @classmethod
    def from_snapshot(cls, snap: Snapshot) -> "ClusterState":
        nodes = snap.nodes
        width = max((len(n.gpus) for n in nodes), default=0)
        st = cls(
            [n.name for n in nodes],
            np.array([n.cpu_milli for n in nodes]),
            np.array([n.memory_mib for n in nodes]),
            np.array([len(n.gpus) for n in nodes]),
            [node_model(n) for n in nodes],
            gpu_mem=np.full((len(nodes), max(width, 1)), UNTRACKED_MEM, dtype=np.int64),
            rank=None if snap.rank is None else np.array(snap.rank),
        )
        for i, n in enumerate(nodes):
            st.set_node(i, n, refresh=False)
        st.has_live = bool(st.load.any() or st.busy.any())
        st._refresh(np.arange(st.n))
        return st

    def takes(self, i: int, spec: NodeSpec) -> bool:
        """Whether ``set_node(i, spec)`` leaves this state as ``from_snapshot`` would build it: same name,
        as many GPUs, the same GPU model (a model or GPU count that changed can change the state's model
        list or its padded width: rebuild it)."""
        return (i < self.n and self.names[i] == spec.name and len(spec.gpus) == self.gpu_count[i]
                and self._model_index.get(node_model(spec)) == self.model[i])

    def set_node(self, i: int, spec: NodeSpec, refresh: bool = True) -> None:
        """Write row ``i`` (capacities, what is used, live load, busy seconds) from ``spec``, as
        ``from_snapshot`` builds it (``takes`` must hold). Per-round marks (holds, binds' pod counts) stay."""
        k = len(spec.gpus)
        self.cpu_cap[i] = spec.cpu_milli
        self.mem_cap[i] = spec.memory_mib
        self.cpu_left[i] = spec.cpu_milli - spec.cpu_used
        self.mem_left[i] = spec.memory_mib - spec.memory_used_mib
        self.alive[i] = spec.alive
        self.gpu_count[i] = k
        self.model[i] = self._model_index[node_model(spec)]
        self.real[i] = np.arange(self.real.shape[1]) < k
        self.free[i], self.gmem_cap[i], self.gmem_free[i] = -1, 0, 0
        self.load[i], self.external[i], self.busy[i] = 0.0, 0, 0.0
        for j, g in enumerate(spec.gpus):
            self.free[i, j] = GPU_MILLI - g.milli_used
            self.gmem_cap[i, j] = g.memory_mib if g.memory_mib > 0 else UNTRACKED_MEM
            self.gmem_free[i, j] = g.memory_free_mib if g.memory_mib > 0 else UNTRACKED_MEM
            self.load[i, j] = g.util or 0.0
            self.external[i, j] = g.external_processes
            self.busy[i, j] = g.busy_s
        self.version[i] += 1
        if refresh:
            self._refresh(i)

    def copy(self) -> "ClusterState":
        """An independent copy (binds on it leave this one as it was): what a round places on, when the
        state itself is kept between rounds and updated row by row."""
        out = object.__new__(ClusterState)
        out.__dict__.update({k: v.copy() if isinstance(v, np.ndarray) else v for k, v in self.__dict__.items()})
        out.names, out._type_masks = list(self.names), dict(self._type_masks)
        return out

    def _refresh(self, rows: np.ndarray | int) -> None:
        """Recompute the per-node summaries (total free, largest free, fully free count) of ``rows``."""
        f = self.free[rows]
        self.F[rows] = np.maximum(f, 0).sum(axis=-1)
        self.max_free[rows] = f.max(axis=-1)
        self.nfull[rows] = (f == GPU_MILLI).sum(axis=-1)

    def per_node(self, by_name: Mapping[str, float]) -> np.ndarray:
        """``by_name`` (node name -> value; names not in this state ignored) as one value per row, 0 elsewhere."""
        out = np.zeros(self.n, dtype=np.float64)
        if by_name:
            if self._rows is None:
                self._rows = {name: i for i, name in enumerate(self.names)}
            for name, v in by_name.items():
                i = self._rows.get(name)
                if i is not None:
                    out[i] = v
        return out

    # -------------------------------------------------------------------------------- feasibility
    def type_mask(self, types: tuple[str, ...]) -> np.ndarray:
        m = self._type_masks.get(types)
        if m is None:
            ids = [i for i, name in enumerate(self.model_names) if name in types]
            m = np.isin(self.model, ids)
            self._type_masks[types] = m
        return m

    def gpu_fit(self, d: Demand, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Per-GPU fit for ``d`` on the given rows: share and memory both fit."""
        fit = self.free[rows] >= max(d.gpu_share, 1)  # padding GPUs (-1) never fit
        if d.gpu_memory_mib:
            fit &= self.gmem_free[rows] >= d.gpu_memory_mib
        return fit

    def feasible(self, d: Demand) -> np.ndarray:
        """Boolean mask of nodes that can hold ``d`` now."""
        ok = (self.cpu_left >= d.cpu_milli) & (self.mem_left >= d.memory_mib) & self.alive
        if self.holding:
            ok &= self.held < d.priority
        if d.num_gpus:
            if d.gpu_types:
                ok &= self.type_mask(d.gpu_types)
            if d.gpu_memory_mib:
                ok &= self.gpu_fit(d).sum(axis=1) >= d.num_gpus
            elif d.num_gpus == 1:
                ok &= self.max_free >= d.gpu_share
            else:
                ok &= (self.nfull if d.gpu_share == GPU_MILLI else (self.free >= d.gpu_share).sum(1)) >= d.num_gpus
        return ok

    def rejections(self, d: Demand) -> dict[str, int]:
        """Why nodes fail ``d`` (first failing check per node), for explanations and error messages."""
        out: dict[str, int] = {}
        left = self.alive.copy()
        out_dead = int((~self.alive).sum())
        if out_dead:
            out["node is down"] = out_dead
        checks = [
            ("held for a waiting multi-GPU demand of its priority or above", self.held < d.priority),
            (f"fewer than {d.cpu_milli} milli-CPU free", self.cpu_left >= d.cpu_milli),
            (f"less than {d.memory_mib} MiB memory free", self.mem_left >= d.memory_mib),
        ]
        if d.num_gpus:
            if d.gpu_types:
                checks.append((f"GPU model not in {list(d.gpu_types)}", self.type_mask(d.gpu_types)))
            need = " and ".join(x for x in (f"{d.gpu_milli} milli" if d.gpu_milli else "",
                                              f"{d.gpu_memory_mib} MiB" if d.gpu_memory_mib else "") if x)
            checks.append((f"fewer than {d.num_gpus} GPU(s) with {need or 'a whole GPU'} free",
                           self.gpu_fit(d).sum(axis=1) >= d.num_gpus))
        for why, mask in checks:
            bad = left & ~mask
            if bad.any():
                out[why] = int(bad.sum())
            left &= mask
        return out

    def could_ever_fit(self, d: Demand) -> bool:
        """Would ``d`` fit on some live node if that node were empty? False means: fail at once."""
        ok = (self.cpu_cap >= d.cpu_milli) & (self.mem_cap >= d.memory_mib) & self.alive
        if d.num_gpus:
            if d.gpu_types:
                ok &= self.type_mask(d.gpu_types)
            fit = self.real & (self.gmem_cap >= d.gpu_memory_mib)
            ok &= fit.sum(axis=1) >= d.num_gpus
        return bool(ok.any())

    # ----------------------------------------------------------------------------------- holds
    def hold_for(self, d: Demand) -> int:
        """Hold, for ``d`` (a demand that does not fit now), the live node nearest to holding it: not held
        already, able to hold ``d`` were it empty, with the most of what ``d`` needs free (whole GPUs, or the
        largest share), then the most CPU free, then the lowest rank. Returns the node, or -1 (none)."""
        ok = (self.cpu_cap >= d.cpu_milli) & (self.mem_cap >= d.memory_mib) & self.alive & (self.held == NO_HOLD)
        if d.gpu_types:
            ok &= self.type_mask(d.gpu_types)
        ok &= (self.real & (self.gmem_cap >= d.gpu_memory_mib)).sum(axis=1) >= d.num_gpus
        rows = np.flatnonzero(ok)
        if not len(rows):
            return -1
        have = self.nfull[rows] if d.gpu_share >= GPU_MILLI else self.max_free[rows]
        node = int(rows[np.lexsort((self.rank[rows], -self.cpu_left[rows], -have))[0]])
        self.hold(node, d.priority)
        return node

    def hold(self, node: int, priority: int) -> None:
        """Until ``unhold``, only demands of a priority above ``priority`` are placed on ``node`` (``feasible``):
        what frees there gathers for the demand it is held for."""
        self.held[node] = priority
        self.holding = True

    def unhold(self, node: int) -> None:
        self.held[node] = NO_HOLD
        self.holding = bool((self.held != NO_HOLD).any())

    # ----------------------------------------------------------------------------- reserve / bind
    def bind(self, node: int, gpus: Sequence[int], d: Demand, sign: int = 1) -> None:
        """Reserve (sign=+1) or release (sign=-1) ``d`` on ``node`` and GPU indices ``gpus``."""
        self.cpu_left[node] -= sign * d.cpu_milli
        self.mem_left[node] -= sign * d.memory_mib
        self.pods[node] += sign
        for g in gpus:
            self.free[node, g] -= sign * d.gpu_share
            self.gmem_free[node, g] -= sign * d.gpu_memory_mib
        if d.num_gpus:
            self.tags[node, tag_of(d)] += sign
        self.version[node] += 1
        self._refresh(node)

    def unbind(self, node: int, gpus: Sequence[int], d: Demand) -> None:
        self.bind(node, gpus, d, sign=-1)

    def queue_behind(self, node: int, gpus: Sequence[int], d: Demand) -> None:
        """``d`` (bound on ``gpus``) will wait for their running work instead of holding them now: unbind
        it and push each GPU's wait back by its compute time there, so the next demand of the same round
        weighs waiting behind it too (the live runtime's queue, projected into one round's state)."""
        self.unbind(node, gpus, d)
        self.add_wait(node, gpus, d)

    def add_wait(self, node: int, gpus: Sequence[int], d: Demand) -> None:
        """Push each GPU's wait back by ``d``'s compute time there (``d`` is queued there, not bound),
        divided by how many like it the GPU runs at once (``side_by_side``): on a GPU packed five at a
        time, five queued subtasks delay the next by one run, not five."""
        for g in gpus:
            self.busy[node, g] += d.work_s * slowdown(self.load[node, g]) / self.side_by_side(node, g, d)
        self.version[node] += 1
        self.has_live = True

    def side_by_side(self, node: int, g: int, d: Demand) -> int:
        """How many demands like ``d`` GPU ``g`` of ``node`` runs at once: a share packs 1000 // share, a
        memory slice as many as its memory holds, both at most ``max_side_by_side``; a whole GPU, a
        multi-GPU demand or memory-only demands on a GPU whose memory is not tracked: one."""
        if d.num_gpus != 1:
            return 1
        k = min(GPU_MILLI // max(d.gpu_share, 1), self.max_side_by_side)
        if d.gpu_memory_mib > 0:
            cap = int(self.gmem_cap[node, g])
            k = min(k, cap // d.gpu_memory_mib) if cap < UNTRACKED_MEM else (k if d.gpu_milli > 0 else 1)
        return max(1, k)

    # ------------------------------------------------------------------------------------ metrics
    def allocated_milli(self) -> int:
        return int((self.gpu_count * GPU_MILLI).sum() - self.F.sum())

    def capacity_milli(self) -> int:
        return int(self.gpu_count.sum() * GPU_MILLI)
