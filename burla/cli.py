"""The command-line app for people: the embedded cluster, status, jobs.

The daemons (`coordinator`, `agent`, `exec`) are listed here but parsed by `burla/daemon_cli.py`,
so that they start without loading this app.
"""

from __future__ import annotations

import typer

from burla import daemon_cli
from burla.jobs_cli import jobs_app

app = typer.Typer(help="burla: run any Python function on many computers at once.",
                  no_args_is_help=True, add_completion=False)
local_app = typer.Typer(help="The embedded per-user cluster on this machine.",
                        no_args_is_help=True)
app.add_typer(local_app, name="local")
app.add_typer(jobs_app, name="jobs")


def _forward_to_daemon(name: str) -> None:
    """List a daemon in `burla --help`; `burla.command` sends the daemon's own runs to
    `daemon_cli` before this app is loaded, so this runs only when the app is called directly."""

    def forward(ctx: typer.Context) -> None:
        daemon_cli.main([name, *ctx.args])

    app.command(name, help=daemon_cli.SUMMARIES[name], add_help_option=False,
                context_settings={"allow_extra_args": True,
                                  "ignore_unknown_options": True})(forward)


for _daemon in daemon_cli.SUMMARIES:
    _forward_to_daemon(_daemon)


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
    growth = info.get("growth")
    if growth:
        typer.echo(f"  grows with the {growth['provider']} provider, cluster "
                   f"{growth['cluster']} (new nodes dial {growth['nodes_dial']})")
        for node in growth["booting"]:
            note = f": {node['note']}" if node["note"] else ""
            typer.echo(f"  booting {node['name']} ({node['machine_type']}), "
                       f"{node['age_seconds']:.0f}s{note}")
        for name in growth["deleting"]:
            typer.echo(f"  deleting {name}")
    for job in info["jobs"]:
        total = "?" if job["total"] is None else job["total"]
        said = f"; {job['growth']}" if job.get("growth") else ""
        typer.echo(f"  job {job['job_id']} {job['function']}: {job['done']}/{total} done, "
                   f"{job['slots']} slots{said}")
