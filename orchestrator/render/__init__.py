"""Render: GPU actors that load a backend once, the pool that sizes them, and the scheduler that feeds them chains."""
