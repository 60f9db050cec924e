"""`APTEN_WAREHOUSE_URL`: which backend holds the tables, and how to reach it.

`duckdb:///path/file.duckdb` (the path is everything after `duckdb:///`, so `duckdb:////abs/x.duckdb`
is absolute) or `postgresql://user[:password]@host[:port]/database[?options]`. For a Unix socket
the host is the socket directory, given as libpq does: `postgresql://user@/database?host=/run/pg`.
Other options (`sslmode=require`, ...) are passed to libpq as given. The password, also when
given as `?password=`, is kept out of `repr`, `str` and every error message: `redacted` is what
logs, metadata and errors show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

DUCKDB = "duckdb"
POSTGRES = "postgresql"
_POSTGRES_SCHEMES = ("postgresql", "postgres")


class WarehouseURLError(ValueError):
    """The URL cannot be used; the message never contains the password."""


@dataclass(frozen=True)
class WarehouseURL:
    """A parsed warehouse URL. `str()` and `repr()` show it with the password replaced by `***`."""

    backend: str
    path: str = ""
    host: str = ""
    port: int = 5432
    user: str = ""
    password: str | None = field(default=None, repr=False)
    database: str = ""
    # libpq options from the query string other than host, port and password, in order.
    options: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, url: str) -> WarehouseURL:
        text = url.strip()
        scheme = text.split(":", 1)[0].lower() if ":" in text else ""
        if scheme == DUCKDB:
            if not text.lower().startswith("duckdb:///") or len(text) <= len("duckdb:///"):
                raise WarehouseURLError(
                    "APTEN_WAREHOUSE_URL: a DuckDB URL is duckdb:///path/to/file.duckdb "
                    "(three slashes, then the file path)"
                )
            return cls(backend=DUCKDB, path=text[len("duckdb:///") :])
        if scheme in _POSTGRES_SCHEMES:
            try:
                parts = urlsplit(text)
                port = parts.port or 5432
            except ValueError:
                raise WarehouseURLError(
                    "APTEN_WAREHOUSE_URL: a PostgreSQL URL is postgresql://user[:password]@host:port/db "
                    "(the port must be a number)"
                ) from None
            database = unquote(parts.path.lstrip("/"))
            query = parse_qsl(parts.query, keep_blank_values=True)
            given = dict(query)
            password = unquote(parts.password) if parts.password is not None else given.get("password")
            host = parts.hostname or given.get("host", "")
            try:
                port = int(given["port"]) if "port" in given else port
            except ValueError:
                raise WarehouseURLError(
                    "APTEN_WAREHOUSE_URL: a PostgreSQL URL's port must be a number"
                ) from None
            if not host or not parts.username or not database:
                raise WarehouseURLError(
                    "APTEN_WAREHOUSE_URL: a PostgreSQL URL needs a user, a host and a database: "
                    "postgresql://user[:password]@host:port/db (or @/db?host=/socket/dir)"
                )
            return cls(
                backend=POSTGRES,
                host=host,
                port=port,
                user=unquote(parts.username),
                password=password,
                database=database,
                options=tuple(
                    (name, value) for name, value in query if name not in ("host", "port", "password")
                ),
            )
        raise WarehouseURLError(
            "APTEN_WAREHOUSE_URL must start with duckdb:/// or postgresql:// "
            f"(got a URL with scheme {scheme[:20]!r})"
        )

    @classmethod
    def for_duckdb_file(cls, path: str) -> WarehouseURL:
        return cls(backend=DUCKDB, path=path)

    @property
    def is_socket(self) -> bool:
        """The host is a Unix socket directory (libpq's rule: it starts with a slash)."""
        return self.host.startswith("/")

    def _uri(self, secret: str, options: list[tuple[str, str]]) -> str:
        user = quote(self.user, safe="")
        database = quote(self.database, safe="")
        if self.is_socket:
            options = [("host", self.host), ("port", str(self.port)), *options]
            location = ""
        else:
            location = f"{self.host}:{self.port}"
        query = f"?{urlencode(options, safe='/')}" if options else ""
        return f"postgresql://{user}{secret}@{location}/{database}{query}"

    @property
    def redacted(self) -> str:
        """The URL to show anywhere: the password, if any, as `***`."""
        if self.backend == DUCKDB:
            return f"duckdb:///{self.path}"
        return self._uri(":***" if self.password is not None else "", list(self.options))

    def libpq_uri(self, *, connect_timeout: float | None = None) -> str:
        """The URL to connect with, password included: never log or show it.

        `connect_timeout` (seconds, rounded up; libpq's minimum is 2) unless the URL sets one."""
        options = list(self.options)
        if connect_timeout is not None and "connect_timeout" not in dict(options):
            options.append(("connect_timeout", str(max(2, math.ceil(connect_timeout)))))
        secret = f":{quote(self.password, safe='')}" if self.password is not None else ""
        return self._uri(secret, options)

    def __str__(self) -> str:
        return self.redacted
