"""The late-summary sensor's plain rules: when a pending call is due, the cursor, the run keys."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta

from apten_assets.lib.config import AptenSettings
from apten_assets.lib.late_summaries import (
    MAX_CALLS_PER_RUN,
    MAX_CHECKS_PER_TICK,
    MAX_RECHECK_INTERVAL,
    REQUEST_AGAIN_AFTER,
    TICK_READ_TIMEOUT_SECONDS,
    CheckResults,
    SensorCursor,
    advance,
    call_key,
    check_calls,
    checks_per_tick,
    plan_tick,
    recheck_interval,
    refresh_requests,
    tick_client,
)
from apten_assets.warehouse import PendingCall
from tests.lib.scripted_server import Reply, ScriptedServer

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
FIVE_MIN = timedelta(minutes=5)
DAY = date(2026, 11, 25)


def pending(call_id: str, *, ended_ago: timedelta, fetched_ago: timedelta, day: date = DAY) -> PendingCall:
    ended = NOW - ended_ago
    return PendingCall(
        call_id=call_id,
        partition_date=day,
        last_fetched_at=NOW - fetched_ago,
        created_at=ended - timedelta(minutes=3),
        ended_at=ended,
        fetch_attempts=1,
    )


def plan(calls, cursor=None, *, recheck=FIVE_MIN, give_up=timedelta(hours=72), max_checks=100, now=NOW):
    return plan_tick(
        calls, cursor or SensorCursor(), now, recheck=recheck, give_up_after=give_up, max_checks=max_checks
    )


def test_checks_per_tick_follow_the_rate_limit_within_a_cap() -> None:
    assert checks_per_tick(10) == 60
    assert checks_per_tick(0.01) == 1
    assert checks_per_tick(10_000) == MAX_CHECKS_PER_TICK


def test_recheck_interval_starts_at_the_setting_and_doubles_with_age_up_to_the_cap() -> None:
    assert recheck_interval(timedelta(minutes=10), FIVE_MIN) == FIVE_MIN
    assert recheck_interval(timedelta(minutes=90), FIVE_MIN) == FIVE_MIN
    assert recheck_interval(timedelta(hours=2, minutes=1), FIVE_MIN) == 2 * FIVE_MIN
    assert recheck_interval(timedelta(hours=5), FIVE_MIN) == 4 * FIVE_MIN
    assert recheck_interval(timedelta(hours=70), FIVE_MIN) == MAX_RECHECK_INTERVAL
    # A setting above the cap is still the least time between two look-ups.
    assert recheck_interval(timedelta(hours=70), timedelta(hours=5)) == timedelta(hours=5)
    assert recheck_interval(timedelta(hours=70), timedelta(0)) == timedelta(0)


def test_a_call_is_due_when_its_interval_passed_since_the_latest_fetch_or_look_up() -> None:
    fresh = pending("fresh", ended_ago=timedelta(minutes=10), fetched_ago=timedelta(minutes=2))
    stale = pending("stale", ended_ago=timedelta(minutes=10), fetched_ago=timedelta(minutes=6))
    old = pending("old", ended_ago=timedelta(hours=5), fetched_ago=timedelta(minutes=10))
    older = pending("older", ended_ago=timedelta(hours=5), fetched_ago=timedelta(minutes=25))
    assert [c.call_id for c in plan([fresh, stale, old, older]).to_check] == ["older", "stale"]

    # The sensor's own look-up counts like a fetch.
    cursor = SensorCursor(checked={call_key("stale"): NOW - timedelta(minutes=1)})
    assert [c.call_id for c in plan([stale], cursor).to_check] == []


def test_recheck_zero_makes_every_pending_call_due_on_every_tick() -> None:
    calls = [pending(f"c{i}", ended_ago=timedelta(minutes=10), fetched_ago=timedelta(0)) for i in range(5)]
    cursor = SensorCursor(checked={call_key("c1"): NOW})
    assert len(plan(calls, cursor, recheck=timedelta(0)).to_check) == 5


def test_a_backlog_is_worked_through_in_turn_from_where_the_last_tick_stopped() -> None:
    calls = [
        pending(f"c{i:02d}", ended_ago=timedelta(hours=1), fetched_ago=timedelta(hours=1)) for i in range(10)
    ]
    cursor = SensorCursor()
    seen: list[str] = []
    for _ in range(3):
        tick = plan(calls, cursor, recheck=timedelta(0), max_checks=4)
        assert tick.due == 10
        asked = [c.call_id for c in tick.to_check]
        advance(cursor, tick, CheckResults(still_pending=asked), NOW)
        seen.extend(asked)
    assert seen == [f"c{i:02d}" for i in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]]


def test_calls_past_the_give_up_window_are_given_up_not_asked() -> None:
    gone = pending("gone", ended_ago=timedelta(hours=73), fetched_ago=timedelta(hours=4))
    young = pending("young", ended_ago=timedelta(hours=71), fetched_ago=timedelta(hours=4))
    tick = plan([gone, young])
    assert [c.call_id for c in tick.to_give_up] == ["gone"]
    assert [c.call_id for c in tick.to_check] == ["young"]
    assert tick.oldest_pending_age == timedelta(hours=73)


def test_requested_calls_wait_for_their_run_and_are_requested_again_only_much_later() -> None:
    call = pending("c1", ended_ago=timedelta(hours=1), fetched_ago=timedelta(hours=1))
    cursor = SensorCursor()
    (first,) = refresh_requests([call], [], [], cursor, NOW)
    soon = plan([call], cursor, now=NOW + timedelta(minutes=10))
    assert soon.awaiting_run == 1 and not soon.to_check

    later = NOW + REQUEST_AGAIN_AFTER
    assert [c.call_id for c in plan([call], cursor, now=later).to_check] == ["c1"]
    (again,) = refresh_requests([call], [], [], cursor, later)
    assert again.run_key == first.run_key + ":retry1"


def test_run_keys_are_a_watermark_of_the_named_calls_and_their_stored_state() -> None:
    a = pending("a", ended_ago=timedelta(hours=1), fetched_ago=timedelta(hours=1))
    b = pending("b", ended_ago=timedelta(hours=1), fetched_ago=timedelta(hours=1))
    (one,) = refresh_requests([b, a], [], [], SensorCursor(), NOW)
    (same,) = refresh_requests([a, b], [], [], SensorCursor(), NOW + timedelta(minutes=1))
    (other,) = refresh_requests([a], [], [], SensorCursor(), NOW)
    refetched = pending("a", ended_ago=timedelta(hours=1), fetched_ago=timedelta(minutes=1))
    (newer,) = refresh_requests([refetched], [], [], SensorCursor(), NOW)
    assert one.call_ids == ("a", "b") and one.run_key == same.run_key
    assert one.run_key.startswith("late-summary:2026-11-25:")
    assert len({one.run_key, other.run_key, newer.run_key}) == 3


def test_refresh_requests_are_one_per_day_and_bounded_in_size() -> None:
    day_before = DAY - timedelta(days=1)
    many = [
        pending(f"c{i:05d}", ended_ago=timedelta(hours=1), fetched_ago=timedelta(hours=1))
        for i in range(MAX_CALLS_PER_RUN + 1)
    ]
    yesterday = pending("y", ended_ago=timedelta(hours=30), fetched_ago=timedelta(hours=1), day=day_before)
    requests = refresh_requests(many, [], [yesterday], SensorCursor(), NOW)
    assert [(r.partition_date, len(r.call_ids)) for r in requests] == [
        (day_before, 1),
        (DAY, MAX_CALLS_PER_RUN),
        (DAY, 1),
    ]
    assert requests[0].given_up == 1 and requests[1].arrived == MAX_CALLS_PER_RUN


def test_cursor_round_trips_and_an_unreadable_one_counts_as_empty() -> None:
    cursor = SensorCursor(resume_after="c07")
    cursor.checked[call_key("a")] = NOW
    refresh_requests(
        [pending("b", ended_ago=timedelta(hours=1), fetched_ago=timedelta(hours=1))], [], [], cursor, NOW
    )
    text = cursor.serialize()
    assert SensorCursor.parse(text) == cursor
    for garbage in (None, "", "not json", '{"version": 99}', '{"version": 1, "checked": {"x": "abc"}}', "[]"):
        assert SensorCursor.parse(garbage) == SensorCursor()


def test_prune_keeps_only_look_ups_that_still_hold_a_pending_call_back() -> None:
    kept = pending("kept", ended_ago=timedelta(minutes=10), fetched_ago=timedelta(minutes=10))
    refetched = pending("refetched", ended_ago=timedelta(minutes=10), fetched_ago=timedelta(seconds=10))
    expired = pending("expired", ended_ago=timedelta(minutes=10), fetched_ago=timedelta(minutes=10))
    cursor = SensorCursor(
        checked={
            call_key("kept"): NOW - timedelta(minutes=1),
            call_key("refetched"): NOW - timedelta(minutes=1),
            call_key("expired"): NOW - timedelta(minutes=6),
            call_key("no longer pending"): NOW - timedelta(minutes=1),
        }
    )
    cursor.prune([kept, refetched, expired], NOW, FIVE_MIN)
    assert set(cursor.checked) == {call_key("kept")}


def test_a_tick_look_up_never_outlives_the_tick_budget_however_slowly_apten_answers() -> None:
    """A body trickled one byte per 0.2 s never trips the 5 s read timeout and would take a minute
    per call; the tick's look-ups end by the deadline plus one read timeout, and are reported
    as failed (asked again next tick)."""
    slow = Reply(body=b'{"id": "c", "summary": "late"}'.ljust(300), trickle=0.2)
    with ScriptedServer(lambda seen: slow) as server:
        settings = AptenSettings(base_url=server.base_url, max_rps=100, max_concurrency=2)
        began = time.monotonic()
        deadline = began + 2.0
        with tick_client(settings, deadline) as client:
            results = check_calls(client, ["call_1", "call_2", "call_3"], deadline)
        elapsed = time.monotonic() - began
    # Two were cut mid-answer; the third, queued behind them for a slot, never started.
    assert sorted(results.failed) == ["call_1", "call_2", "call_3"]
    assert all("time budget" in error or "deadline" in error for error in results.failed.values())
    assert results.asked == []
    assert elapsed < 2.0 + TICK_READ_TIMEOUT_SECONDS + 3
