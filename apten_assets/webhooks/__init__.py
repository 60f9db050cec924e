"""Apten webhooks: the ASGI receiver (`app`) and the durable inbox it writes.

`uvicorn apten_assets.webhooks:app` serves `POST /webhooks/apten`. Importing this package reads
no settings (Dagster imports it); the receiver checks APTEN_WEBHOOK_SECRET when it starts.
"""

from apten_assets.webhooks.inbox import Delivery, Inbox, StoreResult, delivery_key, parse_envelope
from apten_assets.webhooks.receiver import create_app, create_app_from_env
from apten_assets.webhooks.signing import SIGNATURE_HEADER, sign, verify

app = create_app_from_env()

__all__ = [
    "SIGNATURE_HEADER",
    "Delivery",
    "Inbox",
    "StoreResult",
    "app",
    "create_app",
    "create_app_from_env",
    "delivery_key",
    "parse_envelope",
    "sign",
    "verify",
]
