"""`burla jobs list | show | logs | cancel`: the caller's jobs on the cluster in use."""

from __future__ import annotations

import sys
from typing import Any

import typer

from burla.config import ClusterAddress

jobs_app = typer.Typer(help="Your jobs on the cluster in use (detached ones are kept until "
                            "their results are collected).", no_args_is_help=True)


def _address() -> ClusterAddress:
    """The cluster in use; exits, saying so, if that is the embedded one and it is down (a
    question must not start it)."""
    from burla.client.admin import cluster_address, embedded_down

    address = cluster_address()
    if address is None:
        typer.echo(embedded_down(), err=True)
        raise typer.Exit(1)
    return address


def _check(job_id: str) -> None:
    """Exit with status 2, quoting it short, if `job_id` is not a job id (before any cluster
    is asked)."""
    from burla.job_ids import job_id_problem

    problem = job_id_problem(job_id)
    if problem is not None:
        typer.echo(problem, err=True)
        raise typer.Exit(2)


def _jobs() -> list[dict[str, Any]]:
    from burla.client.admin import cluster_status

    return list(cluster_status(_address())["jobs"])


def _state(job: dict[str, Any]) -> str:
    if job["finished"]:
        return "finished, results waiting" if job["detach"] else "finishing"
    return "running" if job["slots"] else "queued"


@jobs_app.command("list")
def list_jobs() -> None:
    """One line per job: id, function, progress, state."""
    jobs = _jobs()
    if not jobs:
        typer.echo("no jobs")
    for job in jobs:
        total = "?" if job["total"] is None else job["total"]
        kind = "detached" if job["detach"] else "attached"
        typer.echo(f"{job['job_id']}  {job['function']:<24} {job['done']}/{total}  "
                   f"{_state(job)} ({kind}, {job['slots']} slots)")


@jobs_app.command("show")
def show(job_id: str) -> None:
    """Everything the cluster knows about one job."""
    _check(job_id)
    for job in _jobs():
        if job["job_id"] == job_id:
            for key, value in job.items():
                typer.echo(f"{key}: {value}")
            typer.echo(f"state: {_state(job)}")
            return
    typer.echo(f"no job {job_id!r} of yours on this cluster", err=True)
    raise typer.Exit(1)


@jobs_app.command("logs")
def logs(job_id: str) -> None:
    """The output lines a detached job printed (kept up to 100,000 lines)."""
    from burla import protocol
    from burla.client.admin import request
    from burla.errors import BurlaError

    _check(job_id)
    try:
        reply = request(_address(), protocol.JobLogsRequest(job_id))
    except BurlaError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(1) from None
    assert isinstance(reply, protocol.StatusReply)
    if not reply.info["kept"]:
        typer.echo("output of attached jobs goes to their caller and is not kept", err=True)
    for _index, stream, text in reply.info["entries"]:
        (sys.stderr if stream == 2 else sys.stdout).write(text)


@jobs_app.command("cancel")
def cancel(job_id: str) -> None:
    """Stop a job: its running calls are killed and its inputs and results dropped."""
    from burla import protocol
    from burla.client.admin import request

    _check(job_id)
    reply = request(_address(), protocol.Cancel(job_id, "cancelled with `burla jobs "
                                                              "cancel`"))
    known = isinstance(reply, protocol.JobFailed) and reply.message != "already over"
    typer.echo(f"job {job_id} cancelled" if known else f"no running job {job_id!r} of yours")
    if not known:
        raise typer.Exit(1)
