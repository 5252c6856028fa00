"""The one command-line app: the three daemons, the embedded cluster, and status for people.

Each daemon command builds its role's frozen config from flags and calls that role's
`service.run(config)` under uvloop; nothing else in burla calls `asyncio.run`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import typer

from burla.jobs_cli import jobs_app

app = typer.Typer(help="burla: run any Python function on many computers at once.",
                  no_args_is_help=True, add_completion=False)
local_app = typer.Typer(help="The embedded per-user cluster on this machine.",
                        no_args_is_help=True)
app.add_typer(local_app, name="local")
app.add_typer(jobs_app, name="jobs")


def _read_token(token: str | None, token_file: Path | None) -> str:
    if token:
        return token
    if token_file is None:
        raise typer.BadParameter("give --token or --token-file")
    text = token_file.read_text().strip()
    return str(json.loads(text)["token"]) if text.startswith("{") else text


def _without_rich() -> None:
    """Daemons never draw on a terminal; without rich, structlog skips its rich tracebacks
    (pygments and all), which was most of a daemon's start-up. Executors keep rich for users."""
    import sys

    sys.modules.setdefault("rich", None)  # type: ignore[arg-type]


def _serve(role: str, log_level: str, main: Coroutine[Any, Any, None]) -> None:
    import asyncio

    import uvloop

    from burla import logs

    logs.configure(role, log_level)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(main)


@app.command()
def coordinator(
    endpoint: str = typer.Option("tcp://0.0.0.0:7700", help="Where to listen (port 0 picks one)."),
    state_dir: Path = typer.Option(..., help="Directory for the job store and keys."),
    token: str = typer.Option(None, help="Cluster token (prefer --token-file)."),
    token_file: Path = typer.Option(None, help="File holding the cluster token."),
    idle_timeout: float = typer.Option(0.0, help="Stop after this many idle seconds; 0: never."),
    log_level: str = typer.Option("info", help="debug, info, warning or error."),
) -> None:
    """Run the coordinator: accepts jobs, schedules slots, relays results."""
    _without_rich()
    from burla.coordinator import service
    from burla.coordinator.config import CoordinatorConfig

    secret = _read_token(token, token_file)
    owner = service.default_owner()
    state_dir.mkdir(parents=True, exist_ok=True)
    config = CoordinatorConfig(endpoint, state_dir, secret, {secret: owner}, owner, idle_timeout)
    _serve("coordinator", log_level, service.run(config))


@app.command()
def agent(
    coordinator: str = typer.Option(..., help="Coordinator endpoint, e.g. tcp://10.0.0.2:7700."),
    state_dir: Path = typer.Option(..., help="Directory for the agent's state."),
    token: str = typer.Option(None, help="Cluster token (prefer --token-file)."),
    token_file: Path = typer.Option(None, help="File holding the cluster token."),
    agent_id: str = typer.Option("", help="Name of this node; default: host name + pid."),
    cpus: int = typer.Option(0, help="CPUs to offer; 0: all of this machine's."),
    ram_gb: int = typer.Option(0, help="RAM to offer in GB; 0: all of this machine's."),
    image: str = typer.Option("", help="Container image this node runs."),
    fake_gpus: str = typer.Option("", help="Declare a fake GPU inventory, e.g. A100_40G:2."),
    warm: int = typer.Option(-1, help="Executors to start ahead of jobs; -1: one per CPU."),
    orphan_timeout: float = typer.Option(0.0, help="Stop after this long with no coordinator."),
    sandbox: bool = typer.Option(
        False, "--sandbox/--no-sandbox",
        help="Run executors in namespaces as an unprivileged uid (needs root; cluster nodes).",
    ),
    memory_budget_gb: float = typer.Option(
        0.0, help="Memory all func_ram='dynamic' calls share; 0: RAM less a 10% reserve."
    ),
    cgroups: str = typer.Option("auto", help="Cgroup backend: auto, v1, v2 or none."),
    log_level: str = typer.Option("info", help="debug, info, warning or error."),
) -> None:
    """Run an agent: offers this machine's CPUs, runs calls in executors."""
    _without_rich()
    import platform

    from burla.agent import service
    from burla.agent.config import AgentConfig

    state_dir.mkdir(parents=True, exist_ok=True)
    overrides: dict[str, Any] = {"agent_id": agent_id or f"{platform.node()}-{os.getpid()}"}
    if cpus:
        overrides["cpus"] = cpus
    if ram_gb:
        overrides["ram_gb"] = ram_gb
    if memory_budget_gb:
        overrides["memory_budget_bytes"] = int(memory_budget_gb * 2**30)
    config = AgentConfig(
        coordinator=coordinator, token=_read_token(token, token_file), state_dir=state_dir,
        image=image, fake_gpus=fake_gpus, warm_executors=warm, orphan_timeout=orphan_timeout,
        token_file=token_file, sandbox=sandbox, cgroups=cgroups, **overrides,
    )
    _serve("agent", log_level, service.run(config))


@app.command("exec")
def exec_(
    endpoint: str = typer.Option("", help="The agent's executor endpoint."),
    id: str = typer.Option("", help="Executor id the agent gave."),
    zygote: bool = typer.Option(False, help="Serve executor forks for the agent instead."),
    control_fd: int = typer.Option(3, help="The zygote's socket to the agent."),
    cgroup_root: list[str] = typer.Option(
        [], help="The agent's cgroup root, removed by the zygote if the agent dies."
    ),
) -> None:
    """Run one executor, or the agent's zygote (agents start these themselves)."""
    if zygote:
        from burla.exec.zygote import serve

        serve(control_fd, cgroup_root)
        return
    if not endpoint or not id:
        raise typer.BadParameter("--endpoint and --id are required without --zygote")
    from burla.exec.runner import main

    main(endpoint, id)


def _describe(python: dict[str, str]) -> str:
    """An interpreter as people know it: its environment, version and executable."""
    return (f"environment {python.get('prefix', '?')} (Python {python.get('python_version', '?')}, "
            f"{python.get('executable', '?')})")


@local_app.command("up")
def local_up() -> None:
    """Start this interpreter's embedded cluster (if not running) and print its address."""
    from burla.client import local_cluster

    address = local_cluster.ensure_running()
    typer.echo(f"embedded cluster running at {address.endpoint} for "
               f"{_describe(local_cluster.interpreter())}")


@local_app.command("down")
def local_down(
    all_: bool = typer.Option(False, "--all", help="Stop every interpreter's embedded cluster."),
) -> None:
    """Stop this interpreter's embedded cluster; jobs running on it end with JobCanceled."""
    from burla.client import local_cluster

    reason = "`burla local down`"
    if all_:
        stopped = [d for d in local_cluster.all_directories()
                   if local_cluster.stop(directory=d, reason=reason)]
        typer.echo(f"stopped {len(stopped)} embedded cluster(s)")
        return
    here = _describe(local_cluster.interpreter())
    if local_cluster.stop(reason=reason):
        typer.echo(f"embedded cluster stopped for {here}")
    else:
        typer.echo(f"embedded cluster was not running for {here}")


@local_app.command("status")
def local_status() -> None:
    """Say whether this interpreter's embedded cluster runs, where, and which others run."""
    from burla.client import local_cluster
    from burla.client.admin import embedded_down

    here = local_cluster.state_dir()
    for directory in local_cluster.all_directories():
        other = local_cluster.running_info(directory) if directory != here else None
        if other is not None:
            typer.echo(f"also running: an embedded cluster at {other['endpoint']} for "
                       f"{_describe(other.get('python') or {})}")
    info = local_cluster.running_info()
    if info is None:
        typer.echo(embedded_down())
        raise typer.Exit(1)
    typer.echo(f"embedded cluster: running at {info['endpoint']} for "
               f"{_describe(info.get('python') or {})} (coordinator pid "
               f"{info['coordinator_pid']}, agent pid {info['agent_pid']})")


@app.command()
def status() -> None:
    """Show the nodes, slots and jobs of the cluster this machine uses (starts nothing)."""
    from burla.client.admin import cluster_address, cluster_status, embedded_down

    address = cluster_address()
    if address is None:
        typer.echo(embedded_down())
        raise typer.Exit(1)
    info = cluster_status(address)
    typer.echo(f"cluster {info['endpoint']} (burla {info['version']}), chosen by {address.source}")
    if "python" in info:
        runs = "calls run in" if address.embedded else "its coordinator runs in"
        typer.echo(f"  {runs} {_describe(info['python'])}")
    for node in info["nodes"]:
        gpus = f", GPUs {node['gpus']}" if node["gpus"] else ""
        typer.echo(f"  node {node['agent_id']}: {node['used_cpus']}/{node['cpus']} CPUs in use, "
                   f"{node['ram_gb']} GB{gpus}, Python {node['python_version']}")
    if not info["nodes"]:
        typer.echo("  no nodes")
    for job in info["jobs"]:
        total = "?" if job["total"] is None else job["total"]
        typer.echo(f"  job {job['job_id']} {job['function']}: {job['done']}/{total} done, "
                   f"{job['slots']} slots")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
