"""Which nodes can serve a request, and the reason in words when none can. Pure functions."""

from __future__ import annotations

from collections.abc import Collection, Iterable

from burla.coordinator.state import Node, Request

# What to do when no node fits. grow=True is not advised here: the scheduler adds that advice
# only where growth could boot a node for the job (`growing.GrowingJobs.refusal`).
FIT_ADVICE = ("Change the request to fit a node, or start an agent that fits on another "
               "machine (`burla agent --coordinator ENDPOINT --token-file FILE`).")


def incompatibility(request: Request, nodes: Iterable[Node]) -> tuple[str, str] | None:
    """None if some node could ever run one call; else (reason kind, message for the user)."""
    nodes = list(nodes)
    offered = "; ".join(node.describe() for node in nodes)
    same_python = [n for n in nodes if n.python_version == request.python_version]
    if not same_python:
        versions = sorted({n.python_version for n in nodes})
        return "python", (
            f"no node runs Python {request.python_version} (the client's); nodes run Python "
            f"{', '.join(versions)}. Functions are pickled, so both sides need the same minor "
            f"version: run the client on Python {versions[0]}, or start an agent on Python "
            f"{request.python_version} (`burla agent --coordinator ENDPOINT --token-file FILE`)."
        )
    candidates = same_python
    if request.image:
        candidates = [n for n in candidates if n.image == request.image]
        if not candidates:
            images = sorted({n.image or "(none)" for n in same_python})
            return "image", (
                f"no node runs image={request.image!r}; images available: "
                f"{', '.join(images)}. {FIT_ADVICE}"
            )
    if request.func_gpu:
        candidates = [n for n in candidates if request.func_gpu in n.gpus]
        if not candidates:
            gpus = sorted({g for n in same_python for g in n.gpus}) or ["none"]
            return "gpu", (
                f"no node has a {request.func_gpu} GPU (func_gpu={request.func_gpu!r}); GPUs "
                f"available: {', '.join(gpus)}. {FIT_ADVICE}"
            )
    if not any(request.slots_on(n, free_only=False) for n in candidates):
        biggest_cpu = max(n.cpus for n in candidates)
        biggest_ram = max(n.ram_gb for n in candidates)
        ram = f"func_ram={request.func_ram} GB" if request.func_ram else "func_ram='dynamic'"
        return "resources", (
            f"no node is big enough for one call of func_cpu={request.func_cpu}, {ram}; "
            f"the largest node has {biggest_cpu} CPUs and {biggest_ram} GB. Nodes: {offered}. "
            f"{FIT_ADVICE}"
        )
    return None


def eligible(request: Request, nodes: Iterable[Node],
             draining: Collection[str] = ()) -> list[Node]:
    """Nodes that could run a call of `request`, most free CPUs first; none of `draining`
    (nodes being deleted)."""
    fits = [
        n for n in nodes
        if n.agent_id not in draining
        and n.python_version == request.python_version
        and (not request.image or n.image == request.image)
        and (not request.func_gpu or request.func_gpu in n.gpus)
        and request.slots_on(n, free_only=False) > 0
    ]
    return sorted(fits, key=lambda n: n.cpus - n.used_cpus, reverse=True)
