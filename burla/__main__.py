"""`python -m burla` is the `burla` command."""

from burla.command import main

main()
