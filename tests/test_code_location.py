"""The code location loads through every loader a deployment uses, with no API key set."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster_cloud_cli.config.models import load_dagster_cloud_yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _env_without_key(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APTEN_")}
    env["DAGSTER_HOME"] = str(tmp_path / "dagster_home")
    env["APTEN_DUCKDB_PATH"] = str(tmp_path / "apten.duckdb")
    (tmp_path / "dagster_home").mkdir()
    return env


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_workspace_yaml_validates_with_dagsters_loader(tmp_path: Path) -> None:
    result = _run(
        [str(BIN / "dagster"), "definitions", "validate", "-w", "workspace.yaml"], _env_without_key(tmp_path)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful for code location apten_assets" in result.stdout + result.stderr


def test_dg_check_defs_passes_without_api_key(tmp_path: Path) -> None:
    result = _run([str(BIN / "dg"), "check", "defs"], _env_without_key(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "All definitions loaded successfully" in result.stdout + result.stderr


def test_dagster_cloud_yaml_parses_with_the_dagster_plus_cli_model() -> None:
    config = load_dagster_cloud_yaml((ROOT / "dagster_cloud.yaml").read_text())
    assert [loc.location_name for loc in config.locations] == ["apten_assets"]
    assert config.locations[0].code_source.module_name == "apten_assets.definitions"


def test_definitions_module_exposes_defs_with_contract_asset_keys() -> None:
    import dagster as dg

    from apten_assets.definitions import defs

    assert isinstance(defs, dg.Definitions)
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    expected = {
        "apten/leads",
        "apten/call_events",
        "apten/calls",
        "apten/call_summaries",
        "apten/call_transcript_turns",
        "apten/webhook_deliveries",
        "apten/call_transfers",
    }
    missing = expected - keys
    if missing:
        pytest.fail(f"asset keys missing from the code location: {sorted(missing)}")
