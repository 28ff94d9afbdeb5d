"""``fastgpu.status()``: one row per node and GPU, and the table ``fastgpu status`` prints."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuStatus:
    node: str
    gpu: int
    model: str
    emulated: bool
    util: float | None
    memory_used_mib: int | None
    memory_total_mib: int
    memory_reserved_mib: int
    external_processes: int
    fastgpu_running: int
    held: bool  # a fastgpu worker holds this GPU in Ray
    temperature_c: float | None = None
    power_w: float | None = None


@dataclass(frozen=True)
class ClusterStatus:
    gpus: tuple[GpuStatus, ...]
    queue_length: int
    nodes_alive: int
    placed: int = 0
    finished: int = 0
    failed: int = 0
    jobs: tuple = ()  # ``share_book.JobShare`` per job (driver) on the cluster, from the arbiter
    waiting: int = 0  # subtasks in the lobby, waiting for a node to be launched
    waiting_for: str = ""  # what the first of them waits for
    autoscaler: str = ""  # the autoscaler as the arbiter reads it, and what fastgpu asks it for

    @property
    def emulated(self) -> bool:
        return any(g.emulated for g in self.gpus)

    def format(self) -> str:
        head = (f"{'node':<14}{'gpu':>4}  {'model':<14}{'util':>6}  {'memory used/total':>20}  {'reserved':>9}"
                f"{'ext.proc':>9}{'fastgpu':>8}{'held':>6}{'temp':>6}{'power':>7}")
        lines = [head, "-" * len(head)]
        for g in self.gpus:
            util = "-" if g.util is None else f"{g.util * 100:.0f}%"
            used = "-" if g.memory_used_mib is None else f"{g.memory_used_mib}"
            total = f"{g.memory_total_mib}" if g.memory_total_mib else "?"
            model = (g.model + "*") if g.emulated else g.model
            lines.append(
                f"{g.node[:12]:<14}{g.gpu:>4}  {model[:13]:<14}{util:>6}  {used + ' / ' + total + ' MiB':>20}  "
                f"{g.memory_reserved_mib:>5} MiB{g.external_processes:>9}{g.fastgpu_running:>8}"
                f"{'yes' if g.held else 'no':>6}"
                f"{'-' if g.temperature_c is None else f'{g.temperature_c:.0f}C':>6}"
                f"{'-' if g.power_w is None else f'{g.power_w:.0f}W':>7}")
        lines.append(f"queue: {self.queue_length} subtask(s) waiting; {self.nodes_alive} node(s) alive; "
                     f"placed {self.placed}, finished {self.finished}, failed {self.failed}")
        if self.waiting:
            lines.append(f"waiting for a node: {self.waiting} subtask(s); the first: {self.waiting_for}")
        if self.autoscaler:
            lines.append(f"autoscaler: {self.autoscaler}")
        if self.jobs:
            lines.append("jobs sharing the GPUs (fair share by weight; priorities order work inside a job only):")
            lines.append(f"  {'job':<10}{'ray job':<10}{'weight':>7}{'share':>7}{'held':>6}{'starting':>9}{'running':>9}{'queued':>8}")
            for j in self.jobs:
                lines.append(f"  {j.job[:9]:<10}{j.ray_job[:9]:<10}{j.weight:>7g}{j.share_gpus:>7.2f}{j.held:>6}"
                             f"{j.claiming:>9}{j.running:>9}{j.queued:>8}")
        if self.emulated:
            lines.append("* EMULATED GPU (no NVML on that node): memory size and load are set by fastgpu, "
                         "not measured")
        return "\n".join(lines)
