"""A job's demand for calls, as growth sees it, and the operator's bounds on growth. Plain data."""

from __future__ import annotations

from dataclasses import dataclass

from burla.coordinator.capacity import Shape
from burla.coordinator.state import Job

# Calls a job is taken to want while its input count is unknown and it set no max_parallelism:
# enough to spread a long iterator over many nodes, and bounded so one call with no caps set
# cannot ask for unbounded machines. The caps bound it further.
UNKNOWN_DEMAND_CALLS = 1000


@dataclass(frozen=True)
class GrowthLimits:
    """The operator's bounds on growth (`burla coordinator` flags); None means no cap."""

    max_nodes: int | None = None  # grown nodes running, booting or being deleted
    max_cpus: int | None = None  # their CPUs
    max_gpus: int | None = None  # their GPUs
    node_idle_timeout: float = 60.0  # a grown node with no work this long is deleted
    boot_timeout: float = 600.0  # a VM whose agent has not registered by then is deleted
    min_nodes: int = 0  # grown nodes kept, warm, even when idle
    retry_after: float = 60.0  # a shape whose boot failed is not booted again for this long

    def __post_init__(self) -> None:
        for name in ("max_nodes", "max_cpus", "max_gpus", "min_nodes"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 0):
                raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
        for name in ("node_idle_timeout", "boot_timeout", "retry_after"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be a number of seconds > 0, "
                                 f"got {getattr(self, name)!r}")


@dataclass(frozen=True)
class JobView:
    """What growth needs of one job."""

    job_id: str
    shape: Shape
    grow: bool
    slots: int  # slots it holds now
    remaining: int | None  # calls not yet finished; None while the input count is unknown
    max_parallelism: int | None = None

    @classmethod
    def of(cls, job: Job, grow: bool) -> JobView:
        total = job.total if job.inputs_done else (job.announced if job.announced >= 0 else None)
        remaining = None if total is None else max(0, total - job.done)
        return cls(job.job_id, Shape.of(job.request), grow, job.slots, remaining,
                   job.max_parallelism)

    @property
    def wanted(self) -> int:
        """Slots it could use beyond those it holds: min(calls left, max_parallelism) - held."""
        bounds = [b for b in (self.remaining, self.max_parallelism) if b is not None]
        calls = min(bounds) if bounds else UNKNOWN_DEMAND_CALLS
        return max(0, calls - self.slots)
