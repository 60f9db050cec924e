"""Erasure on request (`apten_erase_leads`): the sandbox's leads, events, calls and webhooks (through
the real receiver) are loaded by the real assets into a DuckDB file; the job then erases two leads.
No row, inbox file or byte of the file may still hold anything of theirs, everything else must be
exactly as it was, a second run removes nothing, and a later sync (Apten still returns them) must
not bring them back."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from apten_assets.defs.apten import build_definitions
from apten_assets.lib.config import AptenSettings
from apten_assets.lib.erasure import SHA256, ErasedLeads, ErasedListUnreadable, erase_leads, key_scheme
from apten_assets.lib.sync import LEADS_CURSOR
from apten_assets.lib.tables import (
    CALL_SUMMARIES,
    CALL_TRANSFERS,
    CALLS,
    ERASED_LEADS,
    LEAD_DATA,
    LEADS,
    REJECTED_RECORDS,
    STORED_TABLES,
    TABLES,
    WEBHOOK_DELIVERIES,
    rejected_row,
)
from apten_assets.sandbox.data import DatasetSpec
from apten_assets.sandbox.server import SandboxServer
from apten_assets.sandbox.webhook_sender import WebhookEmitter
from apten_assets.warehouse import Store, open_store
from apten_assets.webhooks import create_app
from tests.pii.test_pii_e2e import CALL_ASSETS, Loaded, sandbox_env, set_modes
from tests.webhooks.conftest import SECRET, ReceiverThread

SALT = "erasure-salt-8d2e"
LOG = logging.getLogger(__name__)
N_LEADS = 8
# One marker per lead: the sandbox appends line `i` to lead i's summary and additionalInfo, and
# picks lines at random for the lead's turns, so each lead carries text of its own.
MARKERS = tuple(f"Erasure marker {i} quokka{i:03d}" for i in range(N_LEADS))
SPEC = DatasetSpec(
    seed=23,
    n_leads=N_LEADS,
    calls_per_lead=3,
    days=2,
    turns_per_call=4,
    share_deleted_leads=0.0,
    share_missing_calls=0.0,
    share_late_summaries=0.0,
    share_in_progress_calls=0.0,
    share_transfers=0.5,
    pii_lines=MARKERS,
)
TRANSFERS = dg.AssetSelection.assets(["apten", "call_transfers"])
DELIVERIES = dg.AssetSelection.assets(["apten", "webhook_deliveries"])
LEADS_ASSET = dg.AssetSelection.assets(["apten", "leads"])


class Erasable(Loaded):
    """The loaded pipeline, and the two leads to erase with everything that is theirs."""

    def days_tags(self) -> dict[str, str]:
        return {
            "dagster/asset_partition_range_start": self.days[0],
            "dagster/asset_partition_range_end": self.days[-1],
        }

    def load_all(self) -> None:
        self.load_everything()
        self.run(TRANSFERS, tags=self.days_tags())

    def erase(self, lead_ids: list[str]) -> dict[str, Any]:
        job = self.defs.get_job_def("apten_erase_leads")
        result = job.execute_in_process(
            run_config={"ops": {"erase_leads": {"config": {"lead_ids": lead_ids}}}}, instance=self.instance
        )
        assert result.success
        (output,) = [event for event in result.all_events if event.event_type_value == "STEP_OUTPUT"]
        self.last_erase_run = result.run_id
        return {name: value.value for name, value in output.step_output_data.metadata.items()}

    def all_rows(self) -> dict[str, list[tuple]]:
        names = [spec.name for spec in STORED_TABLES] + ["_sync_state"]
        return {name: sorted(self.rows(f"SELECT * FROM apten.{name}"), key=repr) for name in names}


@pytest.fixture
def pipeline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Erasable]:
    with ExitStack() as stack:
        sandbox = stack.enter_context(SandboxServer(SPEC))
        days, env = sandbox_env(sandbox, SPEC.days, tmp_path)
        set_modes(monkeypatch, env, "full", "full")
        monkeypatch.setenv("APTEN_PII_SALT", SALT)
        settings = AptenSettings.from_env()
        receiver = stack.enter_context(ReceiverThread(create_app(SECRET, settings.webhook_inbox)))
        instance = stack.enter_context(dg.instance_for_test())
        yield Erasable(
            Path(settings.duckdb_path),
            Path(settings.webhook_inbox),
            days,
            build_definitions(settings),
            instance,
            sandbox,
            receiver,
        )


def emit_webhooks(pipeline: Erasable) -> None:
    with WebhookEmitter(pipeline.sandbox.state.dataset, pipeline.receiver.url, SECRET) as emitter:
        emitter.emit(redeliver_rate=0.2, bad_signature_rate=0.0)


def chosen_leads(pipeline: Erasable) -> tuple[list[dict[str, Any]], list[str]]:
    """Two leads with an e-mail whose calls include a transfer, and their call ids."""
    dataset = pipeline.sandbox.state.dataset
    calls_of: dict[str, list[str]] = {}
    for event in dataset.call_events():
        calls_of.setdefault(event["roomId"], []).append(event["id"])
    transfers = set(dataset.transfer_call_ids)
    leads = [
        lead
        for lead in dataset.leads
        if lead.get("email")
        and transfers & set(calls_of.get(lead["id"], ()))
        and len(calls_of[lead["id"]]) > 1
    ][:2]
    assert len(leads) == 2, "the dataset should have two leads with transfer calls"
    return leads, sorted(call_id for lead in leads for call_id in calls_of[lead["id"]])


def traces(pipeline: Erasable, leads: list[dict[str, Any]], call_ids: list[str]) -> list[str]:
    """Strings that belong to these leads only: ids, contacts, markers and transcript lines."""
    dataset = pipeline.sandbox.state.dataset
    marker_of = {lead["id"]: lead["additionalInfo"]["note"] for lead in dataset.leads}
    erased = {lead["id"] for lead in leads}
    kept_text = {marker for lead_id, marker in marker_of.items() if lead_id not in erased}
    now = datetime.now(UTC)
    # Every other call, webchat calls included: a line one of them also says is not theirs alone.
    for call_id in (*dataset.lead_call_ids, *dataset.webchat_call_ids):
        if call_id not in call_ids and (body := dataset.call_json(call_id, now)):
            kept_text.update(turn["content"] for turn in body["transcript"])
            kept_text.add(body.get("summary") or "")
    theirs = {marker_of[lead_id] for lead_id in erased}
    for call_id in call_ids:
        theirs.update(turn["content"] for turn in dataset.call_json(call_id, now)["transcript"])
    strings = [*erased, *call_ids, *(lead["phone"] for lead in leads), *(lead["email"] for lead in leads)]
    # Within a kept text too (a kept call's summary ends with a marker drawn at random).
    kept = "\n".join(kept_text)
    return strings + sorted(line for line in theirs if line not in kept)


def found(text: str, strings: list[str]) -> list[str]:
    return [string for string in strings if string in text]


def test_erasure_removes_every_trace_and_nothing_else_and_they_stay_erased(pipeline: Erasable) -> None:
    pipeline.load_all()
    leads, call_ids = chosen_leads(pipeline)
    lead_ids = [lead["id"] for lead in leads]
    strings = traces(pipeline, leads, call_ids)
    # Quarantined records: one by call id, one with no id whose payload names the lead, and one of
    # another lead that must stay.
    seen = datetime.now(UTC)
    with open_store(f"duckdb:///{pipeline.db}") as store:
        store.quarantine(
            [
                rejected_row("calls", call_ids[0], "HTTP 422", {"id": call_ids[0]}, seen),
                rejected_row("leads", None, "malformed lead", {"roomId": lead_ids[0], "x": 1}, seen),
                rejected_row("calls", "someone-else", "HTTP 422", {"id": "someone-else"}, seen),
            ]
        )
    before = pipeline.all_rows()
    inbox_before = {path.name: path.read_bytes() for path in pipeline.inbox.glob("*.delivery")}
    theirs_in_inbox = {name for name, body in inbox_before.items() if found(body.decode(), lead_ids)}
    bytes_before = pipeline.file_bytes().decode("utf-8", "replace")
    # What the checks below look for is really there before the erasure, in every place.
    assert set(found(repr(before), strings)) == set(strings)
    assert theirs_in_inbox and found(b"".join(inbox_before.values()).decode(), [*lead_ids, *call_ids])
    visible_in_file = found(bytes_before, strings)
    assert set(lead_ids) <= set(visible_in_file) and any(s in visible_in_file for s in call_ids)
    ours = [*lead_ids, *call_ids]
    kept = {name: [row for row in rows if not found(repr(row), ours)] for name, rows in before.items()}
    assert all(len(kept[spec.name]) < len(before[spec.name]) for spec in TABLES.values())

    metadata = pipeline.erase(lead_ids)

    assert metadata["leads_requested"] == 2 and metadata["leads_newly_erased"] == 2
    assert metadata["rows_removed_leads"] == 2
    assert metadata["rows_removed_calls"] == len(call_ids)
    assert metadata["rows_removed_call_transfers"] > 0 and metadata["rows_removed_webhook_deliveries"] > 0
    assert metadata["inbox_files_removed"] == len(theirs_in_inbox)
    assert metadata["storage_rewritten"] is True
    after = pipeline.all_rows()
    assert found(repr(after), strings) == []
    # Everything else is untouched, down to `_loaded_at`; the erased list is the only new content.
    assert {name: rows for name, rows in after.items() if name != ERASED_LEADS.name} == {
        name: rows for name, rows in kept.items() if name != ERASED_LEADS.name
    }
    assert {row[1] for row in after[ERASED_LEADS.name]} == {key_scheme(SALT)}
    inbox_after = {path.name: path.read_bytes() for path in pipeline.inbox.glob("*.delivery")}
    assert inbox_after == {name: body for name, body in inbox_before.items() if name not in theirs_in_inbox}
    assert found(b"".join(inbox_after.values()).decode(), strings) == []
    assert found(pipeline.file_bytes().decode("utf-8", "replace"), strings) == []
    erase_log = pipeline.instance.all_logs(pipeline.last_erase_run)
    assert erase_log and found("\n".join(dg.serialize_value(entry) for entry in erase_log), strings) == []

    again = pipeline.erase(lead_ids)
    assert (
        again["leads_newly_erased"] == 0 and again["rows_removed"] == 0 and again["inbox_files_removed"] == 0
    )
    assert pipeline.all_rows() == after

    # Apten still returns them: webhooks arrive again, the leads are read from the start, and
    # their calls are asked for by id, as the webhook sensor would.
    emit_webhooks(pipeline)
    assert any(found(path.read_text(), lead_ids) for path in pipeline.inbox.glob("*.delivery"))
    with open_store(f"duckdb:///{pipeline.db}") as store:
        store.delete_sync_state(LEADS_CURSOR)
    deliveries = pipeline.run(DELIVERIES).get_asset_materialization_events()[0].materialization.metadata
    leads_meta = pipeline.run(LEADS_ASSET).get_asset_materialization_events()[0].materialization.metadata
    calls_run = pipeline.run(
        CALL_ASSETS,
        run_config={"ops": {"calls": {"config": {"call_ids": call_ids}}}},
        tags=pipeline.days_tags(),
    )
    pipeline.run(TRANSFERS, tags=pipeline.days_tags())
    calls_meta = next(
        event.materialization.metadata
        for event in calls_run.get_asset_materialization_events()
        if event.asset_key == dg.AssetKey(["apten", "calls"])
    )
    assert found(repr(pipeline.all_rows()), strings) == []
    assert found("".join(path.read_text() for path in pipeline.inbox.glob("*.delivery")), strings) == []
    assert pipeline.rows("SELECT count(*) FROM apten.leads") == [(N_LEADS - 2,)]
    assert deliveries["skipped_erased"].value == metadata["inbox_files_removed"]
    assert leads_meta["skipped_erased"].value == 2
    assert calls_meta["skipped_erased"].value == len(call_ids)


# --------------------------------------------------------------------------- the store and the list


def seed_two_leads(store: Store) -> None:
    """Lead A with a call (turns, summary, transfer, webhooks: one naming only the call), lead B
    with one call, and a webchat call of no lead."""
    at = datetime(2026, 5, 1, 12, tzinfo=UTC)
    store.upsert(
        LEADS,
        [
            {"lead_id": lead, "first_name": name, "updated_at": at, "raw": {"id": lead, "firstName": name}}
            for lead, name in (("lead-a", "Ann"), ("lead-b", "Bob"))
        ],
    )
    turn = {"role": "user", "content": "hello", "startTime": at.isoformat(), "endTime": at.isoformat()}
    calls = [("call-a", "lead-a"), ("call-b", "lead-b"), ("call-web", None)]
    store.upsert_calls(
        [
            {
                "call_id": call,
                "lead_id": lead,
                "summary_status": "ready",
                "raw": {"id": call, "transcript": [turn]},
            }
            for call, lead in calls
        ]
    )
    store.upsert(CALL_SUMMARIES, [{"call_id": call, "lead_id": lead, "summary": "s"} for call, lead in calls])
    store.replace_children(
        CALL_TRANSFERS,
        "call_id",
        ["call-a", "call-b"],
        [{"call_id": call, "attempt": 1, "lead_id": lead, "outcome": "started"} for call, lead in calls[:2]],
    )
    store.upsert(
        WEBHOOK_DELIVERIES,
        [
            {"delivery_key": "k1", "event": "call.completed", "call_id": "call-a", "lead_id": "lead-a"},
            {"delivery_key": "k2", "event": "call.transferred", "call_id": "call-a"},
            {"delivery_key": "k3", "event": "call.completed", "call_id": "call-b", "lead_id": "lead-b"},
            {"delivery_key": "k4", "event": "leadTagged", "lead_id": "lead-a"},
        ],
    )


def test_store_erases_a_leads_rows_and_its_calls_rows_only(store: Store) -> None:
    seed_two_leads(store)
    seen = datetime.now(UTC)
    store.quarantine(
        [
            rejected_row("calls", "call-a", "HTTP 422", {"id": "call-a"}, seen),
            rejected_row("leads", None, "malformed lead", {"roomId": "lead-a"}, seen),
            rejected_row("calls", "someone-else", "HTTP 422", {"id": "someone-else"}, seen),
        ]
    )

    erasure = store.erase_leads(["lead-a", "lead-unknown"])

    assert erasure.call_ids == {"call-a"}
    assert erasure.rows == {
        "leads": 1,
        "call_events": 0,
        "calls": 1,
        "call_summaries": 1,
        "call_transcript_turns": 1,
        "call_transfers": 1,
        "webhook_deliveries": 3,
        "rejected_records": 2,
    }
    assert store.row_count(REJECTED_RECORDS) == 1
    assert store.row_count(CALLS) == 2 and store.row_count(LEADS) == 1
    assert [key for (key,) in store.read_column_page(WEBHOOK_DELIVERIES, [], after=None, limit=10).rows] == [
        "k3"
    ]
    assert store.erase_leads(["lead-a"]).rows == dict.fromkeys(erasure.rows, 0)


def test_discarding_deleted_data_keeps_the_rows_that_were_not_erased(store: Store) -> None:
    seed_two_leads(store)
    store.erase_leads(["lead-a"])

    store.discard_deleted_data()

    assert store.row_count(CALLS) == 2 and store.row_count(LEADS) == 1
    assert [key for (key,) in store.read_column_page(WEBHOOK_DELIVERIES, [], after=None, limit=10).rows] == [
        "k3"
    ]
    store.set_sync_state("after-discard", "writable")
    assert store.get_sync_state("after-discard") == "writable"


def test_every_table_says_where_a_lead_is(store: Store) -> None:
    # A table added to the pipeline without a LEAD_DATA line would keep erased leads' data.
    assert {target.spec.name for target in LEAD_DATA} == set(TABLES)


def test_the_erased_list_holds_hashes_and_a_changed_salt_is_refused(store: Store, warehouse_url: str) -> None:
    seed_two_leads(store)
    store.close()

    def opened() -> Store:
        return open_store(warehouse_url)

    # Without a salt first, then with one: both kinds of entry stay readable under the salt.
    erase_leads(opened, None, ["lead-b"], salt=None, log=LOG, discard_deleted_data=False)
    report = erase_leads(opened, None, ["lead-a"], salt=SALT, log=LOG)
    assert report.newly_recorded == 1 and report.rows["leads"] == 1 and report.file_rewritten

    with open_store(warehouse_url) as session:
        keys = session.erased_lead_keys()
        assert {scheme for scheme, _ in keys} == {SHA256, key_scheme(SALT)}
        assert not found(json.dumps(sorted(keys)), ["lead-a", "lead-b", SALT])
        erased = ErasedLeads.load(session, SALT)
        assert "lead-a" in erased and "lead-b" in erased and "lead-c" not in erased
        for other_salt in ("another-salt", None):
            with pytest.raises(ErasedListUnreadable, match="APTEN_PII_SALT") as refused:
                ErasedLeads.load(session, other_salt)
            assert SALT not in str(refused.value)
    # Erasing under another salt is refused before anything is deleted.
    with pytest.raises(ErasedListUnreadable):
        erase_leads(opened, None, ["lead-b"], salt="another-salt", log=LOG)
