"""The coordinator's settings, built once by the CLI and passed down; never read globally."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from burla.coordinator.demand import GrowthLimits

PROVIDERS = ("local", "gce")
# The cluster's name goes into the label burla-cluster=<name> and into node names
# (burla-<name>-<n>), which GCE caps at 63 characters.
MAX_CLUSTER_NAME = 40
_CLUSTER_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
# How often the reaper lists the cluster's nodes (and once at start).
REAP_INTERVAL_SECONDS = 60.0


def cluster_name_problem(name: str) -> str | None:
    """Why `name` cannot name a cluster, or None."""
    if _CLUSTER_NAME.fullmatch(name) and len(name) <= MAX_CLUSTER_NAME:
        return None
    return (f"cluster name {name[:80]!r} must be lowercase letters, digits and hyphens, start "
            f"with a letter, end with a letter or digit, and be at most {MAX_CLUSTER_NAME} "
            f"characters (it goes into labels and node names)")


@dataclass(frozen=True)
class GceSettings:
    """Where the GCE provider boots VMs (`--gce-*` flags)."""

    project: str
    region: str
    zones: tuple[str, ...] = ()  # in order of preference; empty: every zone of the region
    api_endpoint: str | None = None  # tests: a fake Compute API, with anonymous credentials
    startup_script: str = field(default="", repr=False)  # the VMs' startup-script, as text


@dataclass(frozen=True)
class LocalSettings:
    """What the local provider starts (`--local-node-*` flags)."""

    cpus: int  # CPUs of each node: its one machine type is local-<cpus>
    ram_gb: int  # RAM each node's agent advertises
    command: tuple[str, ...] = ()  # what runs an agent; () = this interpreter's `burla agent`


@dataclass(frozen=True)
class GrowthConfig:
    """Where grow=True gets nodes, and the operator's bounds on it."""

    provider: str  # one of PROVIDERS
    cluster_name: str = "burla"
    limits: GrowthLimits = field(default_factory=GrowthLimits)
    spot: bool = False
    spot_fallback: bool = False  # spot stockout: boot standard VMs instead
    advertise_endpoint: str = ""  # what new nodes dial; "" = derived from the bound endpoint
    reap_interval: float = REAP_INTERVAL_SECONDS
    gce: GceSettings | None = None
    local: LocalSettings | None = None

    def __post_init__(self) -> None:
        if self.provider not in PROVIDERS:
            raise ValueError(f"provider {self.provider!r} is not one of {', '.join(PROVIDERS)}")
        problem = cluster_name_problem(self.cluster_name)
        if problem is not None:
            raise ValueError(problem)
        if self.spot_fallback and not self.spot:
            raise ValueError("spot_fallback needs spot: it falls back from spot VMs")
        if (self.provider == "gce") != (self.gce is not None):
            raise ValueError("the gce provider needs its GceSettings, and only it has them")
        if (self.provider == "local") != (self.local is not None):
            raise ValueError("the local provider needs its LocalSettings, and only it has them")
        if not self.reap_interval > 0:
            raise ValueError(f"reap_interval must be > 0 seconds, got {self.reap_interval!r}")

    @property
    def name_prefix(self) -> str:
        """Node names are `<prefix>-<n>`: the agent id each node registers under."""
        return f"burla-{self.cluster_name}"


@dataclass(frozen=True)
class CoordinatorConfig:
    endpoint: str  # where to bind, e.g. tcp://0.0.0.0:7700 (port 0 picks a free one)
    state_dir: Path
    agent_token: str  # agents present this in Hello
    client_tokens: dict[str, str] = field(default_factory=dict)  # token -> owner
    admin_owner: str = ""  # this owner may stop the coordinator remotely (`burla local down`)
    idle_timeout: float = 0.0  # stop after this long with no job and no client; 0 = never
    growth: GrowthConfig | None = None  # None: no provider, grow=True boots nothing
