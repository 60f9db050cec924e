"""Reliability drills run small here, on every warehouse backend; `APTEN_RELIABILITY_FULL=1` runs
them at the sizes of RELIABILITY.md (minutes), as `uv run python -m tools.reliability` does."""

from __future__ import annotations

import itertools
import os

import pytest

from apten_assets.warehouse import WarehouseURL
from tests.conftest import WAREHOUSE_BACKENDS
from tools.reliability.harness import Warehouses

FULL = os.environ.get("APTEN_RELIABILITY_FULL") == "1"

_databases = itertools.count()


@pytest.fixture(scope="module", params=WAREHOUSE_BACKENDS)
def warehouses(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Warehouses:
    """Where one drill keeps its warehouses: DuckDB files, or new databases on the session's
    throwaway PostgreSQL server (they go with the server at the end of the session)."""
    workdir = tmp_path_factory.mktemp(f"drill_{request.param}")
    if request.param != "postgres":
        return Warehouses(workdir)
    server = request.getfixturevalue("postgres_server")
    prefix = f"drill_{next(_databases)}"
    return Warehouses(
        workdir,
        lambda name: server.create_database(f"{prefix}_{name}"),
        lambda url, name: server.create_database(
            f"{prefix}_{name}", template=WarehouseURL.parse(url).database
        ),
    )
