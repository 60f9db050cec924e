"""The sandbox HTTP app: Apten's read endpoints over a `SandboxDataset`, with injectable faults.

Behaviour follows `shared/apten-api.md`, including its inconvenient parts: inclusive `since`
cursors, keyset `nextToken`s, `types`-filtered event pages that come back short or empty while
more exist, 403 for a bad key, and no conveniences the docs do not promise. Error bodies use the
API-Gateway-like `{"message": ...}` shape the docs guess at.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import math
import random
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from apten_assets.sandbox.data import Event, Lead, SandboxDataset, SortedIndex, iso_ms, to_epoch_ms

FILTERABLE_EVENT_TYPES = frozenset({"MESSAGE", "CALL", "EMAIL", "TOOL_CALL", "CUSTOM"})
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000


@dataclass(frozen=True)
class FaultConfig:
    """Misbehaviour to inject. Replace `SandboxState.faults` to change it while serving.

    The `p_*` shares are drawn from one seeded RNG per request and are mutually exclusive, so
    they must add up to at most 1. `rate_limit_rps` None or 0 turns the rate limit off.
    """

    latency_ms: float = 0.0
    rate_limit_rps: float | None = None
    retry_after_share: float = 0.5
    retry_after_http_date_share: float = 0.25
    p_429: float = 0.0
    p_5xx: float = 0.0
    p_drop: float = 0.0
    p_truncate: float = 0.0
    p_slow: float = 0.0
    slow_seconds: float = 5.0
    seed: int = 0

    def __post_init__(self) -> None:
        for item in fields(self):
            if item.name.startswith(("p_", "retry_after")) and not 0.0 <= getattr(self, item.name) <= 1.0:
                raise ValueError(f"{item.name} must be within [0, 1]")
        if sum(self._fault_shares().values()) > 1.0:
            raise ValueError("p_429 + p_5xx + p_drop + p_truncate + p_slow cannot exceed 1")

    def _fault_shares(self) -> dict[str, float]:
        return {
            "429": self.p_429,
            "5xx": self.p_5xx,
            "drop": self.p_drop,
            "truncate": self.p_truncate,
            "slow": self.p_slow,
        }

    def draw_fault(self, rng: random.Random) -> str | None:
        """Which injected fault (a key of `_fault_shares`) hits this request, if any."""
        draw, upper = rng.random(), 0.0
        for fault, share in self._fault_shares().items():
            upper += share
            if draw < upper:
                return fault
        return None


@dataclass(frozen=True)
class RequestRecord:
    """One request as served. `status` is 0 when the connection was dropped without a response.

    `fault` names what the sandbox did on purpose: `rate_limit`, `429`, `5xx`, `drop`,
    `truncate` or `slow`; None for a normal answer (including 400/403/404).
    """

    t: float
    method: str
    path: str
    query: str
    status: int
    fault: str | None = None


class SandboxState:
    """Everything one running sandbox shares between its HTTP app and the test that drives it.

    The sandbox clock (`now()`) is the wall clock when the dataset's spec has no anchor; with a
    fixed anchor it starts at the anchor when the state is created and runs at wall-clock speed.

    `call_overrides` (call id -> body, None for a 404) and `event_overrides` (event id -> JSON)
    replace what the dataset would serve, so a test can feed clients malformed or unexpected
    records; the event keeps its place (and `types` filtering) in its lead's event list.
    """

    def __init__(
        self, dataset: SandboxDataset, api_key: str | None = None, faults: FaultConfig | None = None
    ) -> None:
        self.dataset = dataset
        self.api_key = api_key
        self._clock_offset = (
            timedelta(0) if dataset.spec.anchor is None else dataset.anchor - datetime.now(UTC)
        )
        self._lock = threading.Lock()
        self._log: list[RequestRecord] = []
        self._released_ms: dict[str, int] = {}
        self.call_overrides: dict[str, Any] = {}
        self.event_overrides: dict[str, Any] = {}
        self.faults = faults or FaultConfig()

    @property
    def faults(self) -> FaultConfig:
        return self._faults

    @faults.setter
    def faults(self, faults: FaultConfig) -> None:
        # A new config starts a fresh, reproducible fault sequence and an empty rate-limit window.
        self._faults = faults
        self.fault_rng = random.Random(faults.seed)
        self.admitted: deque[float] = deque()

    def now(self) -> datetime:
        return datetime.now(UTC) + self._clock_offset

    @property
    def request_log(self) -> list[RequestRecord]:
        """A snapshot copy, safe to read from any thread."""
        with self._lock:
            return list(self._log)

    def clear_request_log(self) -> None:
        with self._lock:
            self._log.clear()

    def record(self, entry: RequestRecord) -> None:
        with self._lock:
            self._log.append(entry)

    def release_summaries(self, call_ids: Iterable[str] | None = None) -> list[str]:
        """Late summaries of these calls (None = every late call) appear now. Returns the ids released."""
        late = set(self.dataset.late_summary_call_ids)
        chosen = (
            self.dataset.late_summary_call_ids if call_ids is None else [c for c in call_ids if c in late]
        )
        released_ms = to_epoch_ms(self.now())
        with self._lock:
            for call_id in chosen:
                self._released_ms.setdefault(call_id, released_ms)
        return list(chosen)

    def call_json(self, call_id: str) -> dict[str, Any] | None:
        """What `GET /calls/{call_id}` answers right now (None = 404)."""
        if call_id in self.call_overrides:
            return self.call_overrides[call_id]
        with self._lock:
            released_ms = self._released_ms.get(call_id)
        return self.dataset.call_json(call_id, self.now(), released_ms)

    def event_json(self, event: Event) -> Any:
        """What the events endpoint lists for `event`."""
        if event.id in self.event_overrides:
            return self.event_overrides[event.id]
        return event.to_json()


# --- request parsing ----------------------------------------------------------------------------


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_timestamp(name: str, text: str | None) -> int | None:
    """ISO 8601 date-time with a zone (`Z` or an offset), any sub-second precision -> epoch ms."""
    if text is None:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or "T" not in text.upper() or moment.tzinfo is None:
        raise ApiError(400, f"{name} must be an ISO 8601 date-time with a time zone, got {text!r}")
    return to_epoch_ms(moment)


def parse_limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_LIMIT
    if not re.fullmatch(r"[0-9]+", text) or not 1 <= int(text) <= MAX_LIMIT:
        raise ApiError(400, f"limit must be an integer between 1 and {MAX_LIMIT}, got {text!r}")
    return int(text)


def parse_types(text: str | None) -> frozenset[str] | None:
    if text is None:
        return None
    types = frozenset(part.strip() for part in text.split(","))
    unknown = types - FILTERABLE_EVENT_TYPES
    if unknown:
        allowed = ",".join(sorted(FILTERABLE_EVENT_TYPES))
        raise ApiError(400, f"types must be a comma-separated subset of {allowed}, got {text!r}")
    return types


def encode_token(key: tuple[int, str]) -> str:
    """The shape Apten's example token decodes to: `{"searchAfter":["<timestamp>","<id>"]}`."""
    payload = json.dumps({"searchAfter": [iso_ms(key[0]), key[1]]}, separators=(",", ":"))
    return base64.b64encode(payload.encode()).decode()


def decode_token(token: str | None) -> tuple[int, str] | None:
    if token is None:
        return None
    try:
        search_after = json.loads(base64.b64decode(token, validate=True))["searchAfter"]
        timestamp, item_id = search_after
        epoch_ms = parse_timestamp("nextToken", timestamp)
    except (binascii.Error, ValueError, KeyError, TypeError, ApiError):
        raise ApiError(400, "nextToken is not a token this API returned") from None
    if epoch_ms is None or not isinstance(item_id, str):
        raise ApiError(400, "nextToken is not a token this API returned")
    return epoch_ms, item_id


# --- pages --------------------------------------------------------------------------------------


@dataclass
class Page:
    items: list[Any]
    next_token: str | None


def search_after_page(
    index: SortedIndex[Any],
    since_ms: int,
    after: tuple[int, str] | None,
    limit: int,
    keep: Callable[[Any], bool] | None = None,
) -> Page:
    """Take `limit` items from the cursor, then drop those `keep` rejects (a post-filter).

    This is why a filtered page can be short or empty while `nextToken` is set: the token marks
    the last item scanned, and it is returned whenever anything lies beyond it.
    """
    start = index.first_at_or_after(since_ms)
    if after is not None:
        start = max(start, index.first_after(after))
    end = min(start + limit, len(index))
    scanned = index.items[start:end]
    items = scanned if keep is None else [item for item in scanned if keep(item)]
    next_token = encode_token(index.keys[end - 1]) if start < end < len(index) else None
    return Page(items, next_token)


def leads_page(state: SandboxState, request: Request) -> dict[str, Any]:
    dataset, params = state.dataset, request.query_params
    updated_since = parse_timestamp("updatedSince", params.get("updatedSince"))
    created_since = parse_timestamp("createdSince", params.get("createdSince"))
    limit = parse_limit(params.get("limit"))
    after = decode_token(params.get("nextToken"))
    if updated_since is not None:
        # With both filters (ordering undocumented) we page by updatedAt and post-filter createdAt.
        keep = None if created_since is None else lambda lead: lead.created_ms >= created_since
        page = search_after_page(dataset.leads_by_updated, updated_since, after, limit, keep)
    elif created_since is not None:
        page = search_after_page(dataset.leads_by_created, created_since, after, limit)
    else:
        raise ApiError(400, "updatedSince or createdSince is required")
    leads: list[Lead] = page.items
    return {"leads": [lead.json for lead in leads], "nextToken": page.next_token}


def events_page(state: SandboxState, request: Request) -> dict[str, Any]:
    index = state.dataset.events_index(request.path_params["lead_id"])
    if index is None:
        raise ApiError(404, "Not Found")
    params = request.query_params
    since = parse_timestamp("since", params.get("since"))
    if since is None:
        raise ApiError(400, "since is required")
    types = parse_types(params.get("types"))
    limit = parse_limit(params.get("limit"))
    after = decode_token(params.get("nextToken"))
    keep = None if types is None else lambda event: event.type in types
    page = search_after_page(index, since, after, limit, keep)
    events: list[Event] = page.items
    return {"events": [state.event_json(event) for event in events], "nextToken": page.next_token}


# --- responses ----------------------------------------------------------------------------------


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    return Response(body, status_code=status, headers=headers, media_type="application/json")


class InjectedConnectionDrop(Exception):
    """Raised after the status line so uvicorn closes the connection before any body."""


class DroppedResponse(Response):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"4096")]})
        raise InjectedConnectionDrop


def truncated(response: Response) -> Response:
    """Same status and type, but only the first half of the JSON body (Content-Length matches)."""
    body = bytes(response.body)
    return Response(body[: len(body) // 2], status_code=response.status_code, media_type="application/json")


def call_detail(state: SandboxState, request: Request) -> dict[str, Any]:
    body = state.call_json(request.path_params["call_id"])
    if body is None:
        raise ApiError(404, "Not Found")
    return body


Handler = Callable[[SandboxState, Request], dict[str, Any]]


class SandboxApi:
    """Wraps each endpoint in the same steps: latency, auth, rate limit, faults, answer, log."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state

    def endpoint(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def serve(request: Request) -> Response:
            arrived = time.monotonic()
            response, fault = await self.respond(request, handler)
            status = 0 if isinstance(response, DroppedResponse) else response.status_code
            url = request.url
            self.state.record(RequestRecord(arrived, request.method, url.path, url.query, status, fault))
            return response

        return serve

    async def respond(self, request: Request, handler: Handler) -> tuple[Response, str | None]:
        faults = self.state.faults
        if faults.latency_ms > 0:
            await asyncio.sleep(faults.latency_ms / 1000)
        if not self.authorized(request):
            return json_response(403, {"message": "Forbidden"}), None
        wait_seconds = self.rate_limited_for(faults)
        if wait_seconds is not None:
            return self.too_many_requests(faults, wait_seconds), "rate_limit"
        fault = faults.draw_fault(self.state.fault_rng)
        if fault == "429":
            return self.too_many_requests(faults, 1.0), fault
        if fault == "5xx":
            return self.server_error(), fault
        if fault == "drop":
            return DroppedResponse(), fault
        if fault == "slow":
            await asyncio.sleep(faults.slow_seconds)
        response = self.answer(request, handler)
        return (truncated(response) if fault == "truncate" else response), fault

    def answer(self, request: Request, handler: Handler) -> Response:
        try:
            return json_response(200, handler(self.state, request))
        except ApiError as error:
            return json_response(error.status, {"message": error.message})

    def authorized(self, request: Request) -> bool:
        expected = self.state.api_key
        if expected is None:
            return True
        given = request.headers.get("x-api-key", "")
        return hmac.compare_digest(given.encode(), expected.encode())

    def rate_limited_for(self, faults: FaultConfig) -> float | None:
        """Seconds until a slot frees in the sliding 1 s window, or None to admit the request."""
        if not faults.rate_limit_rps:
            return None
        now = time.monotonic()
        admitted = self.state.admitted
        while admitted and admitted[0] <= now - 1.0:
            admitted.popleft()
        if len(admitted) >= faults.rate_limit_rps:
            return admitted[0] + 1.0 - now
        admitted.append(now)
        return None

    def server_error(self) -> Response:
        status, message = self.state.fault_rng.choice(
            ((500, "Internal server error"), (503, "Service Unavailable"))
        )
        return json_response(status, {"message": message})

    def too_many_requests(self, faults: FaultConfig, wait_seconds: float) -> Response:
        rng = self.state.fault_rng
        headers = {}
        if rng.random() < faults.retry_after_share:
            seconds = max(1, math.ceil(wait_seconds))
            if rng.random() < faults.retry_after_http_date_share:
                # HTTP-dates have whole seconds; round up so a client never retries early.
                headers["Retry-After"] = format_datetime(
                    datetime.now(UTC) + timedelta(seconds=seconds + 1), usegmt=True
                )
            else:
                headers["Retry-After"] = str(seconds)
        return json_response(429, {"message": "Too Many Requests"}, headers)


async def not_found(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    return json_response(status, {"message": "Not Found" if status == 404 else "Method Not Allowed"})


def create_app(state: SandboxState) -> Starlette:
    api = SandboxApi(state)
    routes = [
        Route("/v1/leads", api.endpoint(leads_page)),
        Route("/v1/leads/{lead_id}/events", api.endpoint(events_page)),
        Route("/v1/calls/{call_id}", api.endpoint(call_detail)),
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
