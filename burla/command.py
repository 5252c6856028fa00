"""The `burla` command: daemons go to their argparse front, which starts fast; the commands for
people go to the typer app."""

from __future__ import annotations

import sys

from burla import daemon_cli


def main() -> None:
    if sys.argv[1:2] and sys.argv[1] in daemon_cli.SUMMARIES:
        daemon_cli.main(sys.argv[1:])
        return
    from burla.cli import app

    app()
