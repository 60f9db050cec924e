"""AptenClient: Apten's public REST API over one pooled httpx client.

Plain Python (no Dagster). Pagination, retries, the process-wide rate limit and the bounded
fan-out live here so every caller gets the same behaviour. Returns raw JSON dicts; parsing into
models is `apten_assets.lib.models`' job.

The API key is sent only as the `x-api-key` header to the configured base URL. It never appears
in a log line, an exception, a repr or the stats: redirects are refused rather than followed,
exceptions are built from our own strings (never from httpx request objects), and any text echoed
from the server is redacted before it is shown or cut (see `_Redactor`).

Every answer is bounded (CONTRACT.md, client limits): one request ends by its deadline however
slowly the server sends (`_DeadlineBackend`), a body is decoded while it streams and stops at
APTEN_MAX_BODY_BYTES, JSON nested deeper than APTEN_MAX_JSON_DEPTH is a malformed body rather than
a RecursionError, and a listing stops after APTEN_MAX_PAGES pages.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import queue
import random
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from itertools import accumulate
from typing import Any, NamedTuple, TypeVar
from urllib.parse import quote, urlsplit

import httpcore
import httpx

from apten_assets.lib.config import AptenSettings
from apten_assets.lib.models import may_need_repair

logger = logging.getLogger("apten_assets.client")

T = TypeVar("T")
R = TypeVar("R")

MAX_PAGE_SIZE = 1000
DEFAULT_TIMEOUT = httpx.Timeout(connect=5.0, read=30.0, write=10.0, pool=30.0)
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Requests start at this share of APTEN_MAX_RPS at most (see RequestGate and starts_per_window).
RATE_HEADROOM = 0.98
# Transport failures worth another try: the request may never have reached Apten, or the
# answer was cut off on the way back.
_RETRYABLE_TRANSPORT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
# Of an error answer's body only this much is read: enough for Apten's `message`.
ERROR_BODY_BYTES = 64 * 1024


# --------------------------------------------------------------------------- errors


class AptenError(Exception):
    """Base of every error this client raises. Messages never contain the API key."""

    def __init__(
        self,
        message: str,
        *,
        endpoint: str | None = None,
        resource_id: str | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.resource_id = resource_id
        self.status = status


class AptenHTTPError(AptenError):
    """Apten answered with a status that retrying will not fix (an unexpected 4xx or 5xx)."""


class AptenAuthError(AptenHTTPError):
    """401/403: the key is missing, wrong or lacks access. Never retried."""


class AptenBadRequest(AptenHTTPError):
    """400: Apten rejected the request parameters; the message carries Apten's own `message`."""


class AptenRetriesExhausted(AptenError):
    """Every attempt failed with a retryable status or transport error."""


class AptenProtocolError(AptenError):
    """Apten broke the protocol we rely on: a redirect, a repeating nextToken, a malformed body."""


class AptenMalformedResponse(AptenProtocolError, AptenRetriesExhausted):
    """Every attempt got a body that was not the documented shape (not JSON, wrong keys), or one
    answer's body was over APTEN_MAX_BODY_BYTES or APTEN_MAX_JSON_DEPTH (not retried: the same
    record comes back the same)."""


class AptenUnusableBody(AptenMalformedResponse):
    """One answer's body is over APTEN_MAX_BODY_BYTES or APTEN_MAX_JSON_DEPTH: the same record
    comes back the same, so it is not retried; the pipeline quarantines the item it belongs to."""


# --------------------------------------------------------------------------- small named objects


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter; `Retry-After` is honoured up to a cap."""

    max_attempts: int = 6
    base_delay_seconds: float = 1.0
    max_delay_seconds: float = 60.0
    retry_after_cap_seconds: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"RetryPolicy.max_attempts must be at least 1, got {self.max_attempts}")
        if self.base_delay_seconds < 0 or self.max_delay_seconds < 0 or self.retry_after_cap_seconds < 0:
            raise ValueError("RetryPolicy delays must be 0 or more")

    def backoff_seconds(self, attempt: int) -> float:
        """Delay after failed attempt number `attempt` (1-based): uniform in [0, base * 2**(n-1)]."""
        ceiling = min(self.max_delay_seconds, self.base_delay_seconds * 2 ** (attempt - 1))
        return random.uniform(0.0, ceiling)

    def retry_after_seconds(self, header: str | None, now: datetime | None = None) -> float | None:
        """`Retry-After` as seconds (delta-seconds or HTTP-date form), capped; None when absent."""
        if not header:
            return None
        value = header.strip()
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                return None
            if when.tzinfo is None:
                when = when.replace(tzinfo=UTC)
            seconds = (when - (now or datetime.now(UTC))).total_seconds()
        if seconds != seconds:  # NaN
            return None
        return min(max(seconds, 0.0), self.retry_after_cap_seconds)


@dataclass(frozen=True)
class Endpoint:
    """One API operation, named by its path template (what logs and errors show)."""

    method: str
    template: str
    items_key: str | None = None

    def __str__(self) -> str:
        return f"{self.method} {self.template}"


LIST_LEADS = Endpoint("GET", "/leads", items_key="leads")
LIST_LEAD_EVENTS = Endpoint("GET", "/leads/{leadId}/events", items_key="events")
GET_CALL = Endpoint("GET", "/calls/{callId}")


@dataclass(frozen=True)
class CallFetch:
    """The outcome of `GET /calls/{callId}`: a 404 is `found=False`, not an error."""

    call_id: str
    found: bool
    body: dict[str, Any] | None
    # True when the body's bytes show it holds nothing `models.repair_text` changes (no escaped
    # U+0000 or surrogate, no non-finite number): the step skips the repair's serialisation.
    honest: bool = field(default=False, compare=False)


class ClientStats:
    """Thread-safe counters for one client; `as_metadata()` gives flat values for Dagster metadata."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests_sent = 0
        self.responses_by_status: Counter[int] = Counter()
        self.retries_by_reason: Counter[str] = Counter()
        self.rate_limited_429 = 0
        self.retry_after_wait_seconds = 0.0
        self.backoff_wait_seconds = 0.0
        self.rate_limiter_wait_seconds = 0.0
        # Sum over requests of send -> whole answer read, as this process saw it: the API's own
        # time plus the client's (a thread waiting for the GIL included).
        self.exchange_seconds = 0.0
        self.pages_fetched = 0
        self.calls_not_found = 0
        self.rate_slowdowns = 0

    def record_request(self, limiter_wait_seconds: float) -> None:
        with self._lock:
            self.requests_sent += 1
            self.rate_limiter_wait_seconds += limiter_wait_seconds

    def record_exchange(self, seconds: float) -> None:
        with self._lock:
            self.exchange_seconds += seconds

    def record_response(self, status: int) -> None:
        with self._lock:
            self.responses_by_status[status] += 1
            if status == 429:
                self.rate_limited_429 += 1

    def record_retry(self, reason: str, delay_seconds: float, from_retry_after: bool) -> None:
        with self._lock:
            self.retries_by_reason[reason] += 1
            if from_retry_after:
                self.retry_after_wait_seconds += delay_seconds
            else:
                self.backoff_wait_seconds += delay_seconds

    def record_slowdown(self) -> None:
        with self._lock:
            self.rate_slowdowns += 1

    def record_page(self) -> None:
        with self._lock:
            self.pages_fetched += 1

    def record_call_not_found(self) -> None:
        with self._lock:
            self.calls_not_found += 1

    @property
    def retries(self) -> int:
        with self._lock:
            return sum(self.retries_by_reason.values())

    def as_metadata(self) -> dict[str, int | float]:
        with self._lock:
            flat: dict[str, int | float] = {
                "api_requests_sent": self.requests_sent,
                "api_retries": sum(self.retries_by_reason.values()),
                "api_429_responses": self.rate_limited_429,
                "api_retry_after_wait_seconds": round(self.retry_after_wait_seconds, 3),
                "api_backoff_wait_seconds": round(self.backoff_wait_seconds, 3),
                "api_rate_limiter_wait_seconds": round(self.rate_limiter_wait_seconds, 3),
                "api_exchange_seconds": round(self.exchange_seconds, 3),
                "api_rate_slowdowns": self.rate_slowdowns,
                "api_pages_fetched": self.pages_fetched,
                "api_calls_not_found": self.calls_not_found,
            }
            for status, n in sorted(self.responses_by_status.items()):
                flat[f"api_responses_{status}"] = n
            for reason, n in sorted(self.retries_by_reason.items()):
                flat[f"api_retries_{reason}"] = n
            return flat

    def __repr__(self) -> str:
        return f"ClientStats({self.as_metadata()})"


# --------------------------------------------------------------------------- process-wide limiter


def starts_per_window(max_rps: float) -> int:
    """How many request starts the gate lets into any one second: RATE_HEADROOM of `max_rps` and
    at least one below it (the one left over absorbs jitter between our start and Apten's count),
    never fewer than one."""
    return max(1, min(math.floor(RATE_HEADROOM * max_rps), math.ceil(max_rps) - 1))


class RequestGate:
    """Paced request starts plus a bound on requests in flight, shared across threads.

    When a request may start is decided by three rules:

    * even spacing: starts are 1/N s apart, N = `starts_per_window(max_rps)`, so steady traffic
      never bunches (a bucket that starts full would burst 2x at a window edge). A start a little
      late (sleep overshoot, a GIL switch) is made up by the next one; a longer stall is not:
      making up several slots would send them as a burst.
    * a sliding window: no 1-second window counts more than N requests. A request counts at its
      start, or later when its answer shows it reached Apten later: at its answer's arrival minus
      a fast recent round trip. So requests that a stall held back (a batch write holding
      the GIL, a busy machine or server) and that then reached Apten together are counted where
      Apten counted them, and the second after them gets fewer starts, not a 429.
    * after a 429 (Apten counts more than we do: its limit is below APTEN_MAX_RPS, or another
      client shares the key) N drops by 5%, at most once a second and to a quarter at least,
      and climbs back by 1% of the limit every 2 s without one.

    Several clients in one process share one gate per base URL (see `_acquire_gate`); while
    clients with different settings are open, the strictest rate and concurrency win. Above
    `WINDOW_MAX_RPS` only the spacing applies (no real limit is that high; it is "unlimited").
    """

    SLOWDOWN = 0.95
    MIN_FACTOR = 0.25
    RECOVER_STEP = 0.01
    RECOVER_EVERY_SECONDS = 2.0
    MIN_GAP_SHARE = 0.5
    CATCH_UP_SHARE = 0.5
    WINDOW_MAX_RPS = 5000.0
    ROUND_TRIPS_KEPT = 32

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next_start = 0.0
        self._hold_until = 0.0
        # When each request of the last second counts (sorted), and the latest round trips.
        self._counted: list[float] = []
        self._round_trips: deque[float] = deque(maxlen=self.ROUND_TRIPS_KEPT)
        self._in_flight = 0
        self._owners: dict[int, tuple[float, int]] = {}
        self._factor = 1.0
        self._factor_changed = 0.0

    def register(self, owner: int, max_rps: float, max_concurrency: int) -> None:
        with self._cond:
            self._owners[owner] = (max_rps, max_concurrency)
            self._cond.notify_all()

    def unregister(self, owner: int) -> bool:
        """Forget an owner; True when nobody uses this gate any more."""
        with self._cond:
            self._owners.pop(owner, None)
            self._cond.notify_all()
            return not self._owners

    def _limits(self) -> tuple[float, int]:
        if not self._owners:
            return 1.0, 1
        return min(r for r, _ in self._owners.values()), min(c for _, c in self._owners.values())

    @property
    def rate_factor(self) -> float:
        """The share of the configured rate the gate allows now (1.0 unless a 429 lowered it)."""
        with self._cond:
            self._recover(time.monotonic())
            return self._factor

    def hold_until(self, monotonic_deadline: float) -> None:
        """Start nothing before this moment (Apten asked us to wait with Retry-After)."""
        with self._cond:
            self._hold_until = max(self._hold_until, monotonic_deadline)

    def slow_down(self) -> bool:
        """Apten answered 429: lower the rate. False when it was lowered less than a second ago
        (one burst of 429s is one signal) or is at its floor already."""
        with self._cond:
            now = time.monotonic()
            self._recover(now)
            if self._factor <= self.MIN_FACTOR or now - self._factor_changed < 1.0:
                return False
            self._factor = max(self.MIN_FACTOR, self._factor * self.SLOWDOWN)
            self._factor_changed = now
            return True

    def _recover(self, now: float) -> None:
        if self._factor >= 1.0:
            return
        steps = int((now - self._factor_changed) // self.RECOVER_EVERY_SECONDS)
        if steps > 0:
            self._factor = min(1.0, self._factor + steps * self.RECOVER_STEP)
            self._factor_changed += steps * self.RECOVER_EVERY_SECONDS

    def _wait_for_start(self, now: float) -> tuple[float, float]:
        """(0, spacing) to start now, or (seconds to wait before asking again, spacing). Lock held."""
        self._recover(now)
        rate = self._limits()[0] * self._factor
        cap = starts_per_window(rate)
        spacing = 1.0 / cap
        due = max(self._next_start, self._hold_until)
        if rate <= self.WINDOW_MAX_RPS:
            counted = self._counted
            expired = bisect.bisect_right(counted, now - 1.0)
            if expired:
                del counted[:expired]
            if len(counted) >= cap:
                due = max(due, counted[-cap] + 1.0)
            if counted:
                due = max(due, counted[-1] + spacing * self.MIN_GAP_SHARE)
        if due > now:
            return due - now, spacing
        if rate <= self.WINDOW_MAX_RPS:
            bisect.insort(self._counted, now)
        self._next_start = max(self._next_start, now - spacing * self.CATCH_UP_SHARE) + spacing
        return 0.0, spacing

    def _answered(self, started: float, spacing: float) -> None:
        """The request started at `started` has its answer: move its count later if it reached
        Apten later than it started. Lock held."""
        now = time.monotonic()
        round_trip = now - started
        recent = sorted(self._round_trips)
        # A fast recent round trip (the lower quartile: a lone fast 404 is not the rule).
        usual = recent[len(recent) // 4] if recent else round_trip
        self._round_trips.append(round_trip)
        reached_by = now - min(usual, round_trip)
        if reached_by - started <= spacing * self.MIN_GAP_SHARE:
            return
        counted = self._counted
        at = bisect.bisect_left(counted, started)
        if at < len(counted) and counted[at] == started:
            del counted[at]
            bisect.insort(counted, reached_by)

    def holding(self) -> bool:
        """True while a Retry-After hold is still in the future."""
        with self._cond:
            return self._hold_until > time.monotonic()

    @contextmanager
    def slot(self, until: float | None = None) -> Iterator[float]:
        """Wait for a free concurrency slot, then for this request's start; yields seconds waited.
        The request is made inside the `with` block, so its end is when its answer came in.
        Raises `GateTimeout` instead of starting after `until` (a monotonic time), if given."""
        began = time.monotonic()
        with self._cond:
            while self._in_flight >= self._limits()[1]:
                if until is not None and time.monotonic() >= until:
                    raise GateTimeout("no request slot before the time budget ran out")
                self._cond.wait(None if until is None else max(0.0, until - time.monotonic()))
            self._in_flight += 1
        started = None
        try:
            # Reserve the start only once a slot is held, so the start is not delayed past it.
            while True:
                with self._cond:
                    now = time.monotonic()
                    wait_seconds, spacing = self._wait_for_start(now)
                if wait_seconds <= 0:
                    started = now
                    break
                if until is not None and now + wait_seconds > until:
                    raise GateTimeout("the rate limit or a Retry-After would start it after the time budget")
                time.sleep(wait_seconds)
            yield started - began
        finally:
            with self._cond:
                if started is not None:
                    self._answered(started, spacing)
                self._in_flight -= 1
                self._cond.notify()


class GateTimeout(Exception):
    """A request could not start before its caller's time budget ran out."""


_GATES: dict[str, RequestGate] = {}
_GATES_LOCK = threading.Lock()


def _acquire_gate(base_url: str, owner: int, max_rps: float, max_concurrency: int) -> RequestGate:
    with _GATES_LOCK:
        gate = _GATES.setdefault(base_url.rstrip("/"), RequestGate())
        gate.register(owner, max_rps, max_concurrency)
        return gate


def _release_gate(base_url: str, owner: int) -> None:
    with _GATES_LOCK:
        key = base_url.rstrip("/")
        gate = _GATES.get(key)
        # A gate still holding for a Retry-After stays, so the next client in this process waits too.
        if gate is not None and gate.unregister(owner) and not gate.holding():
            del _GATES[key]


# --------------------------------------------------------------------------- helpers


def to_api_timestamp(value: datetime) -> str:
    """ISO 8601 UTC with milliseconds and `Z`; sub-millisecond digits are dropped, never rounded up,
    so an inclusive `>=` cursor never skips a record."""
    if value.tzinfo is None:
        raise ValueError(f"timestamps sent to Apten must be timezone-aware, got naive {value.isoformat()}")
    utc = value.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def _path_segment(resource_id: str) -> str:
    """Percent-encode an opaque id as one path segment ('.' and '..' too, so they stay ids)."""
    if not isinstance(resource_id, str) or not resource_id:
        raise ValueError(f"ids must be non-empty strings, got {resource_id!r}")
    segment = quote(resource_id, safe="")
    return segment.replace(".", "%2E") if set(segment) == {"."} else segment


def _check_page_size(page_size: int) -> None:
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be between 1 and {MAX_PAGE_SIZE}, got {page_size}")


class _BadBody(Exception):
    """The body is not what the endpoint documents; retried like a 5xx."""


class _FinalBadBody(_BadBody):
    """The body is over a limit (size, nesting): retrying gets the same, so it is not retried."""


# --------------------------------------------------------------------------- limits on one answer

_deadline = threading.local()


class _DeadlineStream(httpcore.NetworkStream):
    """A socket whose every wait ends by the calling thread's request deadline (`_deadline.at`), so
    a server trickling bytes inside the read timeout cannot hold a request past it."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _until_deadline(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _until_deadline(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.NetworkStream:
        timeout = _until_deadline(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._backend = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        timeout = _until_deadline(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_tcp(host, port, timeout, local_address, socket_options))

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        timeout = _until_deadline(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._backend.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def _until_deadline(timeout: float | None, error: type[Exception]) -> float | None:
    at = getattr(_deadline, "at", None)
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise error("the request deadline passed")
    return left if timeout is None else min(timeout, left)


def _deadline_transport(limits: httpx.Limits) -> httpx.HTTPTransport:
    """httpx's own transport over a connection pool whose sockets keep the request deadline.

    httpx has no argument for httpcore's network backend, so the pool it builds is replaced by
    the same pool with ours (tests/lib/test_client.py pins that the deadline holds).
    """
    ssl_context = httpx.create_ssl_context()
    transport = httpx.HTTPTransport(verify=ssl_context, limits=limits)
    transport._pool = httpcore.ConnectionPool(
        ssl_context=ssl_context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=_DeadlineBackend(),
    )
    return transport


def json_depth_over(raw: bytes, limit: int) -> bool:
    """True when the JSON text nests arrays/objects deeper than `limit`.

    Cheap where it matters: a body with fewer brackets than `limit` is not scanned; otherwise
    strings are cut out (their brackets are text) and the brackets left are counted.
    """
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    brackets = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    return max(accumulate(1 if b in b"[{" else -1 for b in brackets), default=0) > limit


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class Decoded(NamedTuple):
    """A JSON body, and whether it holds nothing `models.repair_text` would change: its bytes show
    no escape or byte that could decode to unstorable text (`models.may_need_repair`), and the
    decoder met no number no warehouse stores (`NaN`, `Infinity`, an integer past 4,300 digits, a
    float past a double's range)."""

    body: Any
    honest: bool


def decode_json(raw: bytes, max_depth: int) -> Decoded:
    """JSON from bytes; a body too deeply nested is a `_FinalBadBody`, never a RecursionError."""
    if json_depth_over(raw, max_depth):
        raise _FinalBadBody(f"JSON nested deeper than {max_depth} levels (APTEN_MAX_JSON_DEPTH)")
    non_finite = False

    def parse_int(text: str) -> int | float:
        # Python turns at most sys.get_int_max_str_digits() digits (4,300) into an int, a guard
        # against quadratic parsing; json.loads would refuse the whole body, every attempt, and
        # the record would stop its step for good. Longer, the number is the float it reads as
        # (infinite), which no warehouse stores: the step's repair (`models.repair_text`) makes it
        # null wherever it is, counted as a field warning.
        nonlocal non_finite
        try:
            return int(text)
        except ValueError:
            non_finite = True
            return float(text)

    def parse_constant(name: str) -> float:
        # `NaN`, `Infinity`, `-Infinity`: not JSON, but Python's decoder reads them.
        nonlocal non_finite
        non_finite = True
        return float(name)

    def parse_float(text: str) -> float:
        # Valid JSON past a double's range (`1e400`) reads as an infinity.
        nonlocal non_finite
        value = float(text)
        if not math.isfinite(value):
            non_finite = True
        return value

    try:
        body = json.loads(raw, parse_int=parse_int, parse_float=parse_float, parse_constant=parse_constant)
    except RecursionError:
        raise _FinalBadBody("JSON nested too deeply to decode") from None
    except ValueError:
        raise _BadBody("body is not valid JSON") from None
    return Decoded(body, not (non_finite or may_need_repair(raw)))


class _Redactor:
    """Takes the API key out of text: whole, and the pieces a cut can leave (any prefix or suffix
    of the key of `MIN_PIECE` characters or more), so an excerpt is safe wherever it was cut."""

    MIN_PIECE = 8

    def __init__(self, secret: str | None) -> None:
        self.secret = secret or None
        self._pattern: re.Pattern[str] | None = None
        if self.secret:
            n = len(self.secret)
            sizes = range(n - 1, min(self.MIN_PIECE, n) - 1, -1)
            pieces = [self.secret, *(self.secret[:k] for k in sizes), *(self.secret[-k:] for k in sizes)]
            self._pattern = re.compile("|".join(re.escape(p) for p in pieces))

    def text(self, text: str) -> str:
        return self._pattern.sub("***", text) if self._pattern is not None else text

    def body(self, raw: bytes, body: Any) -> Any:
        """The decoded body with the key taken out of every string; only walked when the raw
        bytes hold the key (almost never), so an honest body costs one byte search."""
        if self.secret is None or self.secret.encode() not in raw:
            return body
        return self._walk(body)

    def _walk(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            return [self._walk(v) for v in value]
        if isinstance(value, dict):
            return {self.text(k): self._walk(v) for k, v in value.items()}
        return value


@dataclass
class TokenPaginator:
    """Follows `nextToken` until it is null, whatever the page size (filtered pages can be empty).

    A token seen before means the cursor went round in a circle: that is an error, not a loop.
    """

    endpoint: Endpoint
    resource_id: str | None = None
    _seen: set[str] = field(default_factory=set, init=False, repr=False)

    def items(self, body: dict[str, Any]) -> list[Any]:
        return body[self.endpoint.items_key]

    def check(self, body: Any) -> None:
        """Raise _BadBody unless the page is `{<items_key>: [...], "nextToken": str|null}`."""
        key = self.endpoint.items_key
        if not isinstance(body, dict):
            raise _BadBody(f"body is a JSON {type(body).__name__}, not an object")
        if not isinstance(body.get(key), list):
            raise _BadBody(f"body has no {key!r} list")
        token = body.get("nextToken")
        if token is not None and not isinstance(token, str):
            raise _BadBody(f"nextToken is a {type(token).__name__}, not a string or null")

    def next_token(self, body: dict[str, Any]) -> str | None:
        token = body.get("nextToken")
        if token is None:
            return None
        if token in self._seen:
            where = f" for {self.resource_id!r}" if self.resource_id else ""
            raise AptenProtocolError(
                f"{self.endpoint}{where}: Apten returned a nextToken it had already returned "
                f"(after {len(self._seen)} pages); stopping instead of paging in a circle",
                endpoint=str(self.endpoint),
                resource_id=self.resource_id,
            )
        self._seen.add(token)
        return token


def _dedupe_key(endpoint: Endpoint, item: Any) -> Any:
    """Records come back again on inclusive cursors; events are keyed by (type, id) as Apten advises."""
    if not isinstance(item, dict) or not isinstance(item.get("id"), str):
        return None
    if endpoint is LIST_LEAD_EVENTS:
        return (item.get("type"), item["id"])
    return item["id"]


# --------------------------------------------------------------------------- the client


class AptenClient:
    """One configured, pooled, thread-safe client for Apten's public API.

    Use as a context manager or call `close()`. Safe to share between threads.
    """

    def __init__(
        self,
        settings: AptenSettings,
        *,
        retry: RetryPolicy | None = None,
        timeout: httpx.Timeout | None = None,
        transport: httpx.BaseTransport | None = None,
        stop_at: float | None = None,
    ) -> None:
        """`stop_at`: a `time.monotonic()` moment no request of this client runs past (a sensor
        tick's budget); requests that would are not started or are cut, and fail with
        AptenRetriesExhausted."""
        api_key = settings.require_api_key()
        self.settings = settings
        self.retry = retry or RetryPolicy(base_delay_seconds=settings.retry_base_delay_seconds)
        if timeout is None:
            timeout = httpx.Timeout(
                connect=DEFAULT_TIMEOUT.connect,
                read=settings.http_read_timeout_seconds,
                write=DEFAULT_TIMEOUT.write,
                pool=DEFAULT_TIMEOUT.pool,
            )
        self.stats = ClientStats()
        self.stop_at = stop_at
        self._redactor = _Redactor(api_key)
        self._closed = False
        headers = {"accept": "application/json", "user-agent": "apten-assets"}
        if api_key:
            headers["x-api-key"] = api_key
        limits = httpx.Limits(
            max_connections=settings.max_concurrency, max_keepalive_connections=settings.max_concurrency
        )
        self._http = httpx.Client(
            base_url=settings.base_url.rstrip("/"),
            headers=headers,
            timeout=timeout,
            limits=limits,
            follow_redirects=False,
            transport=transport or _deadline_transport(limits),
        )
        self._gate = _acquire_gate(settings.base_url, id(self), settings.max_rps, settings.max_concurrency)

    def __repr__(self) -> str:
        s = self.settings
        return (
            f"AptenClient(base_url={s.base_url!r}, max_rps={s.max_rps}, max_concurrency={s.max_concurrency})"
        )

    def __enter__(self) -> AptenClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._http.close()
        _release_gate(self.settings.base_url, id(self))

    # ------------------------------------------------------------------ endpoints

    def iter_leads(
        self,
        updated_since: datetime | None = None,
        created_since: datetime | None = None,
        page_size: int = MAX_PAGE_SIZE,
    ) -> Iterator[dict[str, Any]]:
        """`GET /leads`: every lead with updatedAt/createdAt >= the given cursors, each once."""
        if updated_since is None and created_since is None:
            raise ValueError("iter_leads needs updated_since and/or created_since (Apten requires one)")
        _check_page_size(page_size)
        params: dict[str, str | int] = {"limit": page_size}
        if updated_since is not None:
            params["updatedSince"] = to_api_timestamp(updated_since)
        if created_since is not None:
            params["createdSince"] = to_api_timestamp(created_since)
        return self._paginate(LIST_LEADS, "/leads", params, resource_id=None)

    def iter_lead_events(
        self,
        lead_id: str,
        since: datetime,
        types: Iterable[str] | None = None,
        page_size: int = MAX_PAGE_SIZE,
    ) -> Iterator[dict[str, Any]]:
        """`GET /leads/{leadId}/events`: events with updatedAt >= since, each once, any type."""
        _check_page_size(page_size)
        path = f"/leads/{_path_segment(lead_id)}/events"
        params: dict[str, str | int] = {"since": to_api_timestamp(since), "limit": page_size}
        if isinstance(types, str):
            types = [types]
        if types is not None:
            wanted = [t for t in types if t]
            if wanted:
                params["types"] = ",".join(wanted)
        return self._paginate(LIST_LEAD_EVENTS, path, params, resource_id=lead_id)

    def get_call(self, call_id: str) -> CallFetch:
        """`GET /calls/{callId}`; a 404 is `CallFetch(found=False)`."""
        path = f"/calls/{_path_segment(call_id)}"
        answer = self._get(GET_CALL, path, None, resource_id=call_id, check=_check_object, not_found_ok=True)
        if answer is None:
            self.stats.record_call_not_found()
            return CallFetch(call_id=call_id, found=False, body=None)
        return CallFetch(call_id=call_id, found=True, body=answer.body, honest=answer.honest)

    def get_calls(self, call_ids: Iterable[str]) -> Iterator[CallFetch]:
        """`get_call` for many ids at once, bounded by max_concurrency; yields in completion order."""
        return self.map_concurrent(self.get_call, call_ids)

    def map_concurrent(self, fn: Callable[[T], R], items: Iterable[T], *, read_ahead: int = 0) -> Iterator[R]:
        """Run `fn` over `items` on max_concurrency threads, yielding results as they complete.

        Items are pulled lazily: at most `read_ahead` (and at least twice max_concurrency) are
        started and not yet taken by the caller, so a 100,000-item input never sits in memory as
        futures. The threads keep working through those while the caller is busy with a result (a
        batch write), which is what a larger `read_ahead` buys: without it the fan-out stops two
        rounds after the caller does. The first exception stops the fan-out (queued work is
        cancelled, running work finishes) and is re-raised.
        """
        workers = self.settings.max_concurrency
        window = max(workers * 2, read_ahead)
        source = iter(items)
        # Futures land here as they finish (on the worker's thread); the caller takes them in
        # that order. A set of waiters on every pending future (`wait`) would cost O(window) per
        # result once the window is thousands.
        finished: queue.SimpleQueue[Future[R]] = queue.SimpleQueue()
        live: set[Future[R]] = set()
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="apten-api")
        try:
            exhausted = False
            while True:
                while not exhausted and len(live) < window:
                    try:
                        item = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    future = pool.submit(fn, item)
                    live.add(future)
                    future.add_done_callback(finished.put)
                if not live:
                    return
                future = finished.get()
                live.discard(future)
                yield future.result()
        finally:
            for future in live:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ internals

    def _paginate(
        self, endpoint: Endpoint, path: str, params: dict[str, str | int], resource_id: str | None
    ) -> Iterator[dict[str, Any]]:
        paginator = TokenPaginator(endpoint, resource_id)
        seen: set[Any] = set()
        page_params = dict(params)
        max_pages = self.settings.max_pages
        for _ in range(max_pages):
            answer = self._get(endpoint, path, page_params, resource_id=resource_id, check=paginator.check)
            assert answer is not None
            body = answer.body
            self.stats.record_page()
            for item in paginator.items(body):
                key = _dedupe_key(endpoint, item)
                if key is not None:
                    if key in seen:
                        continue
                    seen.add(key)
                yield item
            token = paginator.next_token(body)
            if token is None:
                return
            page_params = {**params, "nextToken": token}
        raise AptenProtocolError(
            f"{self._describe(endpoint, resource_id)}: Apten still returned a nextToken after {max_pages:,} "
            "pages (APTEN_MAX_PAGES); stopping instead of paging forever. Raise APTEN_MAX_PAGES only if "
            "this listing is really that long.",
            endpoint=str(endpoint),
            resource_id=resource_id,
        )

    def redact(self, text: str) -> str:
        """`text` with the API key taken out: for anything quoting an answer that is logged or stored."""
        return self._redact(text)

    def _redact(self, text: str) -> str:
        return self._redactor.text(text)

    def _describe(self, endpoint: Endpoint, resource_id: str | None) -> str:
        if resource_id is None:
            return str(endpoint)
        name = endpoint.template.rsplit("{", 1)[-1].split("}", 1)[0]
        return f"{endpoint} ({name}={resource_id!r})"

    def _get(
        self,
        endpoint: Endpoint,
        path: str,
        params: dict[str, str | int] | None,
        *,
        resource_id: str | None,
        check: Callable[[Any], None],
        not_found_ok: bool = False,
    ) -> Decoded | None:
        """One logical request with retries. Returns the checked JSON body, or None for an allowed 404."""
        if self._closed:
            raise AptenError("this AptenClient is closed")
        what = self._describe(endpoint, resource_id)
        policy = self.retry
        last_problem = ""
        last_status: int | None = None
        bad_body = False
        attempts = 0
        for attempt in range(1, policy.max_attempts + 1):
            retry_after: float | None = None
            try:
                with self._gate.slot(until=self.stop_at) as waited:
                    attempts = attempt
                    self.stats.record_request(waited)
                    deadline = time.monotonic() + self.settings.request_deadline_seconds
                    if self.stop_at is not None:
                        deadline = min(deadline, self.stop_at)
                    sent = time.monotonic()
                    try:
                        try:
                            status, headers, raw = self._exchange(endpoint, path, params, deadline)
                        finally:
                            self.stats.record_exchange(time.monotonic() - sent)
                    except _RETRYABLE_TRANSPORT_ERRORS as exc:
                        reason = type(exc).__name__
                        if time.monotonic() >= deadline:
                            reason = "deadline"
                            exc = TimeoutError(
                                "no complete answer by the request deadline "
                                f"(APTEN_REQUEST_DEADLINE_SECONDS={self.settings.request_deadline_seconds:g}"
                                f"{' or the caller budget' if self.stop_at is not None else ''})"
                            )
                        last_problem = self._redact(f"{reason}: {exc}" if str(exc) else reason)
                        last_status, bad_body = None, False
                        logger.info("%s failed: %s (attempt %d)", endpoint, reason, attempt)
                    except httpx.DecodingError:
                        reason = "bad_body"
                        last_problem = "the response body could not be decoded"
                        last_status, bad_body = None, True
                    except _FinalBadBody as exc:
                        raise self._unusable(endpoint, resource_id, 200, exc) from None
                    except httpx.HTTPError as exc:
                        # Anything else httpx raises (an invalid URL or header) may quote the request:
                        # our own message instead, redacted, without the original chained.
                        raise AptenError(
                            self._redact(
                                f"{what}: the request could not be made: {type(exc).__name__}: {exc}"
                            ),
                            endpoint=str(endpoint),
                            resource_id=resource_id,
                        ) from None
                    else:
                        self.stats.record_response(status)
                        logger.debug("%s -> %d (attempt %d)", endpoint, status, attempt)
                        if 200 <= status < 300:
                            try:
                                decoded = decode_json(raw, self.settings.max_json_depth)
                                body = self._redactor.body(raw, decoded.body)
                                check(body)
                                return decoded._replace(body=body)
                            except _BadBody as exc:
                                if isinstance(exc, _FinalBadBody):
                                    raise self._unusable(endpoint, resource_id, status, exc) from None
                                reason = "bad_body"
                                ctype = headers.get("content-type", "no content-type")
                                last_problem = self._redact(
                                    f"HTTP {status} with a malformed body ({exc}; {ctype})"
                                )
                                last_status, bad_body = status, True
                                logger.info(
                                    "%s -> %d with a malformed body (attempt %d)", endpoint, status, attempt
                                )
                        else:
                            self._raise_for_final_status(
                                endpoint, what, status, headers, raw, resource_id, not_found_ok
                            )
                            if status == 404:
                                return None
                            reason = f"http_{status}"
                            last_problem = f"HTTP {status}"
                            last_status, bad_body = status, False
                            retry_after = policy.retry_after_seconds(headers.get("retry-after"))
                            if retry_after is not None:
                                # Apten asked everyone to wait: hold every request of this process to
                                # this base URL, at once and even when this was the last attempt.
                                self._gate.hold_until(time.monotonic() + retry_after)
                            if status == 429 and self._gate.slow_down():
                                self.stats.record_slowdown()
                                logger.info(
                                    "%s -> 429: slowing down to %.0f%% of APTEN_MAX_RPS",
                                    endpoint,
                                    100 * self._gate.rate_factor,
                                )
            except GateTimeout:
                last_problem = last_problem or "not started"
                break
            if attempt == policy.max_attempts:
                break
            delay = retry_after if retry_after is not None else policy.backoff_seconds(attempt)
            if self.stop_at is not None and time.monotonic() + delay >= self.stop_at:
                break
            self.stats.record_retry(reason, delay, from_retry_after=retry_after is not None)
            logger.info(
                "%s: %s; retry %d/%d in %.2f s", endpoint, reason, attempt + 1, policy.max_attempts, delay
            )
            time.sleep(delay)
        error = AptenMalformedResponse if bad_body else AptenRetriesExhausted
        if attempts < policy.max_attempts:
            message = (
                f"{what} stopped after {attempts} of {policy.max_attempts} attempts: the time budget ran out"
            )
        else:
            message = f"{what} failed after {attempts} attempts"
        raise error(
            f"{message}; last: {last_problem or 'none'}",
            endpoint=str(endpoint),
            resource_id=resource_id,
            status=last_status,
        )

    def _unusable(
        self, endpoint: Endpoint, resource_id: str | None, status: int, problem: _FinalBadBody
    ) -> AptenUnusableBody:
        return AptenUnusableBody(
            f"{self._describe(endpoint, resource_id)}: HTTP {status} with a body that cannot be used: "
            f"{problem}; not retried",
            endpoint=str(endpoint),
            resource_id=resource_id,
            status=status,
        )

    def _exchange(
        self, endpoint: Endpoint, path: str, params: dict[str, str | int] | None, deadline: float
    ) -> tuple[int, httpx.Headers, bytes]:
        """One HTTP exchange by `deadline` (monotonic): status, headers and the decoded body.

        The body is decoded while it streams and counted as it grows, so an answer over
        APTEN_MAX_BODY_BYTES (a gzip bomb too) stops within one network read of the limit. Of an
        error answer only the first ERROR_BODY_BYTES are kept.
        """
        _deadline.at = deadline
        try:
            with self._http.stream(endpoint.method, path, params=params) as response:
                status = response.status_code
                ok = 200 <= status < 300
                limit = self.settings.max_body_bytes if ok else ERROR_BODY_BYTES
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > limit:
                        if ok:
                            raise _FinalBadBody(
                                f"body over {limit:,} bytes once decoded (APTEN_MAX_BODY_BYTES)"
                            )
                        chunks.append(chunk[: limit - size])
                        break
                    chunks.append(chunk)
                    if time.monotonic() >= deadline:
                        # Only reachable with a caller's own transport; ours stops reads itself.
                        raise httpx.ReadTimeout("the request deadline passed")
                return status, response.headers, b"".join(chunks)
        finally:
            _deadline.at = None

    def _raise_for_final_status(
        self,
        endpoint: Endpoint,
        what: str,
        status: int,
        headers: httpx.Headers,
        raw: bytes,
        resource_id: str | None,
        not_found_ok: bool,
    ) -> None:
        """Raise for statuses that retrying will not change; return for retryable ones and allowed 404s."""
        ctx = {"endpoint": str(endpoint), "resource_id": resource_id, "status": status}
        if status in RETRY_STATUSES or (status == 404 and not_found_ok):
            return
        if 300 <= status < 400:
            location = headers.get("location", "")
            target = urlsplit(location).hostname or urlsplit(self.settings.base_url).hostname
            raise AptenProtocolError(
                f"{what}: Apten answered HTTP {status} redirecting to host {target!r}; redirects are "
                "not followed so the API key never goes to another host. Check APTEN_BASE_URL.",
                **ctx,
            )
        if status in (401, 403):
            raise AptenAuthError(
                f"{what}: Apten answered HTTP {status} (key missing, invalid or not allowed): "
                "check APTEN_API_KEY",
                **ctx,
            )
        api_message = _api_message(raw, self._redact, self.settings.max_json_depth)
        if status == 400:
            raise AptenBadRequest(f"{what}: Apten rejected the request (HTTP 400): {api_message}", **ctx)
        raise AptenHTTPError(f"{what}: Apten answered HTTP {status}: {api_message}", **ctx)


def _check_object(body: Any) -> None:
    if not isinstance(body, dict):
        raise _BadBody(f"body is a JSON {type(body).__name__}, not an object")


def _api_message(raw: bytes, redact: Callable[[str], str], max_depth: int) -> str:
    """Apten's error `message` if the body has one, else a short excerpt of the body; redacted
    before it is cut, so no cut leaves a piece of the key behind."""
    try:
        body = decode_json(raw, max_depth).body
    except _BadBody:
        body = None
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return redact(body["message"])[:500]
    text = redact(raw.decode("utf-8", errors="replace").strip())
    return text[:200] if text else "(empty body)"


__all__ = [
    "DEFAULT_TIMEOUT",
    "GET_CALL",
    "LIST_LEADS",
    "LIST_LEAD_EVENTS",
    "AptenAuthError",
    "AptenBadRequest",
    "AptenClient",
    "AptenError",
    "AptenHTTPError",
    "AptenMalformedResponse",
    "AptenProtocolError",
    "AptenRetriesExhausted",
    "AptenUnusableBody",
    "CallFetch",
    "ClientStats",
    "Endpoint",
    "GateTimeout",
    "RequestGate",
    "RetryPolicy",
    "TokenPaginator",
    "to_api_timestamp",
]
