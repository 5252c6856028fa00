"""What one (workload, tool) run produced, as the runner collected it; no formatting here."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field


@dataclass
class Outcome:
    workload: str
    tool: str
    runs: list[dict[str, float]] = field(default_factory=list)
    error: str | None = None
    skipped: str | None = None
    # Set when the run was killed (timeout or memory guard) before finishing a repeat.
    killed: str | None = None
    # Seconds the unfinished repeat had run when killed: the tool's time is at least this.
    lower_bound_s: float | None = None
    notes: list[str] = field(default_factory=list)
    versions: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.runs) and self.error is None

    def median(self) -> dict[str, float]:
        """Median of each metric over the finished repeats."""
        keys = {k for run in self.runs for k in run}
        return {
            k: statistics.median(run[k] for run in self.runs if k in run) for k in sorted(keys)
        }

    def to_json(self) -> dict[str, object]:
        return dict(self.__dict__)
