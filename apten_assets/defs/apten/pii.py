"""The PII modes of one run: read from the environment at run time, applied to stored data first
when they changed (`lib.pii_store`), and reported in the run's metadata (modes only, no salt)."""

from __future__ import annotations

from typing import Any

import dagster as dg

from apten_assets.defs.apten.resources import AptenWarehouse
from apten_assets.lib.config import AptenSettings
from apten_assets.lib.pii import PiiPolicy
from apten_assets.lib.pii_store import apply_pii_modes
from apten_assets.webhooks.inbox import Inbox


def pii_for_run(
    context: dg.AssetExecutionContext, warehouse: AptenWarehouse
) -> tuple[PiiPolicy, dict[str, Any]]:
    """The run's policy, after stored data was brought in line with it; and metadata saying so."""
    settings = AptenSettings.from_env()
    policy = settings.pii
    rewritten = apply_pii_modes(warehouse.get_store, policy, Inbox(settings.webhook_inbox), context.log)
    meta: dict[str, Any] = {"pii_modes": policy.label}
    if rewritten:
        meta["pii_rewritten"] = dg.MetadataValue.json(dict(sorted(rewritten.items())))
    return policy, meta
