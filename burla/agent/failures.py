"""What the agent does when an executor dies under a call: retry the input, run the job on one
executor fewer, or fail the input. Pure decisions: no I/O, no clock, no processes."""

from __future__ import annotations

from dataclasses import dataclass

from burla.errors import NodeDisconnected, OutOfMemory

# Crashes of the executor running one input before that input fails (DESIGN §6).
MAX_CRASHES_PER_INPUT = 3
GIB = 1 << 30


@dataclass(frozen=True)
class Death:
    """An executor died while running input `index` of a job."""

    index: int
    cause: str  # what ended it, in words ("exited with code 3", "was killed by signal ...")
    oom: bool  # killed by the kernel for running out of memory (its cgroup counted the kill)
    func_ram: int  # the job's GB per call; 0 = dynamic
    crashes: int  # earlier crashes on this input
    others: int  # executors the job still has on this node besides the dead one
    node: str
    budget_bytes: int  # memory all dynamic calls of this node share


@dataclass(frozen=True)
class Verdict:
    fail: NodeDisconnected | None  # what ends the input (OutOfMemory for an OOM kill); None: retry
    crashed: bool  # counts towards MAX_CRASHES_PER_INPUT
    lower_parallelism: bool  # the job keeps one executor fewer on this node


def judge(death: Death) -> Verdict:
    """The one rule for every executor death under a call."""
    if death.oom and death.func_ram:
        return Verdict(OutOfMemory(
            f"input {death.index} ran out of memory: it used more than func_ram="
            f"{death.func_ram} GB ({death.func_ram * GIB} bytes), the memory limit of each "
            f"call, and the kernel killed it. Pass a larger func_ram, or func_ram='dynamic' "
            f"to let calls share the node's memory.",
            func_ram=death.func_ram, limit_bytes=death.func_ram * GIB,
        ), crashed=False, lower_parallelism=False)
    if death.oom and death.others > 0:
        # Dynamic RAM: calls share the node's budget; fewer at once leaves each more of it.
        return Verdict(None, crashed=False, lower_parallelism=True)
    if death.oom:
        return Verdict(OutOfMemory(
            f"input {death.index} needs more memory than node {death.node} can give one call: "
            f"the kernel killed it for running out of memory while it was the job's only call "
            f"there (func_ram='dynamic' calls share {death.budget_bytes / GIB:.1f} GB on that "
            f"node). Use nodes with more memory, or make the call use less.",
            func_ram="dynamic", limit_bytes=death.budget_bytes,
        ), crashed=False, lower_parallelism=False)
    if death.crashes + 1 >= MAX_CRASHES_PER_INPUT:
        return Verdict(NodeDisconnected(
            f"the executor running input {death.index} {death.cause}, "
            f"{MAX_CRASHES_PER_INPUT} times in a row; the input was given up. If it runs out "
            f"of memory, raise func_ram; if it crashes the interpreter (segfault, os._exit), "
            f"fix that call."
        ), crashed=True, lower_parallelism=False)
    return Verdict(None, crashed=True, lower_parallelism=False)
