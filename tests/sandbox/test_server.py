"""Running the sandbox: a background server that starts fast and leaves nothing behind, and the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from apten_assets.sandbox.__main__ import build, parse_args
from apten_assets.sandbox.data import SandboxDataset
from apten_assets.sandbox.server import SandboxServer
from tests.conftest import SMALL_SPEC


def test_server_starts_on_a_free_loopback_port_and_stops_cleanly() -> None:
    threads_before = set(threading.enumerate())
    started = time.perf_counter()
    with SandboxServer(SMALL_SPEC) as sb:
        print(f"started in {time.perf_counter() - started:.3f}s")
        base_url = sb.base_url
        assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
        assert httpx.get(f"{base_url}/calls/x").status_code == 404
    assert set(threading.enumerate()) <= threads_before
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{base_url}/calls/x")


def test_two_servers_run_side_by_side(sandbox_dataset: SandboxDataset) -> None:
    with SandboxServer(sandbox_dataset) as first, SandboxServer(sandbox_dataset, api_key="k") as second:
        assert first.port != second.port
        assert httpx.get(f"{first.base_url}/calls/x").status_code == 404
        assert httpx.get(f"{second.base_url}/calls/x").status_code == 403


def test_stop_is_idempotent_and_base_url_needs_a_running_server(sandbox_dataset: SandboxDataset) -> None:
    server = SandboxServer(sandbox_dataset)
    with pytest.raises(RuntimeError):
        _ = server.base_url
    server.start()
    server.stop()
    server.stop()


def test_cli_flags_map_to_spec_and_faults() -> None:
    args = parse_args(["--leads", "12", "--calls-per-lead", "3", "--days", "2", "--rate-limit-rps", "0"])
    spec, faults = build(args)
    assert (spec.n_leads, spec.calls_per_lead, spec.days, spec.anchor) == (12, 3, 2, None)
    assert faults.rate_limit_rps is None and faults.latency_ms == 0
    _, limited = build(parse_args(["--rate-limit-rps", "20", "--p-5xx", "0.1"]))
    assert limited.rate_limit_rps == 20 and limited.p_5xx == 0.1


def test_cli_serves_until_terminated_and_ends_with_a_summary() -> None:
    command = [sys.executable, "-m", "apten_assets.sandbox", "--port", "0", "--leads", "5", "--days", "2"]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, text=True, env=os.environ | {"PYTHONUNBUFFERED": "1"}
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline() for _ in range(3)]
        assert "5 leads" in lines[1]
        base_url = lines[2].split()[4]
        assert (
            httpx.get(f"{base_url}/leads", params={"updatedSince": "2000-01-01T00:00:00Z"}).status_code == 200
        )
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=10)
        assert "stopped after serving 1 requests" in output
        assert process.returncode == 0
    finally:
        process.kill()
        process.wait()
