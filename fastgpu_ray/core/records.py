"""Explain records of one dispatch core (Ray-free): what ``fastgpu.explain(ref)`` returns for a subtask, kept
for the last ``keep`` subtasks the core was given (the oldest are dropped: bounded memory in long sessions).
A record's history gains lines only on events (placement, retry, loss, cancellation), never per round."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Iterator

from placement import Explanation

KEEP_RECORDS = 20_000  # explain records per node scheduler (each ~2 KB with its explanations)


@dataclass
class Record:
    """What ``fastgpu.explain(ref)`` returns for one subtask."""

    id: str
    state: str = "queued"  # queued -> running -> finished | failed (back to queued on a retry)
    node: str | None = None
    gpus: tuple[int, ...] = ()
    policy: str = ""
    explanation: Explanation | None = None
    submitted: float = 0.0
    queued_s: float = 0.0
    run_s: float = 0.0
    retries: int = 0
    batch_size: int = 1
    history: list[str] = field(default_factory=list)
    error: str | None = None
    emulated: bool = False
    estimate: str = ""  # the duration estimate placement used, and its source
    node_choice: Explanation | None = None  # the driver's choice of node (every candidate node, score terms)

    def format(self) -> str:
        where = f"node {self.node} GPU {list(self.gpus)}" if self.node else "not placed"
        lines = [f"subtask {self.id}: {self.state}, {where}" + (" (EMULATED GPU)" if self.emulated else ""),
                 f"  policy={self.policy} queued {self.queued_s:.3f}s, ran {self.run_s:.3f}s, "
                 f"retries={self.retries}, batch of {self.batch_size}"]
        if self.estimate:
            lines.append(f"  duration estimate: {self.estimate}")
        lines += [f"  history: {h}" for h in self.history]
        if self.error:
            lines.append(f"  error: {self.error}")
        if self.node_choice:
            lines.append("  node choice: " + self.node_choice.format().replace("\n", "\n  "))
        if self.explanation:
            lines.append("  GPU choice: " + self.explanation.format().replace("\n", "\n  "))
        return "\n".join(lines)


ENDED = ("finished", "failed", "cancelled")


class RecordBook:
    """The records of the last ``keep`` subtasks, by subtask id (a subtask given again replaces its record
    and counts as the newest)."""

    def __init__(self, keep: int = KEEP_RECORDS) -> None:
        self.keep = keep
        self._by: dict[str, Record] = {}

    def add(self, rec: Record) -> None:
        self._by.pop(rec.id, None)
        self._by[rec.id] = rec
        if len(self._by) > self.keep:  # drop the oldest (dicts keep insertion order)
            for k in list(itertools.islice(self._by, len(self._by) - self.keep)):
                del self._by[k]

    def get(self, sid: str) -> Record | None:
        return self._by.get(sid)

    def ended(self) -> list[str]:
        """Ids of the subtasks whose records say they ended (finished, failed or cancelled)."""
        return [sid for sid, r in self._by.items() if r.state in ENDED]

    def __getitem__(self, sid: str) -> Record:
        return self._by[sid]

    def __contains__(self, sid: object) -> bool:
        return sid in self._by

    def __len__(self) -> int:
        return len(self._by)

    def values(self) -> Iterator[Record]:
        return iter(self._by.values())
