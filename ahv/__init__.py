"""ahv: a self-hosted AI orchestrator."""

__version__ = "0.1.0"
