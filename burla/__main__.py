"""`python -m burla` is the `burla` command."""

from burla.cli import main

main()
