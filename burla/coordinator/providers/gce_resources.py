"""The Compute resources a boot sends and the Nodes it reads back; pure, it calls no API."""

from __future__ import annotations

import uuid
from datetime import datetime

from google.cloud import compute_v1

from burla import __version__
from burla.coordinator.providers import catalog
from burla.coordinator.providers.base import CLUSTER_LABEL, Node, NodeRequest
from burla.coordinator.providers.gce_config import GceConfig

# Every VM of one create call (one zone, one batch) carries this label with the batch's id, so
# the boot can list exactly the VMs it made.
BATCH_LABEL = "burla-batch"
# Instance attributes the agent reads from the metadata server.
COORDINATOR_KEY = "burla-coordinator"
TOKEN_KEY = "burla-token"
STARTUP_SCRIPT_KEY = "startup-script"
# What the startup script installs: the cluster's exact burla, and the caller's Python minor.
VERSION_KEY = "burla-version"
PYTHON_KEY = "burla-python"
# Deep Learning VM images install the NVIDIA driver at first boot when this is set.
INSTALL_DRIVER_KEY = "install-nvidia-driver"
# The API scope that lets a VM's service account call Compute (an orphaned agent deletes its
# own VM); the account's roles still decide what it may do.
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# The most VMs one bulkInsert asks for; a larger request is split into several calls.
BULK_MAX = 1000
NAME_DIGITS = 4  # "####": up to 9,999 VMs per batch, more than one bulkInsert makes


def new_batch() -> str:
    """A short id for one create call in one zone: VM names in different zones never clash."""
    return uuid.uuid4().hex[:6]


def node_name(cluster: str, batch: str, number: int) -> str:
    return f"burla-{cluster}-{batch}-{number:0{NAME_DIGITS}d}"


def name_pattern(cluster: str, batch: str) -> str:
    return f"burla-{cluster}-{batch}-{'#' * NAME_DIGITS}"


def gpu_of(request: NodeRequest) -> str | None:
    """The GPU type the request's VMs bring, from the request or the catalog."""
    known = catalog.MACHINE_TYPES.get(request.machine_type)
    return request.gpu or (known.gpu_type if known else None)


def scheduling(request: NodeRequest, spot: bool) -> compute_v1.Scheduling:
    """Spot VMs are deleted when preempted; GPU VMs cannot live-migrate, so they stop for host
    maintenance. A VM that stops is not restarted: its agent is lost and grow replaces it."""
    if spot:
        return compute_v1.Scheduling(provisioning_model="SPOT",
                                     instance_termination_action="DELETE",
                                     on_host_maintenance="TERMINATE", automatic_restart=False)
    if gpu_of(request):
        return compute_v1.Scheduling(provisioning_model="STANDARD",
                                     on_host_maintenance="TERMINATE", automatic_restart=False)
    return compute_v1.Scheduling(provisioning_model="STANDARD", on_host_maintenance="MIGRATE",
                                 automatic_restart=True)


def _metadata(config: GceConfig, request: NodeRequest, gpu: bool) -> compute_v1.Metadata:
    items = {COORDINATOR_KEY: config.coordinator_endpoint, TOKEN_KEY: config.token,
             STARTUP_SCRIPT_KEY: config.startup_script}
    if request.python_version:  # a request from growth: the VMs run the job's Python
        items[VERSION_KEY] = __version__
        items[PYTHON_KEY] = request.python_version
    if gpu:
        items[INSTALL_DRIVER_KEY] = "True"
    return compute_v1.Metadata(items=[compute_v1.Items(key=k, value=v) for k, v in items.items()])


def _common(config: GceConfig, request: NodeRequest, spot: bool, batch: str) -> dict[str, object]:
    """The fields an Instance and a bulk insert's InstanceProperties share."""
    gpu = gpu_of(request) is not None
    disk = compute_v1.AttachedDisk(
        boot=True, auto_delete=True,
        initialize_params=compute_v1.AttachedDiskInitializeParams(
            source_image=config.gpu_image if gpu else config.cpu_image,
            disk_size_gb=config.disk_gb))
    nic = compute_v1.NetworkInterface(network=config.network)
    if config.subnetwork:
        nic.subnetwork = config.subnetwork
    if config.external_ip:
        nic.access_configs = [compute_v1.AccessConfig(name="External NAT",
                                                      type_="ONE_TO_ONE_NAT")]
    return {
        "labels": {CLUSTER_LABEL: config.cluster_name, BATCH_LABEL: batch},
        "metadata": _metadata(config, request, gpu),
        "disks": [disk],
        "network_interfaces": [nic],
        "service_accounts": [compute_v1.ServiceAccount(email=config.service_account,
                                                       scopes=[CLOUD_PLATFORM_SCOPE])],
        "scheduling": scheduling(request, spot),
        "tags": compute_v1.Tags(items=list(config.network_tags)),
    }


def instance(config: GceConfig, request: NodeRequest, zone: str, name: str, spot: bool,
             batch: str) -> compute_v1.Instance:
    """One VM for instances.insert."""
    return compute_v1.Instance(
        name=name, machine_type=f"zones/{zone}/machineTypes/{request.machine_type}",
        **_common(config, request, spot, batch))


def bulk_insert(config: GceConfig, request: NodeRequest, count: int, spot: bool, batch: str,
                names: list[str] | None = None) -> compute_v1.BulkInsertInstanceResource:
    """Up to `count` VMs in one instances.bulkInsert; any number from 1 is a success, so the
    job starts on what the zone has and the rest is asked of the next zone. With `names` (one
    per VM) the VMs get exactly those, through perInstanceProperties; else a namePattern."""
    properties = compute_v1.InstanceProperties(machine_type=request.machine_type,
                                               **_common(config, request, spot, batch))
    if names:
        each = compute_v1.BulkInsertInstanceResourcePerInstanceProperties
        return compute_v1.BulkInsertInstanceResource(
            count=len(names), min_count=1, instance_properties=properties,
            per_instance_properties={name: each() for name in names})
    return compute_v1.BulkInsertInstanceResource(
        count=count, min_count=1, name_pattern=name_pattern(config.cluster_name, batch),
        instance_properties=properties)


def to_node(vm: compute_v1.Instance) -> Node:
    """The Node an Instance is: zone and machine type by name, creation time as Unix time."""
    created = vm.creation_timestamp
    return Node(
        name=vm.name, zone=vm.zone.rsplit("/", 1)[-1], status=vm.status,
        machine_type=vm.machine_type.rsplit("/", 1)[-1], labels=dict(vm.labels),
        created_at=datetime.fromisoformat(created).timestamp() if created else 0.0,
        spot=vm.scheduling.provisioning_model == "SPOT")
