"""deploy/dagster.yaml, the production instance: a real materialization and a sensor tick with its
run, event and schedule storage in PostgreSQL (the session's throwaway server), and the warehouse
there too."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml

from apten_assets.defs.apten import build_definitions
from apten_assets.defs.apten.sensors import LATE_SUMMARY_SENSOR_NAME
from apten_assets.lib.config import AptenSettings
from apten_assets.sandbox.server import SandboxServer
from tests.postgres import PostgresServer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def instance(
    postgres_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dg.DagsterInstance]:
    postgres_server.create_database("dagster_instance")
    config = yaml.safe_load((ROOT / "deploy" / "dagster.yaml").read_text())
    # pgserver listens on a Unix socket only; libpq takes its folder as the `host` option.
    config["storage"]["postgres"]["postgres_db"]["params"] = {"host": postgres_server.url.host}
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    for name, value in {
        "DAGSTER_PG_USERNAME": postgres_server.url.user,
        "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_PG_HOST": "localhost",
        "DAGSTER_PG_DB": "dagster_instance",
        "DAGSTER_HOME": str(tmp_path),
    }.items():
        monkeypatch.setenv(name, value)
    with dg.DagsterInstance.get() as instance:
        yield instance
    postgres_server.drop_database("dagster_instance")


def test_the_deploy_instance_stores_runs_in_postgres_and_runs_a_sensor_tick(
    instance: dg.DagsterInstance, postgres_url: str, sandbox: SandboxServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
    monkeypatch.setenv("APTEN_BASE_URL", sandbox.base_url)
    monkeypatch.setenv("APTEN_WAREHOUSE_URL", postgres_url)
    defs = build_definitions(AptenSettings.from_env())

    result = dg.materialize(
        [*defs.assets],
        selection=dg.AssetSelection.assets(["apten", "leads"]),
        resources=defs.resources,
        instance=instance,
    )

    assert result.success
    stored = instance.get_latest_materialization_event(dg.AssetKey(["apten", "leads"]))
    assert stored is not None and stored.run_id == result.run_id
    row_count = stored.asset_materialization.metadata["dagster/row_count"].value
    assert row_count == len(sandbox.state.dataset.leads)

    sensor = defs.get_sensor_def(LATE_SUMMARY_SENSOR_NAME)
    context = dg.build_sensor_context(instance=instance, resources=defs.resources)
    tick = sensor(context)
    # No call is stored yet, so nothing is pending: the tick reads the warehouse and skips.
    assert isinstance(tick, dg.SensorResult) and not tick.run_requests
    assert tick.skip_reason is not None and "nothing" in tick.skip_reason.skip_message
