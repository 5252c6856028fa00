"""The GCE provider's settings, one frozen dataclass built once and checked when built."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Debian 12 for CPU nodes; the startup script installs the Python and burla the cluster needs.
DEFAULT_CPU_IMAGE = "projects/debian-cloud/global/images/family/debian-12"
# A Deep Learning VM image, which ships the NVIDIA driver and CUDA for A100 and H100 nodes.
DEFAULT_GPU_IMAGE = ("projects/deeplearning-platform-release/global/images/family/"
                     "common-cu128-ubuntu-2204-nvidia-570")
# The name goes into VM names (burla-<cluster>-<batch>-<####>), which GCE caps at 63 chars.
MAX_CLUSTER_NAME = 40
_CLUSTER_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


@dataclass(frozen=True)
class GceConfig:
    """Where and how the provider boots VMs. `api_endpoint` set means tests: anonymous
    credentials against that URL; unset means the real API with default credentials."""

    project: str
    region: str
    cluster_name: str = "burla"
    zones: tuple[str, ...] = ()  # in order of preference; empty = every zone of the region
    api_endpoint: str | None = None
    coordinator_endpoint: str = ""  # what agents dial: the VMs' burla-coordinator attribute
    token: str = field(default="", repr=False)  # the bootstrap token: burla-token
    startup_script: str = field(default="", repr=False)
    cpu_image: str = DEFAULT_CPU_IMAGE
    gpu_image: str = DEFAULT_GPU_IMAGE
    disk_gb: int = 50
    network: str = "global/networks/default"
    subnetwork: str = ""
    external_ip: bool = True  # VMs reach package indexes through it unless the VPC has NAT
    service_account: str = "default"  # the project's default compute service account
    network_tags: tuple[str, ...] = ("burla-node",)
    # More than this many nodes in one request go through one bulkInsert call.
    bulk_threshold: int = 3
    operation_timeout_s: float = 600.0  # the longest wait for one operation
    call_timeout_s: float = 150.0  # one HTTP call; a zoneOperations.wait may take 2 minutes
    retry_initial_s: float = 1.0  # first back-off of a transient-error retry
    retry_deadline_s: float = 120.0  # how long one call is retried on transient errors

    def __post_init__(self) -> None:
        if not self.project:
            raise ValueError("the GCE provider needs a project")
        if not re.fullmatch(r"[a-z]+-[a-z]+\d+", self.region):
            raise ValueError(f"GCE region {self.region!r} is not a region name such as "
                             f"us-central1")
        wrong = [z for z in self.zones if not z.startswith(f"{self.region}-")]
        if wrong:
            raise ValueError(f"GCE zones {', '.join(wrong)} are not in region {self.region} "
                             f"(zones there are named like {self.region}-a)")
        if not _CLUSTER_NAME.fullmatch(self.cluster_name) or (
                len(self.cluster_name) > MAX_CLUSTER_NAME):
            raise ValueError(
                f"cluster name {self.cluster_name!r} must be lowercase letters, digits and "
                f"hyphens, start with a letter, and be at most {MAX_CLUSTER_NAME} characters "
                f"(it goes into GCE labels and VM names)")
        if self.disk_gb < 10:
            raise ValueError(f"disk_gb={self.disk_gb} is too small for a boot disk; give >= 10")
        if self.bulk_threshold < 1 or self.operation_timeout_s <= 0:
            raise ValueError(f"bulk_threshold must be >= 1 and operation_timeout_s > 0, got "
                             f"{self.bulk_threshold} and {self.operation_timeout_s}")
