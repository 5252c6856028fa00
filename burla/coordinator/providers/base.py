"""What every node provider offers (create, list, delete) and the plain data it speaks in.

A provider is synchronous and may block on a cloud API for minutes; the coordinator calls it
only through `providers.pool.ProviderPool`, never on its event loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from burla.errors import BurlaError

# The label every VM of a cluster carries; its value is the cluster's name.
CLUSTER_LABEL = "burla-cluster"


@dataclass(frozen=True)
class NodeRequest:
    """Boot `count` nodes of one machine type.

    `zones` is the order of preference; empty means every zone of the region that offers the
    type. `spot_fallback` retries as standard VMs when no zone has spot capacity. `gpu` is the
    GPU type the machine type brings (e.g. "A100_40G"), which picks the driver boot image.
    `names`, when given (one per node), are the nodes' names, which their agents register
    under; empty lets the provider name them. `python_version` is the Python minor version
    their agents must run (the caller's; "" for the provider's own).
    """

    machine_type: str
    count: int
    zones: tuple[str, ...] = ()
    spot: bool = False
    spot_fallback: bool = False
    gpu: str | None = None
    names: tuple[str, ...] = ()
    python_version: str = ""

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"a NodeRequest asks for at least 1 node, got count={self.count}")
        if self.names and (len(self.names) != self.count or len(set(self.names)) != self.count):
            raise ValueError(f"a NodeRequest for {self.count} nodes names {len(self.names)} "
                             f"({len(set(self.names))} different): give one distinct name "
                             f"per node, or none")
        if self.spot_fallback and not self.spot:
            raise ValueError("spot_fallback=True needs spot=True: it falls back from spot VMs")

    def describe(self) -> str:
        spot = " spot" if self.spot else ""
        return f"{self.count}× {self.machine_type}{spot}"


@dataclass(frozen=True)
class Node:
    """A VM as the provider sees it. `name` is also its agent's id."""

    name: str
    zone: str
    status: str  # the provider's words: PROVISIONING, STAGING, RUNNING, STOPPING, TERMINATED
    machine_type: str
    labels: Mapping[str, str] = field(default_factory=dict)
    created_at: float = 0.0  # Unix time
    spot: bool = False

    @property
    def cluster(self) -> str | None:
        return self.labels.get(CLUSTER_LABEL)


StepKind = Literal["trying", "moving", "partial", "fallback", "created", "stopped"]


@dataclass(frozen=True)
class BootStep:
    """One step of a boot, for the spinner and `burla status`."""

    kind: StepKind
    request: NodeRequest
    zone: str
    detail: str  # e.g. "us-central1-a exhausted, trying us-central1-b"
    count: int  # nodes this step is about: still wanted, or created

    def describe(self) -> str:
        """E.g. "booting 3× n2-standard-8: us-central1-a exhausted, trying us-central1-b"."""
        return f"booting {self.request.describe()}: {self.detail}"


StepCallback = Callable[[BootStep], None]


@dataclass(frozen=True)
class BootReport:
    """What a create call did: the nodes it made, each step, and why it stopped short."""

    request: NodeRequest
    nodes: tuple[Node, ...]
    steps: tuple[BootStep, ...]
    error: ProviderError | None = None  # set when fewer than request.count nodes were made

    @property
    def missing(self) -> int:
        return self.request.count - len(self.nodes)


class NodeProvider(Protocol):
    """Creates, lists and deletes this cluster's nodes. Every method may block (call it from
    a `ProviderPool`), and is safe to call from several threads at once."""

    cluster_name: str

    def create(self, request: NodeRequest, on_step: StepCallback | None = None) -> BootReport:
        """Boot the nodes, trying zones in turn. Never raises for a cloud refusal: the report
        carries the nodes made and the error that stopped the rest."""
        ...

    def list_nodes(self) -> list[Node]:
        """This cluster's nodes (those with its label), in any state."""
        ...

    def delete(self, node: Node) -> None:
        """Delete one of this cluster's nodes; a node already gone is not an error."""
        ...


class ProviderError(BurlaError):
    """The cloud refused or failed a node request. The message says what was asked and the
    cloud's own words; each subclass says what to do about it."""


class QuotaExceeded(ProviderError):
    """A Compute Engine quota is too low for the nodes asked for; the region gets no more.

    `quota` is the quota's name (e.g. "CPUS", "NVIDIA_A100_GPUS"), `region` where it bit and
    `limit` its value. Recover: raise that quota in the Google Cloud console (IAM & Admin >
    Quotas), or ask for fewer or smaller nodes.
    """

    def __init__(self, message: str, quota: str, region: str = "", limit: float | None = None,
                 metric: str = "") -> None:
        super().__init__(message)
        self.quota = quota
        self.region = region
        self.limit = limit
        self.metric = metric  # e.g. "compute.googleapis.com/cpus", when the API names it


class PermissionDenied(ProviderError):
    """The coordinator's credentials lack a permission the request needs.

    `permission` names it (e.g. "compute.instances.create"). Recover: grant the coordinator's
    service account a role with that permission (roles/compute.instanceAdmin.v1 has the
    compute.instances.* ones) in the project, then retry.
    """

    def __init__(self, message: str, permission: str) -> None:
        super().__init__(message)
        self.permission = permission


@dataclass(frozen=True)
class Attempt:
    """One zone tried for a request, and the cloud's answer (its error code)."""

    zone: str
    spot: bool
    code: str  # the operation's error code; "" when the zone made fewer VMs without an error
    message: str = ""
    made: int = 0  # VMs the zone did make before it ran out

    def describe(self) -> str:
        model = "spot" if self.spot else "standard"
        said = [self.code] if self.code else []
        said += [f"made {self.made}"] if self.made else []
        said += [] if self.code else ["no room for more"]
        return f"{self.zone} ({model}): {', '.join(said)}"


class NoCapacity(ProviderError):
    """No zone could make (all of) the nodes: stockouts, or zones that can't take the type now.

    `attempts` lists each zone tried and the answer. Recover: retry later, allow more zones,
    accept spot or standard VMs, or ask for a smaller machine type.
    """

    def __init__(self, message: str, attempts: tuple[Attempt, ...]) -> None:
        super().__init__(message)
        self.attempts = attempts


class OperationTimedOut(ProviderError):
    """A Compute Engine operation did not finish within the provider's wait.

    Its VMs may still appear; they carry the cluster's label, so they can be found (and
    deleted) by it. Recover: retry; if it keeps happening the API is degraded.
    """
