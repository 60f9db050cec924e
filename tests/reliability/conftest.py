"""Reliability drills run small here; `APTEN_RELIABILITY_FULL=1` runs them at the sizes of
RELIABILITY.md (minutes), as `uv run python -m tools.reliability` does."""

from __future__ import annotations

import os

FULL = os.environ.get("APTEN_RELIABILITY_FULL") == "1"
