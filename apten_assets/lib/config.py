"""The one place where environment variables are read (see CONTRACT.md §1)."""

from __future__ import annotations

import ipaddress
import math
import os
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

from apten_assets.lib.pii import LeadPii, PiiPolicy, TranscriptMode
from apten_assets.warehouse.url import WarehouseURL, WarehouseURLError

DEFAULT_BASE_URL = "https://api.attent.app/v1"
# Internal (test and fault-drill) settings; deliberately not in CONTRACT.md.
INTERNAL_READ_TIMEOUT_VAR = "APTEN_INTERNAL_READ_TIMEOUT_SECONDS"
INTERNAL_RETRY_BASE_VAR = "APTEN_INTERNAL_RETRY_BASE_SECONDS"


class ConfigError(ValueError):
    """A setting is invalid; the message names the environment variable to fix."""


@dataclass(frozen=True)
class _Range:
    """The values a numeric setting accepts: finite, above `low` (or at it when `low_ok`), at most `high`."""

    variable: str
    kind: type
    low: float
    low_ok: bool
    high: float

    def check(self, value: float) -> None:
        in_range = math.isfinite(value) and (value >= self.low if self.low_ok else value > self.low)
        if not in_range or value > self.high:
            whole = " whole" if self.kind is int else ""
            lowest = "0 or more" if self.low == 0 and self.low_ok else f"a positive{whole} number"
            if self.low > 0:
                lowest = f"a{whole} number of at least {self.low:.15g}"
            raise ConfigError(f"{self.variable} must be {lowest} and at most {self.high:.15g}, got {value}")


# Every numeric setting, by attribute: the one rule for what it accepts. Upper bounds keep
# timedelta and sleep arithmetic finite; the limits' defaults are far from anything real data reaches.
_RANGES = {
    "max_rps": _Range("APTEN_MAX_RPS", float, 0, False, 1_000_000),
    "max_concurrency": _Range("APTEN_MAX_CONCURRENCY", int, 0, False, 1_000),
    "summary_recheck_minutes": _Range("APTEN_SUMMARY_RECHECK_MINUTES", float, 0, True, 10_080),
    "summary_give_up_hours": _Range("APTEN_SUMMARY_GIVE_UP_HOURS", float, 0, False, 87_600),
    "request_deadline_seconds": _Range("APTEN_REQUEST_DEADLINE_SECONDS", float, 0, False, 3_600),
    "max_body_bytes": _Range("APTEN_MAX_BODY_BYTES", int, 1_024, True, 2**30),
    "max_pages": _Range("APTEN_MAX_PAGES", int, 0, False, 10_000_000),
    "max_json_depth": _Range("APTEN_MAX_JSON_DEPTH", int, 2, True, 100_000),
    "http_read_timeout_seconds": _Range(INTERNAL_READ_TIMEOUT_VAR, float, 0, False, 3_600),
    "retry_base_delay_seconds": _Range(INTERNAL_RETRY_BASE_VAR, float, 0, True, 3_600),
}


def _check_api_key(key: str | None) -> None:
    """A key httpx can send as a header: printable ASCII without spaces. The message gives the
    position of the first bad character, never the key."""
    for position, char in enumerate(key or ""):
        if not "!" <= char <= "~":
            what = (
                "a line break" if char in "\r\n" else "a space" if char.isspace() else "a control character"
            )
            if not char.isascii():
                what = "a non-ASCII character"
            raise ConfigError(
                f"APTEN_API_KEY contains {what} at position {position}: copy the key again from "
                "Apten's Developer Portal, without spaces or line breaks"
            )


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
    # APTEN_WAREHOUSE_URL as given (it may hold a password, hence repr=False); None means the
    # DuckDB file at `duckdb_path`. Read it through `warehouse`, whose str() hides the password.
    warehouse_url: str | None = field(default=None, repr=False)
    start_date: date = field(default_factory=lambda: datetime.now(UTC).date() - timedelta(days=30))
    max_rps: float = 10.0
    max_concurrency: int = 8
    summary_recheck_minutes: float = 5.0
    summary_give_up_hours: float = 72.0
    webhook_secret: str | None = field(default=None, repr=False)
    webhook_inbox: str = "data/webhooks/"
    transcript_mode: TranscriptMode = TranscriptMode.FULL
    lead_pii: LeadPii = LeadPii.FULL
    pii_salt: str | None = field(default=None, repr=False)
    # Client limits (see CONTRACT.md): per-request deadline, decoded body size, pages per listing,
    # JSON nesting.
    request_deadline_seconds: float = 120.0
    max_body_bytes: int = 64 * 1024 * 1024
    max_pages: int = 20_000
    max_json_depth: int = 512
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
        for attr, allowed in _RANGES.items():
            allowed.check(getattr(self, attr))
        _check_api_key(self.api_key)
        if self.warehouse_url is not None:
            try:
                WarehouseURL.parse(self.warehouse_url)
            except WarehouseURLError as exc:
                raise ConfigError(str(exc)) from None
        if self.lead_pii is LeadPii.HASHED and not self.pii_salt:
            raise ConfigError(
                "APTEN_PII_SALT is not set: APTEN_LEAD_PII=hashed needs a secret key for the hashes "
                "(keep it stable: changing it changes every stored hash)"
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
    def warehouse(self) -> WarehouseURL:
        """Where the tables live: APTEN_WAREHOUSE_URL, else `duckdb:///` + APTEN_DUCKDB_PATH."""
        if self.warehouse_url is None:
            return WarehouseURL.for_duckdb_file(self.duckdb_path)
        return WarehouseURL.parse(self.warehouse_url)

    @property
    def pii(self) -> PiiPolicy:
        return PiiPolicy(self.transcript_mode, self.lead_pii, self.pii_salt)

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
        if (v := text("APTEN_WAREHOUSE_URL")) is not None:
            kwargs["warehouse_url"] = v
        if (v := text("APTEN_START_DATE")) is not None:
            try:
                kwargs["start_date"] = date.fromisoformat(v)
            except ValueError:
                raise ConfigError(f"APTEN_START_DATE must be a date as YYYY-MM-DD, got {v!r}") from None
        for attr, allowed in _RANGES.items():
            if (n := number(allowed.variable, allowed.kind)) is not None:
                kwargs[attr] = n
        if (v := text("APTEN_WEBHOOK_SECRET")) is not None:
            kwargs["webhook_secret"] = v
        if (v := text("APTEN_WEBHOOK_INBOX")) is not None:
            kwargs["webhook_inbox"] = v
        for name, attr, kind in (
            ("APTEN_TRANSCRIPT_MODE", "transcript_mode", TranscriptMode),
            ("APTEN_LEAD_PII", "lead_pii", LeadPii),
        ):
            if (v := text(name)) is not None:
                try:
                    kwargs[attr] = kind(v.lower())
                except ValueError:
                    choices = " | ".join(member.value for member in kind)
                    raise ConfigError(f"{name} must be one of {choices}, got {v!r}") from None
        if (v := text("APTEN_PII_SALT")) is not None:
            kwargs["pii_salt"] = v
        if (v := text("APTEN_AUTOMATION_DEFAULT")) is not None:
            if v.lower() not in ("stopped", "running"):
                raise ConfigError(f"APTEN_AUTOMATION_DEFAULT must be 'stopped' or 'running', got {v!r}")
            kwargs["automation_running"] = v.lower() == "running"
        return cls(**kwargs)  # type: ignore[arg-type]
