"""The Dagster code location: `dagster dev -m apten_assets.definitions`."""

import dagster as dg

defs = dg.Definitions()
