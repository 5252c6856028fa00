"""`python -m burla.exec`: start one executor quickly, without loading the CLI."""

from __future__ import annotations

import argparse

from burla.exec.runner import main

parser = argparse.ArgumentParser(prog="burla exec")
parser.add_argument("--endpoint", required=True)
parser.add_argument("--id", required=True)
args = parser.parse_args()
main(args.endpoint, args.id)
