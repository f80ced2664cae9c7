"""The `s2v` command: builds Settings once, calls the steps, maps errors to exit codes in one place."""
