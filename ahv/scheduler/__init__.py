"""Backends, slots and the claim/run loop."""
