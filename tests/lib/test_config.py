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
