"""The late-summary sensor's plain logic: which pending calls to ask Apten about again, and what to refresh.

No Dagster here. The warehouse says which calls are still `pending` (it is the source of truth);
the sensor's cursor only remembers, per call, when the sensor itself last asked Apten and when it
last requested a refresh run, so a lost cursor costs a few extra look-ups, never a call.

A pending call is due for a look-up when at least its recheck interval has passed since the later
of its last fetch by a run (`calls.last_fetched_at`) and the sensor's own last look-up. The interval
starts at APTEN_SUMMARY_RECHECK_MINUTES and doubles with the call's age (a summary still missing
after hours is unlikely to show up within minutes), capped at `MAX_RECHECK_INTERVAL`. A recheck of
0 turns the backoff off: every pending call is due on every tick. Each tick asks about at most
`checks_per_tick(max_rps)` due calls, going round the due calls in call-id order from where the
last tick stopped, so a backlog larger than one tick is worked through in turn.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx

from apten_assets.lib.client import AptenAuthError, AptenClient, AptenError, CallFetch, RetryPolicy
from apten_assets.lib.config import AptenSettings
from apten_assets.lib.models import Call, MalformedRecord
from apten_assets.warehouse import PendingCall

CURSOR_VERSION = 1
# Seconds of API work one tick may plan for: Dagster stops a tick after 60 s, and a short tick
# (about 10 s with the warehouse read) keeps the daemon free for other sensors.
CHECK_BUDGET_SECONDS = 6.0
MAX_CHECKS_PER_TICK = 1000
# The backoff starts doubling the interval once a call ended this long ago ...
BACKOFF_AFTER = timedelta(hours=1)
# ... and never waits longer than this between two look-ups.
MAX_RECHECK_INTERVAL = timedelta(hours=3)
# A refresh run requested for a call that is still pending this much later is requested again
# (the first run failed or was never launched).
REQUEST_AGAIN_AFTER = timedelta(minutes=30)
# Run config names at most this many calls; more calls on one day make several runs.
MAX_CALLS_PER_RUN = 1000
# Calls given up on per tick (each becomes one look-up inside the refresh run).
MAX_GIVE_UPS_PER_TICK = 2000
# Cursor entries kept per kind; past this the oldest are forgotten (those calls are asked again sooner).
MAX_CURSOR_ENTRIES = 10000


def checks_per_tick(max_rps: float, budget_seconds: float = CHECK_BUDGET_SECONDS) -> int:
    """How many calls one tick may ask about: what APTEN_MAX_RPS allows in the budget, capped."""
    return max(1, min(MAX_CHECKS_PER_TICK, int(max_rps * budget_seconds)))


def recheck_interval(age: timedelta, recheck: timedelta) -> timedelta:
    """Least time between two look-ups of a call that ended `age` ago (0 when backoff is off)."""
    if recheck <= timedelta(0):
        return timedelta(0)
    doublings = 0 if age < BACKOFF_AFTER else int(math.log2(age / BACKOFF_AFTER))
    grown = recheck * 2 ** min(doublings, 32)
    return max(recheck, min(grown, MAX_RECHECK_INTERVAL))


def call_key(call_id: str) -> str:
    """A short stand-in for a call id in the cursor (8 hex chars); a rare collision only moves a
    look-up earlier or later, since the warehouse decides what is pending."""
    return hashlib.blake2b(call_id.encode(), digest_size=4).hexdigest()


def call_end(call: PendingCall) -> datetime | None:
    """When the call ended, as the calls run judges it (end, else start)."""
    return call.ended_at or call.created_at


# --------------------------------------------------------------------------- cursor


@dataclass
class Requested:
    at: datetime
    attempt: int


@dataclass
class SensorCursor:
    """What the sensor remembers between ticks, keyed by `call_key`.

    `checked`: when the sensor last asked Apten about a call, kept only while that look-up still
    holds the call back (its recheck interval). `requested`: when a refresh run was requested for a
    call still pending. `resume_after`: the call id the last tick's look-ups stopped at.
    Serialized as plain JSON with a version, grouped by time so it stays small:
    `{"version": 1, "resume_after": "<call id>", "checked": {"<epoch s>": "<keys>"},
    "requested": {"<epoch s>:<attempt>": "<keys>"}}`. An unreadable or other-version cursor counts
    as empty.
    """

    checked: dict[str, datetime] = field(default_factory=dict)
    requested: dict[str, Requested] = field(default_factory=dict)
    resume_after: str | None = None

    @classmethod
    def parse(cls, text: str | None) -> SensorCursor:
        try:
            data = json.loads(text) if text else None
            if not isinstance(data, dict) or data.get("version") != CURSOR_VERSION:
                return cls()
            checked = {
                key: _from_epoch(stamp)
                for stamp, keys in data.get("checked", {}).items()
                for key in _split_keys(keys)
            }
            requested = {}
            for label, keys in data.get("requested", {}).items():
                stamp, attempt = label.split(":")
                for key in _split_keys(keys):
                    requested[key] = Requested(_from_epoch(stamp), int(attempt))
            resume_after = data.get("resume_after")
            if resume_after is not None and not isinstance(resume_after, str):
                raise TypeError("resume_after is not a call id")
        except (ValueError, TypeError, AttributeError):
            return cls()
        return cls(checked, requested, resume_after)

    def serialize(self) -> str:
        checked: dict[str, list[str]] = defaultdict(list)
        for key, at in self.checked.items():
            checked[str(int(at.timestamp()))].append(key)
        requested: dict[str, list[str]] = defaultdict(list)
        for key, entry in self.requested.items():
            requested[f"{int(entry.at.timestamp())}:{entry.attempt}"].append(key)
        data = {
            "version": CURSOR_VERSION,
            "resume_after": self.resume_after,
            "checked": {stamp: "".join(sorted(keys)) for stamp, keys in sorted(checked.items())},
            "requested": {label: "".join(sorted(keys)) for label, keys in sorted(requested.items())},
        }
        return json.dumps(data, separators=(",", ":"))

    def prune(self, pending: Sequence[PendingCall], now: datetime, recheck: timedelta) -> None:
        """Forget calls that are no longer pending, look-ups a run's fetch has superseded or whose
        interval has passed, and the oldest entries past `MAX_CURSOR_ENTRIES`."""
        by_key = {call_key(call.call_id): call for call in pending}
        checked = {}
        for key, at in self.checked.items():
            call = by_key.get(key)
            if call is None or (call.last_fetched_at is not None and call.last_fetched_at >= at):
                continue
            if now - at < recheck_interval(_age(call, now), recheck) and at <= now:
                checked[key] = at
        self.checked = _newest(checked, lambda at: at)
        requested = {key: entry for key, entry in self.requested.items() if key in by_key}
        self.requested = _newest(requested, lambda entry: entry.at)


def _from_epoch(stamp: str) -> datetime:
    return datetime.fromtimestamp(int(stamp), UTC)


def _split_keys(keys: str) -> list[str]:
    if len(keys) % 8:
        raise ValueError("cursor keys are 8 characters each")
    return [keys[i : i + 8] for i in range(0, len(keys), 8)]


def _newest(entries: dict[str, Any], when: Callable[[Any], datetime]) -> dict[str, Any]:
    if len(entries) <= MAX_CURSOR_ENTRIES:
        return entries
    kept = sorted(entries.items(), key=lambda item: when(item[1]), reverse=True)[:MAX_CURSOR_ENTRIES]
    return dict(kept)


def _age(call: PendingCall, now: datetime) -> timedelta:
    end = call_end(call)
    return max(now - end, timedelta(0)) if end is not None else timedelta(0)


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class TickPlan:
    """What one tick does with the pending calls. `to_check` is in the order to ask."""

    to_check: list[PendingCall]
    to_give_up: list[PendingCall]
    pending: int
    due: int
    awaiting_run: int
    oldest_pending_age: timedelta | None
    # Stored rows the tick could not plan (a value no date arithmetic takes), with the error:
    # quarantined by the sensor, never a reason to fail the tick.
    unusable: list[tuple[PendingCall, str]] = field(default_factory=list)


def plan_tick(
    pending: Sequence[PendingCall],
    cursor: SensorCursor,
    now: datetime,
    *,
    recheck: timedelta,
    give_up_after: timedelta,
    max_checks: int,
    max_give_ups: int = MAX_GIVE_UPS_PER_TICK,
) -> TickPlan:
    """Split pending calls into: past the give-up window (refresh them so the run marks them
    `missing`), awaiting a refresh run already requested, due a look-up, and not due yet."""
    due: list[PendingCall] = []
    give_up: list[PendingCall] = []
    unusable: list[tuple[PendingCall, str]] = []
    awaiting_run = 0
    oldest: timedelta | None = None
    for call in pending:
        try:
            plan = _plan_one(call, cursor, now, recheck, give_up_after)
        except (ValueError, OverflowError, TypeError) as exc:
            unusable.append((call, f"{type(exc).__name__}: {exc}"))
            continue
        age, kind = plan
        if call_end(call) is not None and (oldest is None or age > oldest):
            oldest = age
        if kind == "awaiting_run":
            awaiting_run += 1
        elif kind == "give_up":
            give_up.append(call)
        elif kind == "due":
            due.append(call)
    due.sort(key=lambda call: call.call_id)
    if cursor.resume_after is not None:
        start = bisect.bisect_right([call.call_id for call in due], cursor.resume_after)
        due = due[start:] + due[:start]
    give_up.sort(key=lambda call: (call_end(call), call.call_id))
    return TickPlan(
        to_check=due[:max_checks],
        to_give_up=give_up[:max_give_ups],
        pending=len(pending),
        due=len(due),
        awaiting_run=awaiting_run,
        oldest_pending_age=oldest,
        unusable=unusable,
    )


def _plan_one(
    call: PendingCall, cursor: SensorCursor, now: datetime, recheck: timedelta, give_up_after: timedelta
) -> tuple[timedelta, str]:
    """How old one pending call is, and what this tick does with it (`awaiting_run`, `give_up`,
    `due` or `wait`)."""
    end = call_end(call)
    age = _age(call, now)
    key = call_key(call.call_id)
    requested = cursor.requested.get(key)
    if requested is not None and now - requested.at < REQUEST_AGAIN_AFTER:
        return age, "awaiting_run"
    if end is not None and now - end > give_up_after:
        return age, "give_up"
    looked = [t for t in (call.last_fetched_at, cursor.checked.get(key)) if t is not None]
    if not looked or now - max(looked) >= recheck_interval(age, recheck):
        return age, "due"
    return age, "wait"


def advance(cursor: SensorCursor, plan: TickPlan, results: CheckResults, now: datetime) -> None:
    """Record this tick's look-ups, and where the next tick resumes when some due calls waited."""
    for call_id in results.asked:
        cursor.checked[call_key(call_id)] = now
    attempted = set(results.asked) | set(results.failed)
    reached = [call.call_id for call in plan.to_check if call.call_id in attempted]
    if plan.due > len(attempted) and reached:
        cursor.resume_after = reached[-1]
    else:
        cursor.resume_after = None


# --------------------------------------------------------------------------- asking Apten


@dataclass
class CheckResults:
    """What Apten said about the calls asked this tick."""

    arrived: list[str] = field(default_factory=list)
    still_pending: list[str] = field(default_factory=list)
    gone: list[str] = field(default_factory=list)  # now 404: the run records `not_found`
    failed: dict[str, str] = field(default_factory=dict)  # asked again on a later tick

    @property
    def asked(self) -> list[str]:
        return self.arrived + self.still_pending + self.gone

    @property
    def changed(self) -> list[str]:
        """Calls whose stored row is out of date: a refresh run should fetch them."""
        return self.arrived + self.gone


def summary_arrived(fetch: CallFetch) -> bool:
    """The call body now carries a summary (the same rule the calls run uses for `ready`)."""
    return Call.from_json(fetch.body).summary is not None


def check_calls(client: AptenClient, call_ids: Iterable[str], deadline: float) -> CheckResults:
    """`GET /calls/{id}` for each call, concurrently within the client's limits.

    Stops starting new look-ups once `time.monotonic()` passes `deadline`; calls not asked carry
    over. A call whose look-up fails is reported in `failed`; only a rejected key stops the tick.
    """
    results = CheckResults()

    def ask(call_id: str) -> tuple[str, CallFetch | None, str | None]:
        try:
            return call_id, client.get_call(call_id), None
        except AptenAuthError:
            raise
        except AptenError as exc:
            return call_id, None, str(exc)

    for call_id, fetch, error in client.map_concurrent(ask, _until(deadline, call_ids)):
        if fetch is None:
            results.failed[call_id] = error or "unknown error"
        elif not fetch.found:
            results.gone.append(call_id)
        else:
            try:
                arrived = summary_arrived(fetch)
            except MalformedRecord as exc:
                results.failed[call_id] = f"malformed call: {exc.reason}"
                continue
            except (ValueError, OverflowError, RecursionError) as exc:
                # Whatever one body holds, the tick goes on; the calls run quarantines it.
                results.failed[call_id] = f"unreadable call: {type(exc).__name__}: {exc}"[:300]
                continue
            (results.arrived if arrived else results.still_pending).append(call_id)
    return results


def _until(deadline: float, items: Iterable[str]) -> Iterator[str]:
    for item in items:
        if time.monotonic() >= deadline:
            return
        yield item


# --------------------------------------------------------------------------- refresh runs


@dataclass(frozen=True)
class RefreshRequest:
    """One run of the calls op for one partition day, naming exactly `call_ids`."""

    partition_date: date
    call_ids: tuple[str, ...]
    arrived: int
    given_up: int
    gone: int
    run_key: str


def refresh_requests(
    arrived: Sequence[PendingCall],
    gone: Sequence[PendingCall],
    given_up: Sequence[PendingCall],
    cursor: SensorCursor,
    now: datetime,
) -> list[RefreshRequest]:
    """Group the calls to refresh by partition day into run requests, and remember them in the cursor.

    The run key is a watermark of the stored state the request is based on: a digest of the named
    call ids and their `last_fetched_at`. A repeated tick (or a reset cursor) asks for the same
    key, so Dagster launches the run once; another call arriving on that day gives a new key.
    A call requested again after `REQUEST_AGAIN_AFTER` (its run failed) adds a retry number.
    """
    reason: dict[str, str] = {}
    by_day: dict[date, dict[str, PendingCall]] = defaultdict(dict)
    for kind, calls in (("arrived", arrived), ("gone", gone), ("given_up", given_up)):
        for call in calls:
            if call.partition_date is None:
                continue
            by_day[call.partition_date][call.call_id] = call
            reason[call.call_id] = kind
    requests = []
    for day in sorted(by_day):
        ids = sorted(by_day[day])
        for start in range(0, len(ids), MAX_CALLS_PER_RUN):
            chunk = ids[start : start + MAX_CALLS_PER_RUN]
            attempt = 0
            for call_id in chunk:
                previous = cursor.requested.get(call_key(call_id))
                if previous is not None:
                    attempt = max(attempt, previous.attempt + 1)
            digest = hashlib.sha256()
            for call_id in chunk:
                fetched = by_day[day][call_id].last_fetched_at
                digest.update(f"{call_id}\x1f{fetched.isoformat() if fetched else ''}\x1e".encode())
            run_key = f"late-summary:{day.isoformat()}:{digest.hexdigest()[:16]}"
            if attempt:
                run_key += f":retry{attempt}"
            kinds = [reason[call_id] for call_id in chunk]
            requests.append(
                RefreshRequest(
                    partition_date=day,
                    call_ids=tuple(chunk),
                    arrived=kinds.count("arrived"),
                    given_up=kinds.count("given_up"),
                    gone=kinds.count("gone"),
                    run_key=run_key,
                )
            )
            for call_id in chunk:
                cursor.requested[call_key(call_id)] = Requested(now, attempt)
    return requests


def format_age(age: timedelta | None) -> str:
    if age is None:
        return "n/a"
    minutes = age.total_seconds() / 60
    return f"{minutes:.0f} min" if minutes < 120 else f"{minutes / 60:.1f} h"


# A look-up inside a tick gets one retry and short waits, and none runs past the tick's deadline
# (when `check_calls` stops starting them) plus one read timeout: the tick ends well before
# Dagster's 60 s sensor timeout however slowly Apten answers. A call cut short is simply asked
# again on a later tick.
TICK_RETRY = RetryPolicy(
    max_attempts=2, base_delay_seconds=0.5, max_delay_seconds=2.0, retry_after_cap_seconds=5.0
)
TICK_READ_TIMEOUT_SECONDS = 5.0


def tick_client(settings: AptenSettings, deadline: float) -> AptenClient:
    """An AptenClient for one sensor tick: same key, rate limit and concurrency, shorter waits,
    and every request over by `deadline` (monotonic) + TICK_READ_TIMEOUT_SECONDS."""
    timeout = httpx.Timeout(
        connect=3.0,
        read=min(TICK_READ_TIMEOUT_SECONDS, settings.http_read_timeout_seconds),
        write=5.0,
        pool=5.0,
    )
    retry = replace(
        TICK_RETRY, base_delay_seconds=min(TICK_RETRY.base_delay_seconds, settings.retry_base_delay_seconds)
    )
    return AptenClient(settings, retry=retry, timeout=timeout, stop_at=deadline + TICK_READ_TIMEOUT_SECONDS)
