"""The provider and machine catalog a coordinator's growth settings name; nothing else.

The catalog is pure and known at start (growth answers `could_help` with it before the socket
is bound); the provider needs the endpoint its nodes dial, so it is made once that is known.
The GCE modules are imported only for the gce provider: google-cloud-compute is slow to import.
"""

from __future__ import annotations

import sys
from pathlib import Path

from burla.coordinator.capacity import Catalog, Shape
from burla.coordinator.config import GrowthConfig
from burla.coordinator.providers import catalog as gce_catalog
from burla.coordinator.providers import local
from burla.coordinator.providers.base import NodeProvider

# Where the local provider keeps its nodes, in the coordinator's state dir.
LOCAL_NODES_DIR = "local-nodes"


def catalog_for(config: GrowthConfig) -> Catalog:
    """The machine types growth may pack calls into."""
    if config.local is not None:
        return local.catalog(_local_config(config, Path(), "", ""))
    spot = config.spot

    def types(shape: Shape) -> list[tuple[str, int, int, int]]:
        if shape.image:
            return []  # VMs boot burla's image; a container image cannot be asked for
        try:
            sizes = gce_catalog.candidates(shape.func_cpu, shape.func_ram, shape.func_gpu,
                                           spot=spot)
        except ValueError:  # no type fits one call
            return []
        return [(mt.name, mt.cpus, mt.usable_ram_gb, mt.gpus) for mt in sizes]

    return types


def provider_for(config: GrowthConfig, endpoint: str, token: str, state_dir: Path) -> NodeProvider:
    """The provider, its nodes dialling `endpoint` with the bootstrap `token`."""
    if config.local is not None:
        return local.LocalProvider(_local_config(config, state_dir / LOCAL_NODES_DIR, endpoint,
                                                 token))
    from burla.coordinator.providers.gce import GceProvider
    from burla.coordinator.providers.gce_config import GceConfig

    gce = config.gce
    assert gce is not None  # GrowthConfig checked it
    return GceProvider(GceConfig(
        project=gce.project, region=gce.region, cluster_name=config.cluster_name,
        zones=gce.zones, api_endpoint=gce.api_endpoint, coordinator_endpoint=endpoint,
        token=token, startup_script=gce.startup_script))


def _local_config(config: GrowthConfig, state_dir: Path, endpoint: str,
                  token: str) -> local.LocalConfig:
    settings = config.local
    assert settings is not None
    command = settings.command or (sys.executable, "-m", "burla", "agent")
    return local.LocalConfig(state_dir, config.cluster_name, endpoint, token, settings.cpus,
                             settings.ram_gb, f"{sys.version_info[0]}.{sys.version_info[1]}",
                             command)
