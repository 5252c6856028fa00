"""`burla coordinator`'s growth flags (where grow=True gets nodes, and its bounds), on argparse.

`daemon_cli` adds them to the coordinator's parser; `growth_config` turns them into the
coordinator's GrowthConfig, or exits with one line naming a flag that does not fit. Like
`daemon_cli`, it imports nothing heavy until a coordinator is started with them.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from burla import endpoints

if TYPE_CHECKING:
    from burla.coordinator.config import GceSettings, GrowthConfig, LocalSettings

# Where grow=True may get nodes (burla.coordinator.config.PROVIDERS, not imported here).
PROVIDERS = ("local", "gce")
# The coordinator's growth flags: (flag, its default); each needs --provider.
_GROWTH_FLAGS = (("--cluster-name", "burla"), ("--max-nodes", None), ("--max-cpus", None),
                 ("--max-gpus", None), ("--min-nodes", 0), ("--spot", False),
                 ("--spot-fallback", False), ("--node-idle-timeout", 60.0),
                 ("--boot-timeout", 600.0), ("--advertise-endpoint", None),
                 ("--reap-interval", 60.0))
_GCE_FLAGS = ("--gce-project", "--gce-region", "--gce-zones", "--gce-api-endpoint",
              "--gce-startup-script")
_LOCAL_FLAGS = ("--local-node-cpus", "--local-node-command")


def _whole(least: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = least - 1
        if number < least:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {least}, got {value!r}")
        return number

    return parse


def _seconds(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = 0.0
    if not number > 0 or number == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {value!r}")
    return number


def _zones(value: str) -> tuple[str, ...]:
    zones = tuple(z.strip() for z in value.split(","))
    if not all(zones):
        raise argparse.ArgumentTypeError(f"expected zones separated by commas, like "
                                         f"us-central1-a,us-central1-b, got {value!r}")
    return zones

def _endpoint(value: str) -> str:
    try:
        return endpoints.check(value, bind=False)
    except endpoints.BadEndpoint as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_options(command: argparse.ArgumentParser) -> None:
    """The growth flags, in their own group of `burla coordinator --help`."""
    group = command.add_argument_group("growth", "where grow=True gets nodes, and its bounds")
    group.add_argument("--provider", choices=PROVIDERS, default=None,
                       help="where grow=True boots nodes: gce (Compute Engine VMs) or local "
                            "(agents as processes on this machine, for tests); default: none: "
                            "grow=True boots nothing, and jobs run on the agents that "
                            "register")
    group.add_argument("--gce-project", metavar="P", help="the project VMs are booted in")
    group.add_argument("--gce-region", metavar="R", help="the region VMs are booted in, e.g. "
                                                         "us-central1")
    group.add_argument("--gce-zones", metavar="Z1,Z2", type=_zones,
                       help="zones to try, in this order; default: every zone of the region "
                            "that offers the machine type")
    group.add_argument("--gce-api-endpoint", metavar="URL",
                       help="the Compute API to call, with anonymous credentials (tests: a "
                            "fake API); default: the real one, with this machine's default "
                            "credentials")
    group.add_argument("--gce-startup-script", metavar="FILE", type=Path,
                       help="the VMs' startup script; default: scripts/startup.sh of burla's "
                            "source tree")
    group.add_argument("--cluster-name", metavar="NAME", default="burla",
                       help="this cluster's name: every node it boots carries the label "
                            "burla-cluster=NAME and is named burla-NAME-N (default: burla)")
    group.add_argument("--max-nodes", metavar="N", type=_whole(0),
                       help="most grown nodes at once, booting, running or being deleted; "
                            "default: no cap")
    group.add_argument("--max-cpus", metavar="N", type=_whole(0),
                       help="most CPUs of those nodes; default: no cap")
    group.add_argument("--max-gpus", metavar="N", type=_whole(0),
                       help="most GPUs of those nodes; default: no cap")
    group.add_argument("--min-nodes", metavar="N", type=_whole(0), default=0,
                       help="grown nodes kept running, warm, even when idle (default: 0)")
    group.add_argument("--spot", action=argparse.BooleanOptionalAction, default=False,
                       help="boot spot VMs: cheaper, but preemptible (a preempted node's calls "
                            "run again elsewhere)")
    group.add_argument("--spot-fallback", action="store_true",
                       help="with --spot: boot standard VMs when no zone has spot capacity")
    group.add_argument("--node-idle-timeout", metavar="S", type=_seconds, default=60.0,
                       help="a grown node with no work this long is deleted (default: 60)")
    group.add_argument("--boot-timeout", metavar="S", type=_seconds, default=600.0,
                       help="a node whose agent has not registered this long after its boot "
                            "began is deleted (default: 600)")
    group.add_argument("--advertise-endpoint", metavar="ENDPOINT", type=_endpoint,
                       help="what new nodes dial (their burla-coordinator attribute); "
                            "default: --endpoint, with this machine's address for 0.0.0.0 "
                            "(its internal IP on a GCE VM; loopback for local nodes)")
    group.add_argument("--reap-interval", metavar="S", type=_seconds, default=60.0,
                       help="how often the reaper lists this cluster's nodes to delete "
                            "stopped and unknown ones (default: 60; and once at start)")
    group.add_argument("--local-node-cpus", metavar="N", type=_whole(1),
                       help="CPUs of each node --provider local starts (its machine type is "
                            "local-N); default: this machine's")
    group.add_argument("--local-node-command", metavar="CMD",
                       help="what a local node runs, its agent flags after it; default: this "
                            "interpreter's `burla agent` (tests: a node that never registers)")


def growth_config(args: argparse.Namespace) -> GrowthConfig | None:
    """The coordinator's growth settings from its flags (None without --provider); a flag
    that does not fit the others exits with one line naming it."""
    from burla.coordinator.config import GrowthConfig
    from burla.coordinator.demand import GrowthLimits

    given = [flag for flag, default in _GROWTH_FLAGS if _value(args, flag) != default]
    gce_given = [flag for flag in _GCE_FLAGS if _value(args, flag) is not None]
    local_given = [flag for flag in _LOCAL_FLAGS if _value(args, flag) is not None]
    if args.provider is None:
        if given or gce_given or local_given:
            args.error(f"{(given + gce_given + local_given)[0]} needs --provider (gce or "
                       f"local): without one, grow=True boots nothing")
        return None
    if args.provider != "gce" and gce_given:
        args.error(f"{gce_given[0]} is for --provider gce, not {args.provider}")
    if args.provider != "local" and local_given:
        args.error(f"{local_given[0]} is for --provider local, not {args.provider}")
    if args.spot_fallback and not args.spot:
        args.error("--spot-fallback needs --spot: it falls back from spot VMs")
    if args.max_nodes is not None and args.min_nodes > args.max_nodes:
        args.error(f"--min-nodes={args.min_nodes} is more than --max-nodes={args.max_nodes}")
    try:
        limits = GrowthLimits(args.max_nodes, args.max_cpus, args.max_gpus,
                              args.node_idle_timeout, args.boot_timeout, args.min_nodes)
        return GrowthConfig(
            args.provider, args.cluster_name, limits, args.spot, args.spot_fallback,
            args.advertise_endpoint or "", args.reap_interval,
            gce=_gce_settings(args, args.cluster_name) if args.provider == "gce" else None,
            local=_local_settings(args) if args.provider == "local" else None)
    except ValueError as exc:
        args.error(str(exc))
        raise  # args.error exits


def _value(args: argparse.Namespace, flag: str) -> Any:
    return getattr(args, flag.removeprefix("--").replace("-", "_"))


def _gce_settings(args: argparse.Namespace, cluster_name: str) -> GceSettings:
    from burla.coordinator.config import GceSettings
    from burla.coordinator.providers.gce_config import GceConfig

    if not args.gce_project or not args.gce_region:
        args.error("--provider gce needs --gce-project and --gce-region")
    zones = args.gce_zones or ()
    GceConfig(args.gce_project, args.gce_region, cluster_name, zones)  # checks them, or raises
    script = args.gce_startup_script or Path(__file__).parent.parent / "scripts" / "startup.sh"
    try:
        text = script.read_text()
    except OSError as exc:
        given = "--gce-startup-script" if args.gce_startup_script else "the default startup script"
        args.error(f"cannot read {given} {script}: {exc.strerror}; give "
                   f"--gce-startup-script FILE (scripts/startup.sh of burla's source)")
    return GceSettings(args.gce_project, args.gce_region, zones, args.gce_api_endpoint, text)


def _local_settings(args: argparse.Namespace) -> LocalSettings:
    import shlex

    import psutil

    from burla.coordinator.config import LocalSettings

    cpus = args.local_node_cpus or os.cpu_count() or 1
    ram_gb = max(1, psutil.virtual_memory().total // 2**30)
    try:
        command = tuple(shlex.split(args.local_node_command or ""))
    except ValueError as exc:
        args.error(f"--local-node-command {args.local_node_command!r}: {exc}")
    return LocalSettings(cpus, ram_gb, command)
