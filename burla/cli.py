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


@local_app.command("up")
def local_up() -> None:
    """Start the embedded cluster (if not running) and print its address."""
    from burla.client import local_cluster

    address = local_cluster.ensure_running()
    typer.echo(f"embedded cluster running at {address.endpoint}")


@local_app.command("down")
def local_down() -> None:
    """Stop the embedded cluster."""
    from burla.client import local_cluster

    stopped = local_cluster.stop()
    typer.echo("embedded cluster stopped" if stopped else "embedded cluster was not running")


@local_app.command("status")
def local_status() -> None:
    """Say whether the embedded cluster runs, and where."""
    from burla.client import local_cluster

    info = local_cluster.running_info()
    if info is None:
        typer.echo("embedded cluster: not running")
        raise typer.Exit(1)
    typer.echo(f"embedded cluster: running at {info['endpoint']} "
               f"(coordinator pid {info['coordinator_pid']}, agent pid {info['agent_pid']})")


@app.command()
def status() -> None:
    """Show the nodes, slots and jobs of the cluster this machine uses."""
    from burla.client.admin import cluster_status

    info = cluster_status()
    typer.echo(f"cluster {info['endpoint']} (burla {info['version']})")
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
