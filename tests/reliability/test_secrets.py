"""Secrets: after real runs with a known key (one full success, and failures where keys leak most:
a wrong key, retries exhausted, a server echoing the key back in its errors), the key appears
nowhere: not in the Dagster instance (event log, run storage, compute logs), not in the warehouse,
not in any output. On PostgreSQL the runs connect with a password (a role that must give it), and
runs that cannot connect (a wrong password, no server, a host that does not exist) fail with a
clear error; that password, right or wrong, appears nowhere either. Invalid settings fail before
any request, naming the variable.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import pytest

from apten_assets.lib.client import AptenBadRequest, AptenClient, AptenHTTPError, RetryPolicy
from apten_assets.lib.config import AptenSettings, ConfigError
from apten_assets.sandbox.app import FaultConfig
from apten_assets.sandbox.data import SandboxDataset
from apten_assets.sandbox.server import SandboxServer
from apten_assets.warehouse import WarehouseURL, open_store
from tests.lib.scripted_server import Reply, ScriptedServer, Seen
from tests.postgres import PostgresServer
from tests.reliability.proxy import HostileProxy
from tests.warehouse.helpers import query
from tools.reliability.harness import (
    REPO_ROOT,
    Warehouses,
    drill_spec,
    finish,
    partition_range,
    pipeline_env,
    read_outcomes,
    start_runner,
)

KEY = "sk-test-SECRET-4f9d2c81b7e6a035"
WRONG_KEY = "sk-test-SECRET-wrong-90e1d7c3aa42"
# The database password holds characters a URL must escape: neither form may leak.
DB_ROLE = "apten_secret_writer"
DB_PASSWORD = "pg-SECRET-5b0e/9c%a@7:d1"
WRONG_DB_PASSWORD = "pg-SECRET-wrong-3e8f/61"
SECRETS = [KEY, WRONG_KEY, DB_PASSWORD, quote(DB_PASSWORD, safe=""), WRONG_DB_PASSWORD]
SPEC = drill_spec(12, 3, 2, seed=9)
# Client and warehouse debug logs go to the event log too, so every line they write is searched.
DAGSTER_YAML = """\
telemetry:
  enabled: false
python_logs:
  managed_python_loggers: [apten_assets.client, apten_assets.warehouse.postgres]
  python_log_level: DEBUG
"""
# PostgreSQL only: runs whose warehouse cannot be reached, and what their error must say.
UNREACHABLE = {
    "wrong_db_password": 'password authentication failed for user "apten_secret_writer"',
    "db_server_down": "No such file or directory",
    "db_host_unknown": 'could not translate host name "no-such-host.invalid"',
}


@dataclass
class Runs:
    home: Path
    outputs: list[Path]
    warehouses: dict[str, str]  # run -> warehouse URL (the runs that could not connect have none)
    backend: str
    outcomes: dict[str, list[dict]]
    statuses: dict[str, list[int]]


def _echo_key_503(seen: Seen, proxy: HostileProxy) -> Reply:
    key = seen.headers.get("x-api-key", "")
    return Reply(status=503, text=f"<html><body>upstream rejected {key}</body></html>")


def _echo_key_400(seen: Seen, proxy: HostileProxy) -> Reply:
    # A 400 is a quarantined skip: its reason is stored in apten.rejected_records, redacted.
    key = seen.headers.get("x-api-key", "")
    return Reply(status=400, json={"message": f"invalid request for key {key}"})


def _password_warehouses(warehouses: Warehouses, server: PostgresServer) -> Warehouses:
    """New databases owned by `DB_ROLE`, reached with its password."""
    server.add_password_role(DB_ROLE, DB_PASSWORD)

    def new(name: str) -> str:
        database = WarehouseURL.parse(warehouses.new(name)).database
        server.admin(f'ALTER DATABASE "{database}" OWNER TO "{DB_ROLE}"')
        return server.url_of(database, user=DB_ROLE, password=DB_PASSWORD)

    return Warehouses(warehouses.workdir, new)


def _unreachable_urls(good: str, work: Path) -> dict[str, str]:
    url = WarehouseURL.parse(good)
    return {
        "wrong_db_password": replace(url, password=WRONG_DB_PASSWORD).libpq_uri(),
        "db_server_down": replace(url, host=str(work / "no_server")).libpq_uri(),
        "db_host_unknown": replace(url, host="no-such-host.invalid", port=5432).libpq_uri(),
    }


@pytest.fixture(scope="module")
def runs(warehouses: Warehouses, request: pytest.FixtureRequest) -> Iterator[Runs]:
    work = warehouses.workdir / "secrets"
    home = work / "dagster_home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(DAGSTER_YAML)
    if warehouses.backend == "postgresql":
        warehouses = _password_warehouses(warehouses, request.getfixturevalue("postgres_server"))
    dataset = SandboxDataset(SPEC)
    first, last = partition_range(dataset)
    full = ["leads", "events_and_calls", "--range", f"{first}...{last}"]
    outputs: list[Path] = []
    urls: dict[str, str] = {}
    outcomes: dict[str, list[dict]] = {}
    statuses: dict[str, list[int]] = {}

    def env_of(name: str, base_url: str, key: str, url: str) -> dict[str, str]:
        inbox = work / f"{name}_inbox"
        return pipeline_env(base_url, url, first, api_key=key, dagster_home=home, inbox=inbox)

    def run(name: str, base_url: str, key: str, sandbox: SandboxServer, args: list[str] = full) -> None:
        urls[name] = warehouses.new(name)
        output = work / f"{name}.out"
        finish(start_runner(args, env_of(name, base_url, key, urls[name]), output))
        outputs.append(output)
        outcomes[name] = read_outcomes(output)
        statuses[name] = [r.status for r in sandbox.state.request_log]

    with SandboxServer(dataset, api_key=KEY) as sandbox:
        run("success", sandbox.base_url, KEY, sandbox)
    with SandboxServer(dataset, api_key=KEY) as sandbox:
        run("wrong_key", sandbox.base_url, WRONG_KEY, sandbox)
    with SandboxServer(dataset, api_key=KEY, faults=FaultConfig(p_5xx=1.0)) as sandbox:
        run("retries_exhausted", sandbox.base_url, KEY, sandbox)
    with SandboxServer(dataset, api_key=KEY) as sandbox, HostileProxy(sandbox) as proxy:
        for index, call_id in enumerate(dataset.lead_call_ids[:6]):
            proxy.rules[("call", call_id)] = _echo_key_503 if index % 2 else _echo_key_400
        run("server_echoes_key", proxy.base_url, KEY, sandbox)
    if warehouses.backend == "postgresql":
        # All at once: each only has to fail to connect.
        with SandboxServer(dataset, api_key=KEY) as sandbox:
            procs = {
                name: start_runner(["leads"], env_of(name, sandbox.base_url, KEY, url), work / f"{name}.out")
                for name, url in _unreachable_urls(urls["success"], work).items()
            }
            for name, proc in procs.items():
                finish(proc)
                outputs.append(work / f"{name}.out")
                outcomes[name] = read_outcomes(work / f"{name}.out")
    yield Runs(home, outputs, urls, warehouses.backend, outcomes, statuses)


def test_the_key_was_really_used(runs: Runs) -> None:
    assert [o["success"] for o in runs.outcomes["success"]] == [True, True]
    assert runs.statuses["success"].count(200) > 20  # the sandbox accepts only KEY
    assert runs.statuses["wrong_key"] == [403]


def test_failing_runs_failed_where_keys_leak_most(runs: Runs) -> None:
    assert "check APTEN_API_KEY" in runs.outcomes["wrong_key"][0]["error"]
    assert "failed after 6 attempts" in runs.outcomes["retries_exhausted"][0]["error"]
    echoed = runs.outcomes["server_echoes_key"][-1]
    assert not echoed["success"] and "calls could not be fetched" in echoed["error"]
    output = next(p for p in runs.outputs if p.name == "server_echoes_key.out").read_text()
    assert "Apten rejected the request (HTTP 400): invalid request for key ***" in output
    # The 400s were quarantined with the redacted reason; the 503s failed the step as before.
    with open_store(runs.warehouses["server_echoes_key"], read_only=True) as store:
        reasons = [r for (r,) in query(store, "SELECT reason FROM apten.rejected_records")]
    assert len(reasons) == 3 and all("invalid request for key ***" in r for r in reasons)


def test_a_warehouse_that_cannot_be_reached_fails_the_run_clearly(runs: Runs) -> None:
    if runs.backend != "postgresql":
        pytest.skip("a DuckDB file has no password, server or host")
    for name, cause in UNREACHABLE.items():
        (outcome,) = runs.outcomes[name]
        assert not outcome["success"]
        assert "could not connect to the PostgreSQL warehouse" in outcome["error"], outcome["error"]
        assert f"{DB_ROLE}:***@" in outcome["error"] and cause in outcome["error"]


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def test_dagster_instance_storage_has_no_key(runs: Runs) -> None:
    files = _files(runs.home)
    names = {p.name for p in files}
    # Run storage, event log and compute logs are all there and were searched.
    assert any(n.endswith(".db") for n in names), names
    assert any(p.suffix in (".out", ".err", ".complete") or "compute_logs" in str(p) for p in files), names
    blob = b"".join(p.read_bytes() for p in files)
    assert b"check APTEN_API_KEY" in blob  # the errors did land in the instance
    if runs.backend == "postgresql":
        assert b"could not connect to the PostgreSQL warehouse" in blob
    for secret in SECRETS:
        assert secret.encode() not in blob, secret


def _stored_text(url: str) -> bytes:
    """Everything the warehouse holds: a DuckDB file's bytes (and its WAL), or every row of every
    table in PostgreSQL's schema `apten` as text."""
    parsed = WarehouseURL.parse(url)
    if parsed.backend == "duckdb":
        return b"".join(p.read_bytes() for p in Path(parsed.path).parent.glob(Path(parsed.path).name + "*"))
    with open_store(url, read_only=True) as store:
        tables = query(store, "SELECT table_name FROM information_schema.tables WHERE table_schema = 'apten'")
        rows = [query(store, f'SELECT CAST(t AS text) FROM apten."{name}" AS t') for (name,) in tables]
    assert len(tables) >= 8
    return json.dumps(rows, ensure_ascii=False).encode()


def test_the_warehouses_hold_no_secret(runs: Runs) -> None:
    assert set(runs.warehouses) == {"success", "wrong_key", "retries_exhausted", "server_echoes_key"}
    for name, url in runs.warehouses.items():
        data = _stored_text(url)
        if name == "success":
            assert b"call" in data  # the rows were really read
        for secret in SECRETS:
            assert secret.encode() not in data, (name, secret)


def test_process_output_has_no_secret(runs: Runs) -> None:
    for path in runs.outputs:
        text = path.read_bytes()
        assert text
        for secret in SECRETS:
            assert secret.encode() not in text, (path, secret)


# --------------------------------------------------------------------------- invalid settings

BAD_SETTINGS = {
    "start_date_not_a_date": ({"APTEN_START_DATE": "2026-13-01"}, "APTEN_START_DATE"),
    "start_date_words": ({"APTEN_START_DATE": "yesterday"}, "APTEN_START_DATE"),
    "start_date_in_the_future": ({"APTEN_START_DATE": "2999-01-01"}, "APTEN_START_DATE"),
    "max_rps_zero": ({"APTEN_MAX_RPS": "0"}, "APTEN_MAX_RPS"),
    "max_rps_negative": ({"APTEN_MAX_RPS": "-5"}, "APTEN_MAX_RPS"),
    "max_concurrency_zero": ({"APTEN_MAX_CONCURRENCY": "0"}, "APTEN_MAX_CONCURRENCY"),
    "give_up_hours_zero": ({"APTEN_SUMMARY_GIVE_UP_HOURS": "0"}, "APTEN_SUMMARY_GIVE_UP_HOURS"),
    "plain_http_to_a_remote_host": ({"APTEN_BASE_URL": "http://api.attent.app/v1"}, "APTEN_BASE_URL"),
    "max_rps_nan": ({"APTEN_MAX_RPS": "nan"}, "APTEN_MAX_RPS"),
    "give_up_hours_inf": ({"APTEN_SUMMARY_GIVE_UP_HOURS": "inf"}, "APTEN_SUMMARY_GIVE_UP_HOURS"),
    "key_with_a_line_break": ({"APTEN_API_KEY": f"{KEY[:12]}\n{KEY[12:]}"}, "APTEN_API_KEY"),
    "key_with_a_tab": ({"APTEN_API_KEY": f"{KEY[:20]}\t{KEY[20:]}"}, "APTEN_API_KEY"),
}


@pytest.fixture(scope="module")
def bad_settings_results(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple]]:
    """`dagster asset materialize` of the real code location with each bad setting, all at once."""
    work = tmp_path_factory.mktemp("bad_settings")
    dataset = SandboxDataset(SPEC)
    with SandboxServer(dataset, api_key=KEY) as sandbox:
        procs = {}
        for name, (bad, _) in BAD_SETTINGS.items():
            env = pipeline_env(sandbox.base_url, work / f"{name}.duckdb", "2026-05-13", api_key=KEY)
            env.pop("DAGSTER_HOME", None)
            env.update(bad)
            procs[name] = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "dagster"),
                    *("asset", "materialize", "-m", "apten_assets.definitions", "--select", "apten/leads"),
                ],
                cwd=REPO_ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        results = {}
        for name, proc in procs.items():
            out, _ = proc.communicate(timeout=300)
            results[name] = (proc.returncode, out.decode(errors="replace"))
        requests = len(sandbox.state.request_log)
    yield {name: (*result, requests) for name, result in results.items()}


@pytest.mark.parametrize("case", list(BAD_SETTINGS))
def test_invalid_setting_fails_early_naming_the_variable(
    bad_settings_results: dict[str, tuple], case: str
) -> None:
    code, output, requests = bad_settings_results[case]
    variable = BAD_SETTINGS[case][1]
    assert code != 0
    assert "ConfigError" in output, output[-2000:]
    assert any(f"{variable} {verb}" in output for verb in ("must", "uses", "contains")), output[-2000:]
    assert requests == 0  # failed before any request reached the API
    assert KEY[:12] not in output and KEY[-12:] not in output


# --------------------------------------------------------------------------- the client's own texts

FAST = RetryPolicy(max_attempts=1)
SINCE = datetime(2026, 1, 1, tzinfo=UTC)


def _client(server: ScriptedServer) -> AptenClient:
    return AptenClient(AptenSettings(base_url=server.base_url, api_key=KEY), retry=FAST)


def _pieces(text: str, size: int = 8) -> list[str]:
    """Every piece of the key of `size` characters that appears in `text`."""
    return [KEY[i : i + size] for i in range(len(KEY) - size + 1) if KEY[i : i + size] in text]


@pytest.mark.parametrize("offset", [0, 470, 480, 485, 490, 495, 499, 505])
def test_an_echoed_key_leaves_no_piece_in_the_error_wherever_the_message_cut_falls(offset: int) -> None:
    """Apten's `message` is cut at 500 characters: the key is taken out before the cut."""
    message = "x" * offset + KEY + " tail"
    reply = Reply(status=400, json={"message": message})
    with (
        ScriptedServer(lambda seen: reply) as server,
        _client(server) as client,
        pytest.raises(AptenBadRequest) as info,
    ):
        client.get_call("call_1")
    assert _pieces(str(info.value)) == []


@pytest.mark.parametrize("offset", [150, 175, 180, 190, 199])
def test_an_echoed_key_in_a_plain_text_error_is_redacted_before_the_excerpt_is_cut(offset: int) -> None:
    reply = Reply(status=409, text="y" * offset + KEY)
    with (
        ScriptedServer(lambda seen: reply) as server,
        _client(server) as client,
        pytest.raises(AptenHTTPError) as info,
    ):
        list(client.iter_leads(updated_since=SINCE))
    assert "HTTP 409" in str(info.value)
    assert _pieces(str(info.value)) == []


@pytest.mark.parametrize("piece", [KEY[:8], KEY[:9], KEY[:20], KEY[-8:], KEY[-19:]])
def test_a_piece_of_the_key_left_by_the_server_cutting_its_own_message_is_redacted(piece: str) -> None:
    reply = Reply(status=400, json={"message": f"bad key '{piece}...' (truncated)"})
    with (
        ScriptedServer(lambda seen: reply) as server,
        _client(server) as client,
        pytest.raises(AptenBadRequest) as info,
    ):
        client.get_call("call_1")
    assert piece not in str(info.value)
    assert "bad key '***...' (truncated)" in str(info.value)


def test_a_200_body_echoing_the_key_is_redacted_before_anyone_sees_it() -> None:
    call = {
        "id": "call_1",
        "summary": f"The caller read out {KEY} twice",
        "transcript": [
            {"role": "user", "content": f"my key is {KEY}"},
            {"role": "assistant", "content": "ok"},
        ],
        "metadata": {KEY: [f"x{KEY}y", 3, None]},
    }
    leads = {"leads": [{"id": "lead_1", "firstName": KEY, "tags": [KEY]}], "nextToken": None}
    answers = {"/v1/calls/call_1": Reply(json=call), "/v1/leads": Reply(json=leads)}
    with ScriptedServer(lambda seen: answers[seen.path]) as server, _client(server) as client:
        fetched = client.get_call("call_1").body
        listed = list(client.iter_leads(updated_since=SINCE))
    assert KEY not in json.dumps([fetched, listed])
    assert fetched["transcript"][0]["content"] == "my key is ***"
    assert fetched["metadata"] == {"***": ["x***y", 3, None]}
    assert listed == [{"id": "lead_1", "firstName": "***", "tags": ["***"]}]


@pytest.mark.parametrize(
    ("bad", "what"),
    [
        ("\n", "a line break"),
        ("\r\n", "a line break"),
        ("\x00", "a control character"),
        ("\t", "a space"),
        (" ", "a space"),
        ("\x7f", "a control character"),
        ("é", "a non-ASCII character"),
    ],
)
def test_a_key_with_whitespace_or_control_characters_fails_before_any_request(bad: str, what: str) -> None:
    broken = KEY[:10] + bad + KEY[10:]
    with ScriptedServer(lambda seen: Reply(json={"id": "c"})) as server:
        for load in (
            lambda: AptenSettings.from_env({"APTEN_BASE_URL": server.base_url, "APTEN_API_KEY": broken}),
            lambda: AptenClient(AptenSettings(base_url=server.base_url, api_key=broken)),
        ):
            with pytest.raises(ConfigError, match=f"APTEN_API_KEY contains {what} at position 10") as info:
                load()
            assert _pieces(str(info.value), 5) == []
        assert server.requests == []
