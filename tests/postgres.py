"""A throwaway PostgreSQL server for tests (`pgserver`: PostgreSQL binaries from PyPI).

Durability is switched off (`fsync`, `synchronous_commit`, `full_page_writes`): the data dies with
the test session, and each test gets its own database in tens of milliseconds.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from types import TracebackType

import adbc_driver_postgresql.dbapi as pg
import pgserver

from apten_assets.warehouse import WarehouseURL


class PostgresServer:
    """`with PostgresServer() as server:` starts it in a new folder (deleted afterwards);
    `create_database` gives a URL."""

    def __init__(self) -> None:
        # Not under pytest's tmp folders: run as root, pgserver starts PostgreSQL as another user,
        # who cannot enter those (mode 0700).
        self.folder = Path(tempfile.mkdtemp(prefix="apten-pg-"))
        self._server: pgserver.PostgresServer | None = None
        self._admin: pg.Connection | None = None

    def __enter__(self) -> PostgresServer:
        self._server = pgserver.get_server(self.folder, cleanup_mode="stop")
        self.url = WarehouseURL.parse(self._server.get_uri())
        self._admin = pg.connect(self.url.libpq_uri(), autocommit=True)
        for setting in ("fsync", "synchronous_commit", "full_page_writes"):
            self.admin(f"ALTER SYSTEM SET {setting} = off")
        self.admin("SELECT pg_reload_conf()")
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._admin is not None:
            self._admin.close()
        if self._server is not None:
            self._server.cleanup()
        shutil.rmtree(self.folder, ignore_errors=True)

    def admin(self, sql: str) -> list[tuple]:
        """Run one statement as the superuser on database `postgres`."""
        assert self._admin is not None
        with self._admin.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchall() if cursor.description else []

    def url_of(self, database: str, *, user: str | None = None, password: str | None = None) -> str:
        """The warehouse URL of `database` on this server (Unix socket; the superuser, no password,
        unless `user` is given)."""
        url = self.url
        return WarehouseURL(
            backend=url.backend,
            host=url.host,
            port=url.port,
            user=user or url.user,
            password=password,
            database=database,
        ).libpq_uri()

    def add_password_role(self, role: str, password: str) -> None:
        """A login role that must give `password` (SCRAM) on the Unix socket, where every other
        role is trusted: so a wrong password really fails, as on a production server."""
        literal = password.replace("'", "''")
        self.admin(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{literal}'")
        hba = self.folder / "pg_hba.conf"
        hba.write_text(f"local all {role} scram-sha-256\n" + hba.read_text())
        self.admin("SELECT pg_reload_conf()")

    def create_database(self, name: str, *, template: str = "template0") -> str:
        """A new database (a copy of `template`, which nobody may be connected to); its URL."""
        self.admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        return self.url_of(name)

    def drop_database(self, name: str) -> None:
        self.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
