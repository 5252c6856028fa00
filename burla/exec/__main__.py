"""`python -m burla.exec`: one executor, or with --zygote the agent's fork server; no CLI load."""

from __future__ import annotations

import sys

from burla.daemon_cli import main

main(["exec", *sys.argv[1:]])
