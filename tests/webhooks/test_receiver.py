"""The receiver over real loopback HTTP: uvicorn in a thread, httpx as Apten."""

from __future__ import annotations

import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from apten_assets.webhooks import Inbox, create_app, delivery_key, sign
from tests.webhooks.conftest import SECRET, ReceiverThread

ROOT = Path(__file__).resolve().parents[2]

COMPLETED = {
    "event": "call.completed",
    "data": {
        "leadId": "c4f23a1b-d8e5-4f67-90c1-2a5b8d3e9x7y",
        "phone": "+12025550189",
        "profile": "Default Profile",
        "callId": "a1b2c3d4-e5f6-7890-abcd-ef1234567890",
        "durationSeconds": 145,
        "direction": "INBOUND",
        "summary": "Le client a demandé un devis – 北京",
    },
    "timestamp": "2024-01-15T14:30:00Z",
}


def post(http: httpx.Client, url: str, raw: bytes, signature: str | None = None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["X-Signature-SHA256"] = signature
    return http.post(url, content=raw, headers=headers)


def signed(http: httpx.Client, url: str, envelope: dict) -> httpx.Response:
    raw = json.dumps(envelope, ensure_ascii=False).encode()
    return post(http, url, raw, sign(raw, SECRET))


def test_signed_delivery_is_stored_and_readable_through_the_inbox(receiver, http, inbox: Inbox) -> None:
    raw = json.dumps(COMPLETED, ensure_ascii=False).encode()
    response = post(http, receiver.url, raw, f"sha256={sign(raw, SECRET).upper()}")
    assert response.status_code == 200
    assert response.json() == {"status": "stored", "delivery_key": delivery_key(COMPLETED)}
    [delivery] = inbox.iter_deliveries()
    assert delivery.raw == raw
    assert (delivery.event, delivery.event_timestamp) == ("call.completed", "2024-01-15T14:30:00Z")
    assert (delivery.call_id, delivery.lead_id, delivery.session_id) == (
        "a1b2c3d4-e5f6-7890-abcd-ef1234567890",
        "c4f23a1b-d8e5-4f67-90c1-2a5b8d3e9x7y",
        None,
    )
    assert delivery.received_at.tzinfo is not None


@pytest.mark.parametrize(
    "make_signature",
    [
        pytest.param(lambda raw: "0" * 64, id="wrong-signature"),
        pytest.param(lambda raw: sign(raw, "someone-elses-secret"), id="other-secret"),
        pytest.param(lambda raw: None, id="unsigned"),
        pytest.param(lambda raw: "", id="empty-header"),
        pytest.param(lambda raw: sign(raw + b"\n", SECRET), id="signed-other-bytes"),
    ],
)
def test_unverified_deliveries_get_401_and_nothing_is_stored(
    receiver, http, inbox: Inbox, make_signature
) -> None:
    raw = json.dumps(COMPLETED).encode()
    response = post(http, receiver.url, raw, make_signature(raw))
    assert response.status_code == 401
    assert inbox.count() == 0


def test_the_same_delivery_twice_is_stored_once(receiver, http, inbox: Inbox) -> None:
    first = signed(http, receiver.url, COMPLETED)
    again = signed(http, receiver.url, COMPLETED)
    assert [first.json()["status"], again.json()["status"]] == ["stored", "duplicate"]
    assert first.json()["delivery_key"] == again.json()["delivery_key"]
    assert inbox.count() == 1


def test_unknown_event_is_kept_as_sent(receiver, http, inbox: Inbox) -> None:
    envelope = {
        "event": "call.voicemail.left",
        "data": {"callId": "c-1", "brandNew": [1, 2]},
        "timestamp": "x",
    }
    assert signed(http, receiver.url, envelope).json()["status"] == "stored"
    [delivery] = inbox.iter_deliveries()
    assert (delivery.event, delivery.envelope) == ("call.voicemail.left", envelope)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_oversize_body_gets_413_and_nothing_is_stored(receiver, http, inbox: Inbox, chunked: bool) -> None:
    raw = json.dumps({"event": "call.completed", "data": {"pad": "x" * (2 * 1024 * 1024)}}).encode()
    content = (raw[i : i + 65536] for i in range(0, len(raw), 65536)) if chunked else raw
    response = http.post(receiver.url, content=content, headers={"X-Signature-SHA256": sign(raw, SECRET)})
    assert response.status_code == 413
    assert inbox.count() == 0


@pytest.mark.parametrize(
    "raw", [b"{not json", b'["call.completed"]', b'{"data": {"callId": "c"}}', b'{"event": 1}']
)
def test_signed_but_malformed_gets_400_is_not_stored_and_is_logged_without_the_body(
    receiver, http, inbox: Inbox, raw: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        response = post(http, receiver.url, raw, sign(raw, SECRET))
    assert response.status_code == 400
    assert inbox.count() == 0
    assert "malformed so far: 1" in caplog.text
    assert raw.decode() not in caplog.text


def test_sender_hanging_up_mid_body_stores_nothing_and_raises_no_error(
    receiver, inbox: Inbox, caplog: pytest.LogCaptureFixture
) -> None:
    head = (
        f"POST /webhooks/apten HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n"
        f"X-Signature-SHA256: {'0' * 64}\r\n\r\n"
    )
    with caplog.at_level(logging.INFO):
        with socket.create_connection(("127.0.0.1", receiver.port)) as sock:
            sock.sendall(head.encode() + b'{"event": "call.comp')
        deadline = time.monotonic() + 5
        while "webhook abandoned" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.01)
    assert "webhook abandoned: sender disconnected" in caplog.text
    assert "Traceback" not in caplog.text and "Exception" not in caplog.text
    assert inbox.count() == 0


def test_other_methods_are_refused(receiver, http) -> None:
    assert http.get(receiver.url).status_code == 405


def test_app_refuses_to_start_without_the_secret(inbox_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = ReceiverThread(create_app(None, inbox_dir))
    with caplog.at_level(logging.INFO), pytest.raises(RuntimeError, match="did not start"):
        server.start()
    assert "APTEN_WEBHOOK_SECRET is not set" in caplog.text
    assert not inbox_dir.exists()


def test_the_secret_never_appears_in_logs_or_responses(
    inbox_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    raw = json.dumps(COMPLETED).encode()
    huge = b"x" * (2 * 1024 * 1024)
    attempts = [
        (raw, sign(raw, SECRET)),  # stored
        (raw, sign(raw, SECRET)),  # duplicate
        (raw, "bad"),
        (raw, None),
        (b"[]", sign(b"[]", SECRET)),  # malformed
        (huge, "a" * 64),
    ]
    with (
        caplog.at_level(logging.DEBUG),
        ReceiverThread(create_app(SECRET, inbox_dir)) as receiver,
        httpx.Client(timeout=10) as http,
    ):
        responses = [post(http, receiver.url, body, signature) for body, signature in attempts]
    assert [r.status_code for r in responses] == [200, 200, 401, 401, 400, 413]
    assert "webhook stored: event=call.completed" in caplog.text
    assert "webhook receiver stopped: bad_signature=1, duplicate=1" in caplog.text
    seen = caplog.text + "".join(r.text + str(r.headers) for r in responses)
    assert SECRET not in seen
    assert COMPLETED["data"]["summary"] not in caplog.text  # no body in logs either


def test_burst_of_1000_concurrent_deliveries_loses_none_and_duplicates_none(receiver, inbox: Inbox) -> None:
    envelopes = [
        {
            "event": "call.completed",
            "data": {"callId": f"call-{i:04d}", "leadId": f"lead-{i % 97}"},
            "timestamp": f"2026-02-05T18:{i // 60 % 60:02d}:{i % 60:02d}Z",
        }
        for i in range(1000)
    ]
    bodies = [json.dumps(e).encode() for e in envelopes]
    # Every 10th delivery is sent twice, racing its twin in the same burst.
    sends = bodies + bodies[::10]
    latencies: list[float] = []

    with httpx.Client(timeout=30, limits=httpx.Limits(max_connections=16)) as http:

        def deliver(raw: bytes) -> str:
            started = time.perf_counter()
            response = post(http, receiver.url, raw, sign(raw, SECRET))
            latencies.append(time.perf_counter() - started)
            response.raise_for_status()
            return response.json()["status"]

        with ThreadPoolExecutor(max_workers=16) as pool:
            statuses = list(pool.map(deliver, sends))

    assert statuses.count("stored") == 1000
    assert statuses.count("duplicate") == 100
    assert inbox.count() == 1000
    files = [p for p in inbox.path.iterdir() if p.suffix == ".delivery"]
    assert len(files) == 1000
    assert not [p for p in inbox.path.iterdir() if p.name.startswith(".tmp-")]
    keys = [d.delivery_key for d in inbox.iter_deliveries()]
    assert sorted(keys) == sorted({delivery_key(e) for e in envelopes})
    cuts = statistics.quantiles(latencies, n=100)
    print(
        f"\nreceive latency over {len(latencies)} requests, 16 in flight: "
        f"p50 {cuts[49] * 1000:.1f} ms, p95 {cuts[94] * 1000:.1f} ms"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("APTEN_")}
    return env | extra


def test_package_imports_without_any_setting() -> None:
    code = "import apten_assets.webhooks as w; print(type(w.app).__name__)"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Starlette"


def test_entry_point_without_secret_exits_naming_the_variable(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "apten_assets.webhooks", "--port", str(_free_port())],
        cwd=ROOT,
        env=_env(APTEN_WEBHOOK_INBOX=str(tmp_path / "inbox")),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "APTEN_WEBHOOK_SECRET" in result.stderr


def test_entry_point_serves_and_stores_with_settings_from_env(tmp_path: Path) -> None:
    port = _free_port()
    env = _env(APTEN_WEBHOOK_SECRET=SECRET, APTEN_WEBHOOK_INBOX=str(tmp_path / "inbox"))
    proc = subprocess.Popen(
        [sys.executable, "-m", "apten_assets.webhooks", "--host", "127.0.0.1", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/webhooks/apten"
        with httpx.Client(timeout=5) as http:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if http.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline and proc.poll() is None, "receiver did not come up"
                time.sleep(0.1)
            assert signed(http, url, COMPLETED).json()["status"] == "stored"
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=30)
    assert Inbox(tmp_path / "inbox").count() == 1
    assert SECRET not in output
    assert "webhook receiver stopped: stored=1" in output
