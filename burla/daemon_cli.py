"""The daemons' command lines (`burla coordinator`, `burla agent`, `burla exec`), on argparse.

A daemon starts through here, never through the typer app of `burla/cli.py`: typer 0.29 builds
pydantic validators for every option and imports rich's help rendering, about 0.3 s of every
daemon's start that a process nobody types into has no use for. Each command builds its role's
frozen config from the flags and calls that role's `service.run(config)` under uvloop; nothing
else in burla calls `asyncio.run`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from burla import endpoints, growth_cli

if TYPE_CHECKING:
    from burla.agent.config import AgentConfig
    from burla.agent.metadata import VmSettings
    from burla.coordinator.config import CoordinatorConfig

# The `burla` subcommands served here; `burla --help` lists them with these lines.
SUMMARIES = {
    "coordinator": "Run the coordinator: accepts jobs, schedules slots, relays results.",
    "agent": "Run an agent: offers this machine's CPUs, runs calls in executors.",
    "exec": "Run one executor, or the agent's zygote (agents start these themselves).",
}
LOG_LEVELS = ("debug", "info", "warning", "error")


class _Parser(argparse.ArgumentParser):
    """Bad flags get one line that says what was wrong, not a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def _endpoint(bind: bool) -> Callable[[str], str]:
    def parse(value: str) -> str:
        try:
            return endpoints.check(value, bind=bind)
        except endpoints.BadEndpoint as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _executor_pids_max(value: str) -> int:
    from burla.agent.config import MIN_EXECUTOR_PIDS  # only when given: it imports psutil

    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if number and number < MIN_EXECUTOR_PIDS:
        raise argparse.ArgumentTypeError(
            f"{number} leaves an executor too few; give 0 (no limit) or at least "
            f"{MIN_EXECUTOR_PIDS} (its own threads and reapers need that many)")
    return number


def main(argv: list[str]) -> None:
    """Parse `argv` (the subcommand first) and run that daemon."""
    args = parser().parse_args(argv)
    args.run(args)


def parser() -> argparse.ArgumentParser:
    top = _Parser(prog="burla")
    commands = top.add_subparsers(required=True, metavar="{coordinator,agent,exec}",
                                  parser_class=_Parser)
    _coordinator_parser(commands)
    _agent_parser(commands)
    _exec_parser(commands)
    return top


def _add_token_options(command: argparse.ArgumentParser) -> None:
    command.add_argument("--token", help="cluster token (prefer --token-file)")
    command.add_argument("--token-file", type=Path, help="file holding the cluster token")


def _add_log_level(command: argparse.ArgumentParser) -> None:
    command.add_argument("--log-level", default="info", type=str.lower, choices=LOG_LEVELS,
                         help="how much the daemon logs")


def _coordinator_parser(commands: Any) -> None:
    command = commands.add_parser("coordinator", help=SUMMARIES["coordinator"],
                                  description=SUMMARIES["coordinator"])
    command.add_argument("--endpoint", default="tcp://0.0.0.0:7700", type=_endpoint(bind=True),
                         help="where to listen, tcp://HOST:PORT (port 0 picks one)")
    command.add_argument("--state-dir", type=Path, required=True,
                         help="directory for the job store and keys")
    _add_token_options(command)
    command.add_argument("--idle-timeout", type=float, default=0.0,
                         help="stop after this many idle seconds; 0: never")
    command.add_argument("--local-agent", type=Path, metavar="STATE_DIR",
                         help="also run this machine's agent in this process, its state in "
                              "STATE_DIR (the embedded cluster: one interpreter's start, "
                              "not two)")
    growth_cli.add_options(command)
    _add_log_level(command)
    command.set_defaults(run=_run_coordinator, error=command.error)


def _agent_parser(commands: Any) -> None:
    command = commands.add_parser("agent", help=SUMMARIES["agent"],
                                  description=SUMMARIES["agent"])
    command.add_argument("--coordinator", type=_endpoint(bind=False),
                         help="coordinator endpoint, e.g. tcp://10.0.0.2:7700 (required "
                              "unless --from-metadata)")
    command.add_argument("--from-metadata", action="store_true",
                         help="on a GCE VM the coordinator created: read the coordinator, "
                              "token and agent id (the instance name) from the metadata "
                              "server; flags given here win")
    command.add_argument("--metadata-url", metavar="URL",
                         help="metadata server to read with --from-metadata; default "
                              "http://metadata.google.internal/computeMetadata/v1")
    command.add_argument("--state-dir", type=Path, required=True,
                         help="directory for the agent's state")
    _add_token_options(command)
    command.add_argument("--agent-id", default="",
                         help="name of this node; default: host name + pid, or with "
                              "--from-metadata the instance name")
    command.add_argument("--cpus", type=int, default=0,
                         help="CPUs to offer; 0: all of this machine's")
    command.add_argument("--ram-gb", type=int, default=0,
                         help="RAM to offer in GB; 0: all of this machine's")
    command.add_argument("--image", default="", help="container image this node runs")
    command.add_argument("--fake-gpus", default="",
                         help="declare a fake GPU inventory, e.g. A100_40G:2")
    command.add_argument("--warm", type=int, default=-1,
                         help="executors to start ahead of jobs; -1: one per CPU")
    command.add_argument("--orphan-timeout", type=float, default=None,
                         help="stop after this many seconds with no coordinator; 0: never. "
                              "Default 0; with --from-metadata the VM's burla-orphan-timeout "
                              "attribute, else 600, and the agent deletes its VM before it "
                              "stops")
    command.add_argument("--sandbox", action=argparse.BooleanOptionalAction, default=False,
                         help="run executors in namespaces as an unprivileged uid "
                              "(needs root; cluster nodes)")
    command.add_argument("--memory-budget-gb", type=float, default=0.0,
                         help="memory all func_ram='dynamic' calls share; "
                              "0: RAM less a 10%% reserve")
    command.add_argument("--cgroups", default="auto", choices=("auto", "v1", "v2", "none"),
                         help="cgroup backend")
    command.add_argument("--executor-pids-max", type=_executor_pids_max, default=None, metavar="N",
                         help="processes and threads each executor may run at once (cgroup "
                              "pids.max, v1 and v2); 0: no limit; default 4096")
    _add_log_level(command)
    command.set_defaults(run=_run_agent, error=command.error)


def _exec_parser(commands: Any) -> None:
    command = commands.add_parser("exec", help=SUMMARIES["exec"], description=SUMMARIES["exec"])
    command.add_argument("--endpoint", default="", help="the agent's executor endpoint")
    command.add_argument("--id", default="", help="executor id the agent gave")
    command.add_argument("--zygote", action="store_true",
                         help="serve executor forks for the agent instead")
    command.add_argument("--control-fd", type=int, default=3,
                         help="the zygote's socket to the agent")
    command.set_defaults(run=_run_exec, error=command.error)


def _read_token(args: argparse.Namespace) -> str:
    if args.token:
        return str(args.token)
    if args.token_file is None:
        sys.exit(f"burla {args.command_name}: give --token or --token-file")
    try:
        text = args.token_file.read_text().strip()
    except OSError as exc:
        sys.exit(f"burla: cannot read --token-file {args.token_file}: {exc.strerror}")
    return str(json.loads(text)["token"]) if text.startswith("{") else text


def _without_rich() -> None:
    """Daemons never draw on a terminal; without rich, structlog skips its rich tracebacks
    (pygments and all), which was most of a daemon's start-up. Executors keep rich for users."""
    sys.modules.setdefault("rich", None)  # type: ignore[arg-type]


def _serve(role: str, log_level: str, main: Coroutine[Any, Any, None]) -> None:
    import asyncio

    import uvloop

    from burla import logs

    logs.configure(role, log_level)
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(main)


def _run_coordinator(args: argparse.Namespace) -> None:
    if args.local_agent is not None:
        from burla.agent import zygote_spawn

        zygote_spawn.start_early()  # its start overlaps the imports below
    _without_rich()
    from burla.coordinator import service
    from burla.coordinator.config import CoordinatorConfig

    args.command_name = "coordinator"
    growth = growth_cli.growth_config(args)
    secret = _read_token(args)
    owner = service.default_owner()
    args.state_dir.mkdir(parents=True, exist_ok=True)
    config = CoordinatorConfig(args.endpoint, args.state_dir, secret, {secret: owner}, owner,
                               args.idle_timeout, growth)
    if args.local_agent is None:
        _serve("coordinator", args.log_level, service.run(config))
    else:
        _serve("coordinator", args.log_level, _with_local_agent(config, args))


async def _with_local_agent(config: CoordinatorConfig, args: argparse.Namespace) -> None:
    """The coordinator and, on the same event loop, this machine's agent (the embedded
    cluster). The agent registers as any agent does; their messages are handed over
    in-process (burla.local_link). SIGTERM stops both, and the coordinator's idle stop
    sends the agent its Shutdown."""
    import asyncio
    import contextvars
    import platform

    import structlog

    from burla import local_link
    from burla.agent.config import AgentConfig
    from burla.agent.service import Agent
    from burla.coordinator.service import Coordinator

    coordinator = Coordinator(config)
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(coordinator.run())
        await coordinator.listening.wait()
        args.local_agent.mkdir(parents=True, exist_ok=True)
        agent_config = AgentConfig(
            coordinator=coordinator.endpoint, token=config.agent_token, state_dir=args.local_agent,
            agent_id=f"{platform.node()}-{os.getpid()}", token_file=args.token_file,
        )
        as_coordinator = contextvars.copy_context()
        as_agent = contextvars.copy_context()  # its log lines say role=agent
        as_agent.run(structlog.contextvars.bind_contextvars, role="agent")
        agent = as_agent.run(Agent, agent_config)
        # Their messages go from one to the other in-process, not through ZeroMQ.
        coordinator.channel = local_link.CoordinatorChannel(  # type: ignore[assignment]
            coordinator.channel, agent.identity, agent.on_coordinator_message, as_agent)
        agent.uplink = lambda: local_link.AgentUplink(coordinator.on_message, agent.identity,
                                                      as_coordinator)
        tasks.create_task(agent.run(), context=as_agent)


def _run_agent(args: argparse.Namespace) -> None:
    from burla.agent import zygote_spawn

    zygote_spawn.start_early()  # its start overlaps the imports below
    _without_rich()
    from burla.agent import service

    config = agent_config(args)
    _serve("agent", args.log_level, service.run(config))


def agent_config(args: argparse.Namespace) -> AgentConfig:
    """The agent's settings from its flags and, with --from-metadata, the metadata server."""
    import platform

    from burla.agent.config import AgentConfig

    args.command_name = "agent"
    settings = _vm_settings(args)
    coordinator = args.coordinator or (settings.coordinator if settings else "")
    given_token = args.token or args.token_file is not None
    token = settings.token if settings and not given_token else _read_token(args)
    default_id = settings.vm.name if settings else f"{platform.node()}-{os.getpid()}"
    orphan_timeout = args.orphan_timeout
    if orphan_timeout is None:
        orphan_timeout = settings.orphan_timeout if settings else 0.0
    args.state_dir.mkdir(parents=True, exist_ok=True)
    overrides: dict[str, Any] = {"agent_id": args.agent_id or default_id}
    if args.cpus:
        overrides["cpus"] = args.cpus
    if args.ram_gb:
        overrides["ram_gb"] = args.ram_gb
    if args.memory_budget_gb:
        overrides["memory_budget_bytes"] = int(args.memory_budget_gb * 2**30)
    if args.executor_pids_max is not None:
        overrides["executor_pids_max"] = args.executor_pids_max
    return AgentConfig(
        coordinator=coordinator, token=token, state_dir=args.state_dir,
        image=args.image, fake_gpus=args.fake_gpus, warm_executors=args.warm,
        orphan_timeout=orphan_timeout, token_file=args.token_file, sandbox=args.sandbox,
        cgroups=args.cgroups, vm=settings.vm if settings else None, **overrides,
    )


def _vm_settings(args: argparse.Namespace) -> VmSettings | None:
    """What --from-metadata reads (None without it); exits naming what is missing or wrong."""
    if not args.from_metadata:
        if args.metadata_url:
            args.error("--metadata-url needs --from-metadata")
        if args.coordinator is None:
            args.error("give --coordinator ENDPOINT, or --from-metadata on a GCE VM the "
                       "coordinator created")
        return None
    from burla.agent import metadata

    try:
        settings = metadata.read(metadata.fetcher(args.metadata_url or metadata.DEFAULT_URL))
        endpoints.check(settings.coordinator, bind=False)
    except metadata.MetadataError as exc:
        sys.exit(f"burla agent: {exc}")
    except endpoints.BadEndpoint as exc:
        sys.exit(f"burla agent: metadata attribute {metadata.COORDINATOR_KEY}: {exc}")
    return settings


def _run_exec(args: argparse.Namespace) -> None:
    if args.zygote:
        from burla.exec.zygote import serve

        serve(args.control_fd)
        return
    if not args.endpoint or not args.id:
        args.error("--endpoint and --id are required without --zygote")
    from burla.exec.runner import main

    main(args.endpoint, args.id)
