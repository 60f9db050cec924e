"""Webhooks end to end over loopback: sandbox emitter -> receiver -> inbox -> apten/webhook_deliveries
-> apten_webhook_sensor -> targeted runs of apten/calls -> apten/call_transfers, on every warehouse
backend (a DuckDB file; a database on the throwaway PostgreSQL server)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from apten_assets.defs.apten import build_definitions
from apten_assets.defs.apten.assets import CALLS_KEY, WEBHOOK_DELIVERIES_KEY
from apten_assets.defs.apten.webhooks import CALL_TRANSFERS_KEY, WEBHOOK_RUN_ASSETS, WEBHOOK_SENSOR_NAME
from apten_assets.lib.config import AptenSettings
from apten_assets.sandbox.server import SandboxServer
from apten_assets.sandbox.webhook_sender import WebhookEmitter, WebhookSender, call_transferred, encode
from apten_assets.warehouse import open_store
from apten_assets.webhooks import create_app
from tests.warehouse.helpers import query
from tests.webhooks.conftest import SECRET, ReceiverThread

WEBCHAT_TRANSFER_CONNECTED = "9878f66b-294f-97e0-c9b9-a7c61cea7e6a"  # webchat, WARM, summary ready
LEAD_TRANSFER_CONNECTED = "9d33a01c-353c-631c-dfd4-3f371200339d"
LEAD_TRANSFER_FALLBACK = "7403e430-ec66-a787-95e7-61d17731af10"
LEAD_TRANSFER_MISSED = "0cfff054-8efb-a442-738e-0b77d5f860c3"  # no fallback number on the record
CONTENT_COLUMNS = (
    "call_id, lead_id, session_id, direction, call_status, duration_seconds, created_at, updated_at, "
    "is_transfer, transfer_number, turn_count, summary_status, raw, _loaded_at"
)


@dataclass
class Pipeline:
    """The code location as deployed, driven by hand: sensor ticks and the runs they request."""

    settings: AptenSettings
    defs: dg.Definitions
    instance: dg.DagsterInstance
    receiver: ReceiverThread
    sandbox: SandboxServer
    cursor: str | None = None
    runs: list[dg.RunRequest] = field(default_factory=list)

    def emitter(self, seed: int = 3) -> WebhookEmitter:
        return WebhookEmitter(self.sandbox.state.dataset, self.receiver.url, SECRET, seed=seed)

    def tick(self) -> list[dg.RunRequest]:
        sensor = self.defs.resolve_sensor_def(WEBHOOK_SENSOR_NAME)
        context = dg.build_sensor_context(instance=self.instance, cursor=self.cursor, definitions=self.defs)
        result = sensor(context)
        self.cursor = result.cursor
        return list(result.run_requests or [])

    def execute(self, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
        return self.materialize(
            request.asset_selection, request.partition_key, request.run_config, tags=request.tags
        )

    def materialize(
        self,
        selection: Sequence[dg.AssetKey],
        partition_key: str | None = None,
        run_config: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
    ) -> dg.ExecuteInProcessResult:
        job = self.defs.resolve_implicit_global_asset_job_def()
        result = job.execute_in_process(
            instance=self.instance,
            partition_key=partition_key,
            run_config=run_config or {},
            asset_selection=list(selection),
            tags=tags,
        )
        assert result.success
        return result

    def tick_and_run(self) -> list[dg.RunRequest]:
        requests = self.tick()
        for request in requests:
            self.execute(request)
        self.runs += requests
        return requests

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with open_store(self.settings.warehouse, read_only=True) as store:
            return query(store, sql, params)

    def json_field(self, column: str, *path: str) -> str:
        """SQL for the text of `column`'s JSON value at `path`, in the backend's dialect."""
        if self.settings.warehouse.backend == "duckdb":
            return f"{column} ->> '$.{'.'.join(path)}'"
        return f"{column} #>> '{{{','.join(path)}}}'"


@pytest.fixture
def pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sandbox: SandboxServer, warehouse_url: str
) -> Iterator[Pipeline]:
    for name in ("APTEN_API_KEY", "APTEN_WEBHOOK_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("APTEN_BASE_URL", sandbox.base_url)
    monkeypatch.setenv("APTEN_START_DATE", "2026-05-01")
    monkeypatch.setenv("APTEN_WEBHOOK_INBOX", str(tmp_path / "inbox"))
    monkeypatch.setenv("APTEN_MAX_RPS", "1000")
    settings = AptenSettings.from_env()
    with (
        ReceiverThread(create_app(SECRET, settings.webhook_inbox)) as receiver,
        dg.instance_for_test() as instance,
    ):
        yield Pipeline(settings, build_definitions(settings), instance, receiver, sandbox)


def _metadata(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict[str, Any]:
    (event,) = [m for m in result.get_asset_materialization_events() if m.asset_key == key]
    return {name: value.value for name, value in event.materialization.metadata.items()}


def test_webchat_call_from_webhooks_lands_in_calls_and_a_later_poll_changes_nothing(
    pipeline: Pipeline,
) -> None:
    call = pipeline.sandbox.state.dataset.call(WEBCHAT_TRANSFER_CONNECTED)
    assert call is not None and call.session_id is not None
    with pipeline.emitter() as emitter:
        report = emitter.emit([WEBCHAT_TRANSFER_CONNECTED], redeliver_rate=1.0, bad_signature_rate=1.0)
    print(report.summary())
    assert report.by_status[401] == report.forged > 0

    (request,) = pipeline.tick_and_run()
    assert request.partition_key == "2026-05-12"
    assert request.run_config["ops"]["calls"]["config"]["call_ids"] == [WEBCHAT_TRANSFER_CONNECTED]
    assert set(request.asset_selection) == set(WEBHOOK_RUN_ASSETS)

    rows = pipeline.query(
        "SELECT lead_id, session_id, summary_status, turn_count FROM apten.calls WHERE call_id = ?",
        [WEBCHAT_TRANSFER_CONNECTED],
    )
    assert rows == [(None, call.session_id, "ready", 8)]
    assert pipeline.query("SELECT count(*) FROM apten.call_events WHERE call_id = ?", [call.id]) == [(0,)]
    stored = pipeline.query(f"SELECT {CONTENT_COLUMNS} FROM apten.calls WHERE call_id = ?", [call.id])

    # A later poll of the day, even one that fetches every call again, changes nothing for it.
    calls_op = [CALLS_KEY, *[k for k in WEBHOOK_RUN_ASSETS if k.path[-1].startswith("call_")]]
    pipeline.materialize(calls_op, "2026-05-12")
    pipeline.materialize(calls_op, "2026-05-12", {"ops": {"calls": {"config": {"refresh_all": True}}}})
    assert pipeline.query(f"SELECT {CONTENT_COLUMNS} FROM apten.calls WHERE call_id = ?", [call.id]) == stored
    (attempts,) = pipeline.query("SELECT fetch_attempts FROM apten.calls WHERE call_id = ?", [call.id])[0]
    assert attempts == 2  # the targeted run and the refresh_all poll; the plain poll had nothing to do

    # Nothing new in the inbox: the next tick requests nothing.
    assert pipeline.tick() == []


def test_same_delivery_twice_is_stored_once_and_unknown_events_are_kept(pipeline: Pipeline) -> None:
    transferred = call_transferred(
        when=pipeline.sandbox.state.dataset.anchor,
        call_id=LEAD_TRANSFER_CONNECTED,
        lead_id="lead-x",
        phone="+15550000001",
        profile="Default Profile",
        transfer_type="WARM",
        transfer_to="+15550000002",
    )
    unknown = {
        "event": "appointment.booked",
        "data": {"leadId": "lead-x", "slot": "2026-05-15T10:00:00Z"},
        "timestamp": "2026-05-14T15:00:00Z",
    }
    with WebhookSender(pipeline.receiver.url, SECRET) as sender:
        first = sender.send(transferred, redeliver=1)
        # Re-serialised with other spacing and key order: still the same delivery.
        body = json.dumps(dict(reversed(list(transferred.items()))), indent=2).encode()
        again = sender.post(body)
        sender.send(unknown)
    assert [r.json()["status"] for r in [*first, again]] == ["stored", "duplicate", "duplicate"]

    result = pipeline.materialize([WEBHOOK_DELIVERIES_KEY])
    meta = _metadata(result, WEBHOOK_DELIVERIES_KEY)
    assert (meta["read"], meta["new"], meta["already_stored"]) == (2, 2, 0)
    assert meta["by_event"] == {"appointment.booked": 1, "call.transferred": 1}
    assert meta["unknown_event_names"] == ["appointment.booked"]

    # Loading again re-reads the inbox's overlap and stores nothing twice.
    meta = _metadata(pipeline.materialize([WEBHOOK_DELIVERIES_KEY]), WEBHOOK_DELIVERIES_KEY)
    assert (meta["new"], meta["already_stored"]) == (0, 2)
    slot = pipeline.json_field("raw", "data", "slot")
    rows = pipeline.query(
        f"SELECT event, call_id, lead_id, {slot} FROM apten.webhook_deliveries ORDER BY event"
    )
    assert rows == [
        ("appointment.booked", None, "lead-x", "2026-05-15T10:00:00Z"),
        ("call.transferred", LEAD_TRANSFER_CONNECTED, "lead-x", None),
    ]
    (raw,) = pipeline.query("SELECT raw FROM apten.webhook_deliveries WHERE event = 'call.transferred'")[0]
    if pipeline.settings.warehouse.backend == "duckdb":
        assert raw.encode() == encode(transferred)  # the body exactly as received
    else:
        # jsonb keeps the value, not the spelling (key order, spacing).
        assert json.loads(raw) == json.loads(encode(transferred))


def test_unknown_events_alone_trigger_only_a_deliveries_load(pipeline: Pipeline) -> None:
    with WebhookSender(pipeline.receiver.url, SECRET) as sender:
        sender.send(
            {
                "event": "leadScored",
                "data": {"leadId": "l-1", "score": 7},
                "timestamp": "2026-05-14T15:00:00Z",
            }
        )
    (request,) = pipeline.tick_and_run()
    assert request.asset_selection == [WEBHOOK_DELIVERIES_KEY] and request.partition_key is None
    assert pipeline.query("SELECT event FROM apten.webhook_deliveries") == [("leadScored",)]
    assert pipeline.tick() == []


TRANSFER_COLUMNS = (
    "call_id, attempt, transfer_type, target_number, fallback_number, fallback_attempted, outcome, "
    "started_at IS NOT NULL, connected_at IS NOT NULL, missed_at IS NOT NULL, "
    "fallback_triggered_at IS NOT NULL, source"
)


def test_transfer_lifecycles_end_in_the_right_call_transfers_rows(pipeline: Pipeline) -> None:
    dataset = pipeline.sandbox.state.dataset
    chosen = [
        LEAD_TRANSFER_CONNECTED,
        LEAD_TRANSFER_FALLBACK,
        LEAD_TRANSFER_MISSED,
        WEBCHAT_TRANSFER_CONNECTED,
    ]
    with pipeline.emitter(seed=5) as emitter:
        report = emitter.emit(chosen, redeliver_rate=0.5, max_displacement=6, bad_signature_rate=0.3)
    print(report.summary())
    requests = pipeline.tick_and_run()
    targeted = sorted(c for r in requests for c in r.run_config["ops"]["calls"]["config"]["call_ids"])
    assert targeted == sorted(chosen)

    rows = pipeline.query(f"SELECT {TRANSFER_COLUMNS} FROM apten.call_transfers ORDER BY call_id, attempt")
    number = {call_id: dataset.call(call_id).transfer_number for call_id in chosen}
    fallback = dataset.call(LEAD_TRANSFER_FALLBACK).fallback_transfer_number
    expected = {
        (LEAD_TRANSFER_CONNECTED, 1, "WARM", number[LEAD_TRANSFER_CONNECTED], None, None, "connected",
         True, True, False, False, "webhook"),
        (LEAD_TRANSFER_FALLBACK, 1, "WARM", number[LEAD_TRANSFER_FALLBACK], fallback, True,
         "fallback_triggered", True, False, True, True, "webhook"),
        (LEAD_TRANSFER_MISSED, 1, "WARM", number[LEAD_TRANSFER_MISSED], None, False, "missed",
         True, False, True, False, "webhook"),
        (WEBCHAT_TRANSFER_CONNECTED, 1, "WARM", number[WEBCHAT_TRANSFER_CONNECTED], None, None, "connected",
         True, True, False, False, "webhook"),
    }  # fmt: skip
    assert set(rows) == expected
    (session,) = pipeline.query(
        "SELECT session_id FROM apten.call_transfers WHERE call_id = ?", [WEBCHAT_TRANSFER_CONNECTED]
    )[0]
    assert session == dataset.call(WEBCHAT_TRANSFER_CONNECTED).session_id

    # Every delivery again, in another order: the same rows, untouched.
    loaded = pipeline.query("SELECT call_id, attempt, _loaded_at FROM apten.call_transfers ORDER BY 1, 2")
    with pipeline.emitter(seed=9) as emitter:
        emitter.emit(chosen, redeliver_rate=1.0, max_displacement=10)
    pipeline.materialize([CALL_TRANSFERS_KEY], "2026-05-12", {})
    assert (
        pipeline.query("SELECT call_id, attempt, _loaded_at FROM apten.call_transfers ORDER BY 1, 2")
        == loaded
    )


def test_a_second_attempt_arriving_first_is_still_attempt_two(pipeline: Pipeline) -> None:
    dataset = pipeline.sandbox.state.dataset
    call = dataset.call(LEAD_TRANSFER_CONNECTED)
    lead = dataset.lead(call.lead_id)
    started = dataset.anchor.replace(year=2026, month=5, day=13, hour=10, minute=0, second=0)
    common = {
        "call_id": call.id,
        "lead_id": call.lead_id,
        "phone": lead["phone"],
        "profile": "Default Profile",
    }
    first = call_transferred(when=started, transfer_type="COLD", transfer_to="+15550000010", **common)
    second = call_transferred(
        when=started.replace(minute=2), transfer_type="WARM", transfer_to="+15550000020", **common
    )
    with WebhookSender(pipeline.receiver.url, SECRET) as sender:
        sender.send(second)
        sender.send(first)
    pipeline.tick_and_run()
    rows = pipeline.query(
        "SELECT attempt, transfer_type, target_number, outcome, source FROM apten.call_transfers "
        "WHERE call_id = ? ORDER BY attempt",
        [call.id],
    )
    # The record's transferConnectedSeconds says the latest attempt connected.
    assert rows == [
        (1, "COLD", "+15550000010", "started", "webhook"),
        (2, "WARM", "+15550000020", "connected", "webhook"),
    ]


def test_transfer_calls_without_webhooks_get_one_attempt_from_the_call_record(pipeline: Pipeline) -> None:
    dataset = pipeline.sandbox.state.dataset
    day = "2026-05-13"
    selection = [k for k in WEBHOOK_RUN_ASSETS if k != WEBHOOK_DELIVERIES_KEY]
    events = [dg.AssetKey(["apten", "leads"]), dg.AssetKey(["apten", "call_events"])]
    pipeline.materialize(events[:1])
    pipeline.materialize([*events[1:], *selection], day)
    rows = pipeline.query(
        "SELECT call_id, attempt, target_number, fallback_number, outcome, source FROM apten.call_transfers"
    )
    on_day = {
        cid
        for cid in dataset.transfer_call_ids
        if dataset.call(cid).lead_id is not None
        and f"{dataset.call_json(cid, dataset.anchor)['createdAt'][:10]}" == day
    }
    assert on_day and {row[0] for row in rows} == on_day
    for call_id, attempt, target, fallback_number, outcome, source in rows:
        call = dataset.call(call_id)
        assert (attempt, source, target, fallback_number) == (
            1,
            "api",
            None if call.legacy else call.transfer_number,
            None if call.legacy else call.fallback_transfer_number,
        )
        if not call.legacy:
            expected = "connected" if call.transfer_connected_seconds is not None else None
            expected = expected or ("fallback_triggered" if call.fallback_transfer_number else "started")
            assert outcome == expected


def test_hostile_deliveries_and_a_garbage_inbox_file_never_stop_the_sensor_or_the_load(
    pipeline: Pipeline,
) -> None:
    """Extreme timestamps, lone surrogates and a garbage file sit in the inbox before an honest
    delivery: the honest call still gets its run, the load stores every delivery (NULL where a
    value cannot be represented), counts the garbage file, and later ticks go on."""
    extremes = ("0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00", "0001-01-01T00:00:00Z")
    surrogate = (
        b'{"event": "leadTagged", "timestamp": "2026-05-14T15:30:00Z", '
        b'"data": {"leadId": "lead-\\ud83d", "tag": "cut \\ud83d"}}'
    )
    with WebhookSender(pipeline.receiver.url, SECRET) as sender:
        for stamp in extremes:
            envelope = {
                "event": "call.completed",
                "data": {"callId": f"call-{stamp[:4]}"},
                "timestamp": stamp,
            }
            assert [r.status_code for r in sender.send(envelope)] == [200]
        assert sender.post(surrogate).status_code == 200
        other = b'{"event": "message.received\\ud800", "data": {}, "timestamp": "2026-05-14T15:30:00Z"}'
        assert sender.post(other).status_code == 200
    garbage = Path(pipeline.settings.webhook_inbox) / f"{'f' * 64}.delivery"
    garbage.write_bytes(b"\x00\xffnot a delivery")
    with pipeline.emitter() as emitter:
        emitter.emit([WEBCHAT_TRANSFER_CONNECTED], redeliver_rate=0.0, bad_signature_rate=0.0)

    requests = pipeline.tick()
    (honest,) = [r for r in requests if r.partition_key == "2026-05-12"]
    assert honest.run_config["ops"]["calls"]["config"]["call_ids"] == [WEBCHAT_TRANSFER_CONNECTED]
    meta = _metadata(pipeline.execute(honest), WEBHOOK_DELIVERIES_KEY)
    assert meta["unreadable_inbox_files"] == 1
    assert meta["unreadable_inbox_file_names"] == [garbage.name]
    assert meta["unreadable_event_timestamp"] == 3
    assert (meta["unstorable_ids"], meta["unstorable_event_names"], meta["skipped"]) == (1, 1, 1)
    # The garbage file is the one record that cannot be stored: quarantined with its bytes.
    assert (meta["quarantined"], meta["quarantined_ids"]) == (1, [garbage.name])
    quarantined = pipeline.query(
        "SELECT source, record_id, reason, payload_bytes, times_seen FROM apten.rejected_records"
    )
    assert [row[:2] for row in quarantined] == [("webhook_deliveries", garbage.name)]
    assert "unreadable inbox file" in quarantined[0][2] and quarantined[0][3:] == (16, 1)
    assert "message.received\ufffd" in meta["unknown_event_names"]

    rows = pipeline.query(
        "SELECT call_id, event_timestamp FROM apten.webhook_deliveries WHERE call_id LIKE 'call-%' ORDER BY 1"
    )
    assert rows == [("call-0001", None), ("call-0001", None), ("call-9999", None)]
    tag = pipeline.json_field("raw", "data", "tag")
    tagged = f"SELECT lead_id, {tag} FROM apten.webhook_deliveries WHERE event = 'leadTagged'"
    assert pipeline.query(tagged) == [(None, "cut \ufffd")]
    ready = pipeline.query(
        "SELECT summary_status FROM apten.calls WHERE call_id = ?", [WEBCHAT_TRANSFER_CONNECTED]
    )
    assert ready == [("ready",)]

    # The sensor keeps ticking: nothing new, and the garbage file is skipped again, not fatal.
    assert pipeline.tick() == []
    assert _metadata(pipeline.materialize([WEBHOOK_DELIVERIES_KEY]), WEBHOOK_DELIVERIES_KEY)["new"] == 0
    assert pipeline.query("SELECT times_seen FROM apten.rejected_records") == [(2,)]
