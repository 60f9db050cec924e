"""Reliability drills for GitHub issue #6: chaos backfill, crash safety, concurrency, secrets.

Run the full drills with `uv run python -m tools.reliability`; see RELIABILITY.md.
"""
