"""AptenSettings.from_env: every bad value fails with a message naming the variable to fix."""

from __future__ import annotations

from datetime import date

import pytest

from apten_assets.lib.config import DEFAULT_BASE_URL, AptenSettings, ConfigError


def test_defaults_point_at_the_real_api() -> None:
    settings = AptenSettings.from_env({})
    assert settings.base_url == DEFAULT_BASE_URL
    assert settings.max_rps == 10
    assert settings.max_concurrency == 8
    assert settings.is_real_api


def test_values_are_read_and_trimmed() -> None:
    settings = AptenSettings.from_env(
        {
            "APTEN_BASE_URL": " http://127.0.0.1:8123/v1/ ",
            "APTEN_API_KEY": "k",
            "APTEN_START_DATE": "2026-01-05",
            "APTEN_MAX_RPS": "2.5",
            "APTEN_MAX_CONCURRENCY": "3",
        }
    )
    assert settings.base_url == "http://127.0.0.1:8123/v1"
    assert settings.start_date == date(2026, 1, 5)
    assert (settings.max_rps, settings.max_concurrency) == (2.5, 3)
    assert not settings.is_real_api


@pytest.mark.parametrize("value", ["05/01/2026", "2026-13-01", "yesterday"])
def test_bad_start_date_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="APTEN_START_DATE must be a date as YYYY-MM-DD"):
        AptenSettings.from_env({"APTEN_START_DATE": value})


def test_unknown_automation_default_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="APTEN_AUTOMATION_DEFAULT must be 'stopped' or 'running'"):
        AptenSettings.from_env({"APTEN_AUTOMATION_DEFAULT": "on"})


def test_start_date_in_the_future_is_refused() -> None:
    with pytest.raises(ConfigError, match="APTEN_START_DATE must not be in the future"):
        AptenSettings.from_env({"APTEN_START_DATE": "2999-01-01"})


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("APTEN_MAX_RPS", "0", "APTEN_MAX_RPS must be a positive number"),
        ("APTEN_MAX_RPS", "-3", "APTEN_MAX_RPS must be a positive number"),
        ("APTEN_MAX_RPS", "fast", "APTEN_MAX_RPS must be a number"),
        ("APTEN_MAX_CONCURRENCY", "0", "APTEN_MAX_CONCURRENCY must be a positive whole number"),
        ("APTEN_MAX_CONCURRENCY", "2.5", "APTEN_MAX_CONCURRENCY must be a whole number"),
        ("APTEN_SUMMARY_GIVE_UP_HOURS", "0", "APTEN_SUMMARY_GIVE_UP_HOURS must be a positive number"),
        ("APTEN_SUMMARY_RECHECK_MINUTES", "-1", "APTEN_SUMMARY_RECHECK_MINUTES must be 0 or more"),
    ],
)
def test_non_positive_or_non_numeric_rates_name_the_variable(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AptenSettings.from_env({name: value})


@pytest.mark.parametrize("url", ["http://api.attent.app/v1", "http://10.0.0.5:8000/v1"])
def test_plain_http_to_a_non_loopback_host_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match="APTEN_BASE_URL uses plain http://"):
        AptenSettings.from_env({"APTEN_BASE_URL": url})


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/v1", "http://localhost:9/v1", "http://[::1]:9/v1"])
def test_plain_http_to_loopback_is_allowed(url: str) -> None:
    assert AptenSettings.from_env({"APTEN_BASE_URL": url}).require_api_key() is None


@pytest.mark.parametrize("url", ["ftp://api.attent.app/v1", "api.attent.app/v1"])
def test_base_url_must_be_http_or_https(url: str) -> None:
    with pytest.raises(ConfigError, match="APTEN_BASE_URL must be an http"):
        AptenSettings.from_env({"APTEN_BASE_URL": url})


def test_missing_key_for_the_real_api_names_the_variable() -> None:
    settings = AptenSettings.from_env({"APTEN_API_KEY": "   "})
    with pytest.raises(ConfigError, match="APTEN_API_KEY is not set"):
        settings.require_api_key()


def test_key_and_webhook_secret_are_hidden_from_repr() -> None:
    settings = AptenSettings.from_env({"APTEN_API_KEY": "sk-live-abc", "APTEN_WEBHOOK_SECRET": "whsec-xyz"})
    assert settings.require_api_key() == "sk-live-abc"
    assert "sk-live-abc" not in repr(settings)
    assert "whsec-xyz" not in repr(settings)


def test_warehouse_defaults_to_the_duckdb_file() -> None:
    settings = AptenSettings.from_env({"APTEN_DUCKDB_PATH": "/tmp/x/apten.duckdb"})
    assert settings.warehouse.backend == "duckdb"
    assert settings.warehouse.path == "/tmp/x/apten.duckdb"
    assert str(settings.warehouse) == "duckdb:////tmp/x/apten.duckdb"
    assert AptenSettings.from_env({}).warehouse.path == "data/apten.duckdb"


def test_warehouse_url_password_never_shows() -> None:
    secret = "s3cr3t-pa55"
    settings = AptenSettings.from_env(
        {"APTEN_WAREHOUSE_URL": f"postgresql://etl:{secret}@db.internal:6543/analytics"}
    )
    url = settings.warehouse
    assert (url.backend, url.user, url.password, url.host, url.port, url.database) == (
        "postgresql",
        "etl",
        secret,
        "db.internal",
        6543,
        "analytics",
    )
    for shown in (str(url), repr(url), url.redacted, repr(settings), str(settings)):
        assert secret not in shown
    assert str(url) == "postgresql://etl:***@db.internal:6543/analytics"


@pytest.mark.parametrize(
    "value",
    [
        "postgresql://etl:s3cr3t-pa55@db.internal:notaport/analytics",
        "postgresql://:s3cr3t-pa55@db.internal/analytics",
        "mysql://etl:s3cr3t-pa55@db.internal/analytics",
        "duckdb://s3cr3t-pa55",
    ],
)
def test_bad_warehouse_url_names_the_variable_and_hides_the_password(value: str) -> None:
    with pytest.raises(ConfigError, match="APTEN_WAREHOUSE_URL") as caught:
        AptenSettings.from_env({"APTEN_WAREHOUSE_URL": value})
    assert "s3cr3t-pa55" not in str(caught.value)


NUMERIC_VARIABLES = [
    "APTEN_MAX_RPS",
    "APTEN_MAX_CONCURRENCY",
    "APTEN_SUMMARY_RECHECK_MINUTES",
    "APTEN_SUMMARY_GIVE_UP_HOURS",
    "APTEN_REQUEST_DEADLINE_SECONDS",
    "APTEN_MAX_BODY_BYTES",
    "APTEN_MAX_PAGES",
    "APTEN_MAX_JSON_DEPTH",
]


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity", "-1", "1e12"])
@pytest.mark.parametrize("name", NUMERIC_VARIABLES)
def test_non_finite_negative_or_huge_numbers_fail_when_settings_load_naming_the_variable(
    name: str, value: str
) -> None:
    with pytest.raises(ConfigError, match=f"^{name} must be") as info:
        AptenSettings.from_env({name: value})
    assert "None" not in str(info.value)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("APTEN_MAX_RPS", "1000001"),
        ("APTEN_MAX_CONCURRENCY", "1001"),
        ("APTEN_SUMMARY_RECHECK_MINUTES", "10081"),
        ("APTEN_SUMMARY_GIVE_UP_HOURS", "87601"),
        ("APTEN_REQUEST_DEADLINE_SECONDS", "0"),
        ("APTEN_MAX_BODY_BYTES", "1023"),
        ("APTEN_MAX_PAGES", "0"),
        ("APTEN_MAX_JSON_DEPTH", "1"),
    ],
)
def test_values_just_outside_the_range_are_refused(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"{name} must be .* at most"):
        AptenSettings.from_env({name: value})


def test_the_same_rules_hold_for_settings_built_in_code() -> None:
    with pytest.raises(ConfigError, match="APTEN_MAX_RPS must be"):
        AptenSettings(max_rps=float("nan"))
    with pytest.raises(ConfigError, match="APTEN_SUMMARY_GIVE_UP_HOURS must be"):
        AptenSettings(summary_give_up_hours=float("inf"))
    with pytest.raises(ConfigError, match="APTEN_MAX_BODY_BYTES must be"):
        AptenSettings(max_body_bytes=-1)


def test_client_limits_have_defaults_and_are_read_from_the_environment() -> None:
    defaults = AptenSettings.from_env({})
    assert (defaults.request_deadline_seconds, defaults.max_body_bytes) == (120.0, 64 * 1024 * 1024)
    assert (defaults.max_pages, defaults.max_json_depth) == (20_000, 512)
    settings = AptenSettings.from_env(
        {
            "APTEN_REQUEST_DEADLINE_SECONDS": "7.5",
            "APTEN_MAX_BODY_BYTES": "2048",
            "APTEN_MAX_PAGES": "3",
            "APTEN_MAX_JSON_DEPTH": "64",
        }
    )
    assert (settings.request_deadline_seconds, settings.max_body_bytes) == (7.5, 2048)
    assert (settings.max_pages, settings.max_json_depth) == (3, 64)


def test_postgres_unix_socket_url_as_pgserver_gives_it() -> None:
    url = AptenSettings.from_env(
        {"APTEN_WAREHOUSE_URL": "postgresql://postgres:@/postgres?host=/tmp/pg"}
    ).warehouse
    assert (url.backend, url.user, url.host, url.database, url.is_socket) == (
        "postgresql",
        "postgres",
        "/tmp/pg",
        "postgres",
        True,
    )
    assert str(url) == "postgresql://postgres:***@/postgres?host=/tmp/pg&port=5432"


def test_postgres_password_given_as_an_option_never_shows() -> None:
    secret = "s3cr3t-pa55"
    url = AptenSettings.from_env(
        {"APTEN_WAREHOUSE_URL": f"postgresql://etl@db.internal/analytics?password={secret}&sslmode=require"}
    ).warehouse
    assert url.password == secret and url.options == (("sslmode", "require"),)
    for shown in (str(url), repr(url), url.redacted):
        assert secret not in shown
    assert secret in url.libpq_uri()
