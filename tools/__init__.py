"""Operational tools that are not part of the code location."""
