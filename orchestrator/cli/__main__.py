"""`python -m orchestrator.cli …`: what a cluster's driver runs (the same `s2v` command)."""

from orchestrator.cli.main import main

main()
