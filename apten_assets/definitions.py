"""The Dagster code location: `dagster dev -m apten_assets.definitions`."""

from apten_assets.defs.apten import build_definitions
from apten_assets.lib.config import AptenSettings

defs = build_definitions(AptenSettings.from_env())
