"""`APTEN_WAREHOUSE_URL`: which backend holds the tables, and how to reach it.

`duckdb:///path/file.duckdb` (the path is everything after `duckdb:///`, so `duckdb:////abs/x.duckdb`
is absolute) or `postgresql://user[:password]@host[:port]/database`. The password is kept out of
`repr`, `str` and every error message: `redacted` is what logs, metadata and errors show.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

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
            if not parts.hostname or not parts.username or not database:
                raise WarehouseURLError(
                    "APTEN_WAREHOUSE_URL: a PostgreSQL URL needs a user, a host and a database: "
                    "postgresql://user[:password]@host:port/db"
                )
            return cls(
                backend=POSTGRES,
                host=parts.hostname,
                port=port,
                user=unquote(parts.username),
                password=unquote(parts.password) if parts.password is not None else None,
                database=database,
            )
        raise WarehouseURLError(
            "APTEN_WAREHOUSE_URL must start with duckdb:/// or postgresql:// "
            f"(got a URL with scheme {scheme[:20]!r})"
        )

    @classmethod
    def for_duckdb_file(cls, path: str) -> WarehouseURL:
        return cls(backend=DUCKDB, path=path)

    @property
    def redacted(self) -> str:
        """The URL to show anywhere: the password, if any, as `***`."""
        if self.backend == DUCKDB:
            return f"duckdb:///{self.path}"
        secret = ":***" if self.password is not None else ""
        return f"postgresql://{self.user}{secret}@{self.host}:{self.port}/{self.database}"

    def __str__(self) -> str:
        return self.redacted
