"""The webhook receiver: `POST /webhooks/apten`, verified, size-limited, stored before 2xx.

`app` (built by `create_app_from_env`) imports without any setting: the secret and the inbox
are read from the environment at ASGI startup, and startup fails when APTEN_WEBHOOK_SECRET is
missing, so a receiver that cannot verify signatures never accepts a request.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from apten_assets.lib.config import AptenSettings, ConfigError
from apten_assets.lib.pii import PiiPolicy
from apten_assets.webhooks.inbox import Inbox, MalformedEnvelope, parse_envelope
from apten_assets.webhooks.signing import SIGNATURE_HEADER, verify

log = logging.getLogger(__name__)

ROUTE = "/webhooks/apten"
MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class ReceiverConfig:
    secret: str = field(repr=False)
    inbox: Inbox
    max_body_bytes: int = MAX_BODY_BYTES
    pii: PiiPolicy = field(default_factory=PiiPolicy)


def receiver_config(
    secret: str | None,
    inbox_dir: str | os.PathLike[str],
    max_body_bytes: int = MAX_BODY_BYTES,
    pii: PiiPolicy | None = None,
) -> ReceiverConfig:
    """Validated receiver settings; the error says which variable to set."""
    if not secret:
        raise ConfigError(
            "APTEN_WEBHOOK_SECRET is not set: set it to the webhook secret configured in Apten's "
            "Developer Portal; the receiver will not start without it"
        )
    inbox = Inbox(inbox_dir)
    try:
        inbox.ensure_writable()
    except OSError as exc:
        raise ConfigError(
            f"APTEN_WEBHOOK_INBOX={str(inbox_dir)!r} is not a writable directory that supports hard "
            f"links ({exc.strerror or exc}); point it at a local directory or volume"
        ) from None
    return ReceiverConfig(secret=secret, inbox=inbox, max_body_bytes=max_body_bytes, pii=pii or PiiPolicy())


def config_from_env() -> ReceiverConfig:
    settings = AptenSettings.from_env()
    return receiver_config(settings.webhook_secret, settings.webhook_inbox, pii=settings.pii)


def _reply(status_code: int, **body: str) -> JSONResponse:
    return JSONResponse(body, status_code=status_code)


async def _read_limited(request: Request, limit: int) -> bytes | None:
    """The body, read chunk by chunk; None as soon as it exceeds `limit` (never held whole)."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def receive_webhook(request: Request) -> JSONResponse:
    config: ReceiverConfig | None = getattr(request.app.state, "config", None)
    stats: Counter[str] = request.app.state.stats
    if config is None:
        return _reply(503, error="receiver not started (ASGI lifespan did not run)")

    signature = request.headers.get(SIGNATURE_HEADER)
    if not signature:
        stats["unsigned"] += 1
        log.warning(
            "webhook rejected: no %s header (unsigned so far: %d)", SIGNATURE_HEADER, stats["unsigned"]
        )
        return _reply(401, error=f"missing {SIGNATURE_HEADER} header")

    declared = request.headers.get("content-length", "")
    body = None
    if not (declared.isdigit() and int(declared) > config.max_body_bytes):
        try:
            body = await _read_limited(request, config.max_body_bytes)
        except ClientDisconnect:
            stats["disconnected"] += 1
            log.warning("webhook abandoned: sender disconnected before the body was complete")
            return _reply(400, error="body incomplete")
    if body is None:
        stats["too_large"] += 1
        log.warning(
            "webhook rejected: body over %d bytes (too large so far: %d)",
            config.max_body_bytes,
            stats["too_large"],
        )
        return _reply(413, error=f"body larger than {config.max_body_bytes} bytes")

    if not verify(body, signature, config.secret):
        stats["bad_signature"] += 1
        log.warning(
            "webhook rejected: signature does not match, bytes=%d (bad so far: %d)",
            len(body),
            stats["bad_signature"],
        )
        return _reply(401, error="signature does not match the body")

    try:
        envelope = parse_envelope(body)
    except MalformedEnvelope as exc:
        stats["malformed"] += 1
        log.warning(
            "webhook rejected: %s, bytes=%d (malformed so far: %d)", exc, len(body), stats["malformed"]
        )
        return _reply(400, error=str(exc))

    # The PII modes apply before anything is written; the key still comes from the delivery as
    # sent, so two deliveries that differ only in redacted text stay two.
    if not config.pii.is_full:
        stored = config.pii.record(envelope)
        body = json.dumps(stored, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")
    result = await run_in_threadpool(config.inbox.store, body, envelope)
    status = "stored" if result.stored else "duplicate"
    stats[status] += 1
    log.info(
        "webhook %s: event=%s key=%s bytes=%d", status, envelope["event"], result.delivery_key, len(body)
    )
    return _reply(200, status=status, delivery_key=result.delivery_key)


async def health(request: Request) -> JSONResponse:
    started = getattr(request.app.state, "config", None) is not None
    return _reply(200 if started else 503, status="ok" if started else "not started")


def _build(load_config: Callable[[], ReceiverConfig]) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        config = load_config()
        removed = config.inbox.remove_stale_temp_files()
        app.state.config = config
        log.info(
            "webhook receiver ready: POST %s, inbox=%s, stale temp files removed=%d",
            ROUTE,
            config.inbox.path,
            removed,
        )
        yield
        stats = dict(app.state.stats)
        log.info(
            "webhook receiver stopped: %s",
            ", ".join(f"{k}={v}" for k, v in sorted(stats.items())) or "no deliveries",
        )

    app = Starlette(
        routes=[Route(ROUTE, receive_webhook, methods=["POST"]), Route("/healthz", health, methods=["GET"])],
        lifespan=lifespan,
    )
    app.state.stats = Counter()
    return app


def create_app(
    secret: str | None,
    inbox_dir: str | os.PathLike[str],
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    pii: PiiPolicy | None = None,
) -> Starlette:
    """A receiver with explicit settings (tests, embedding). Startup fails without a secret."""
    return _build(lambda: receiver_config(secret, inbox_dir, max_body_bytes, pii))


def create_app_from_env() -> Starlette:
    """The receiver configured from APTEN_WEBHOOK_SECRET / APTEN_WEBHOOK_INBOX at startup."""
    return _build(config_from_env)
