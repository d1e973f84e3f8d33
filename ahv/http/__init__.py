"""The HTTP API on port 2022."""
