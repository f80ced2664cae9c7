"""s2v-batch orchestrator: manifest → plan → render → stitch → publish."""

__version__ = "0.1.0"
