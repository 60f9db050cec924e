"""The one place where environment variables are read (see CONTRACT.md §1)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_BASE_URL = "https://api.attent.app/v1"
# Internal (test and fault-drill) settings; deliberately not in CONTRACT.md.
INTERNAL_READ_TIMEOUT_VAR = "APTEN_INTERNAL_READ_TIMEOUT_SECONDS"
INTERNAL_RETRY_BASE_VAR = "APTEN_INTERNAL_RETRY_BASE_SECONDS"


class ConfigError(ValueError):
    """A setting is invalid; the message names the environment variable to fix."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class AptenSettings:
    """Validated settings. `api_key` is hidden from repr so it never lands in a log line."""

    base_url: str = DEFAULT_BASE_URL
    api_key: str | None = field(default=None, repr=False)
    duckdb_path: str = "data/apten.duckdb"
    start_date: date = field(default_factory=lambda: datetime.now(UTC).date() - timedelta(days=30))
    max_rps: float = 10.0
    max_concurrency: int = 8
    summary_recheck_minutes: float = 5.0
    summary_give_up_hours: float = 72.0
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_inbox: str = "data/webhooks/"
    # APTEN_AUTOMATION_DEFAULT=running: schedules and sensors start on without a click in the UI.
    automation_running: bool = False
    # Internal knobs for tests and fault drills, not part of the public contract: the HTTP read
    # timeout and the first retry backoff, so injected slow answers and retries cost milliseconds.
    http_read_timeout_seconds: float = 30.0
    retry_base_delay_seconds: float = 1.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"APTEN_BASE_URL must be an http(s) URL such as {DEFAULT_BASE_URL}, got {self.base_url!r}"
            )
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            raise ConfigError(
                "APTEN_BASE_URL uses plain http:// for a non-loopback host; use https:// so the "
                "API key is never sent in clear text"
            )
        if self.max_rps <= 0:
            raise ConfigError(f"APTEN_MAX_RPS must be a positive number, got {self.max_rps}")
        if self.max_concurrency <= 0:
            raise ConfigError(
                f"APTEN_MAX_CONCURRENCY must be a positive whole number, got {self.max_concurrency}"
            )
        if self.summary_recheck_minutes < 0:
            raise ConfigError(
                f"APTEN_SUMMARY_RECHECK_MINUTES must be 0 or more, got {self.summary_recheck_minutes}"
            )
        if self.summary_give_up_hours <= 0:
            raise ConfigError(
                f"APTEN_SUMMARY_GIVE_UP_HOURS must be a positive number, got {self.summary_give_up_hours}"
            )
        if self.http_read_timeout_seconds <= 0:
            raise ConfigError(
                f"{INTERNAL_READ_TIMEOUT_VAR} must be a positive number, got {self.http_read_timeout_seconds}"
            )
        if self.retry_base_delay_seconds < 0:
            raise ConfigError(
                f"{INTERNAL_RETRY_BASE_VAR} must be 0 or more, got {self.retry_base_delay_seconds}"
            )
        if self.start_date > datetime.now(UTC).date():
            raise ConfigError(f"APTEN_START_DATE must not be in the future, got {self.start_date}")

    @property
    def is_real_api(self) -> bool:
        host = urlsplit(self.base_url).hostname or ""
        return not _is_loopback(host)

    def require_api_key(self) -> str | None:
        """The key to send; fails before any request when the real API would get none."""
        if not self.api_key and self.is_real_api:
            raise ConfigError(
                f"APTEN_API_KEY is not set: set it to your Apten API key (Developer Portal) "
                f"before calling {self.base_url}"
            )
        return self.api_key

    @property
    def duckdb_file(self) -> Path:
        return Path(self.duckdb_path)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> AptenSettings:
        env = os.environ if environ is None else environ
        kwargs: dict[str, object] = {}

        def text(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value and value.strip() else None

        def number(name: str, kind: type) -> object | None:
            raw = text(name)
            if raw is None:
                return None
            try:
                return kind(raw)
            except ValueError:
                label = "a whole number" if kind is int else "a number"
                raise ConfigError(f"{name} must be {label}, got {raw!r}") from None

        if (v := text("APTEN_BASE_URL")) is not None:
            kwargs["base_url"] = v.rstrip("/")
        if (v := text("APTEN_API_KEY")) is not None:
            kwargs["api_key"] = v
        if (v := text("APTEN_DUCKDB_PATH")) is not None:
            kwargs["duckdb_path"] = v
        if (v := text("APTEN_START_DATE")) is not None:
            try:
                kwargs["start_date"] = date.fromisoformat(v)
            except ValueError:
                raise ConfigError(f"APTEN_START_DATE must be a date as YYYY-MM-DD, got {v!r}") from None
        for name, attr, kind in (
            ("APTEN_MAX_RPS", "max_rps", float),
            ("APTEN_MAX_CONCURRENCY", "max_concurrency", int),
            ("APTEN_SUMMARY_RECHECK_MINUTES", "summary_recheck_minutes", float),
            ("APTEN_SUMMARY_GIVE_UP_HOURS", "summary_give_up_hours", float),
            (INTERNAL_READ_TIMEOUT_VAR, "http_read_timeout_seconds", float),
            (INTERNAL_RETRY_BASE_VAR, "retry_base_delay_seconds", float),
        ):
            if (n := number(name, kind)) is not None:
                kwargs[attr] = n
        if (v := text("APTEN_WEBHOOK_SECRET")) is not None:
            kwargs["webhook_secret"] = v
        if (v := text("APTEN_WEBHOOK_INBOX")) is not None:
            kwargs["webhook_inbox"] = v
        if (v := text("APTEN_AUTOMATION_DEFAULT")) is not None:
            if v.lower() not in ("stopped", "running"):
                raise ConfigError(f"APTEN_AUTOMATION_DEFAULT must be 'stopped' or 'running', got {v!r}")
            kwargs["automation_running"] = v.lower() == "running"
        return cls(**kwargs)  # type: ignore[arg-type]
