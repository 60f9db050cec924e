"""100,000 calls: the dataset builds in reasonable time and requests stay O(page).

Figures are printed, never asserted: timing asserts make unit tests flaky.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from apten_assets.sandbox.data import DatasetSpec, SandboxDataset
from apten_assets.sandbox.server import SandboxServer
from tests.conftest import SANDBOX_ANCHOR
from tests.sandbox.helpers import fetch_all

BENCHMARK_SPEC = DatasetSpec(
    seed=1, n_leads=2500, calls_per_lead=40, days=30, turns_per_call=40, anchor=SANDBOX_ANCHOR
)


@pytest.fixture(scope="module")
def big_dataset() -> SandboxDataset:
    started = time.perf_counter()
    dataset = SandboxDataset(BENCHMARK_SPEC)
    print(f"\nbuilt {dataset.describe()} in {time.perf_counter() - started:.2f}s")
    return dataset


@pytest.fixture(scope="module")
def big_http(big_dataset: SandboxDataset) -> Iterator[httpx.Client]:
    with SandboxServer(big_dataset) as sb, httpx.Client(base_url=sb.base_url) as http:
        yield http


def timed_gets(
    http: httpx.Client, path: str, params: dict | None = None, n: int = 20
) -> tuple[list[int], float]:
    started = time.perf_counter()
    statuses = [http.get(path, params=params).status_code for _ in range(n)]
    return statuses, (time.perf_counter() - started) / n * 1000


def test_dataset_holds_100k_lead_calls(big_dataset: SandboxDataset) -> None:
    assert len(big_dataset.lead_call_ids) == 100_000
    assert big_dataset.n_events == 100_000 + 2500 * BENCHMARK_SPEC.other_events_per_lead


def test_call_at_the_end_of_the_index_is_served_like_the_first(
    big_dataset: SandboxDataset, big_http: httpx.Client
) -> None:
    plain = set(big_dataset.lead_call_ids) - set(big_dataset.voicemail_call_ids)
    served = [c for c in big_dataset.ready_summary_call_ids if c in plain]
    first, last = served[0], served[-1]
    for label, call_id in (("first", first), ("last", last)):
        statuses, ms = timed_gets(big_http, f"/calls/{call_id}")
        print(f"GET /calls ({label}): {ms:.2f} ms per request")
        assert statuses == [200] * len(statuses)
    for call_id in (first, last):
        body = big_http.get(f"/calls/{call_id}").json()
        assert body["id"] == call_id and "summary" in body
        expected_turns = BENCHMARK_SPEC.turns_per_call if body["callStatus"] == "COMPLETE" else 0
        assert len(body["transcript"]) == expected_turns


def test_last_pages_cost_the_same_as_the_first(big_dataset: SandboxDataset, big_http: httpx.Client) -> None:
    newest = max(lead["updatedAt"] for lead in big_dataset.leads)
    for label, since in (("oldest", "2000-01-01T00:00:00Z"), ("newest", newest)):
        statuses, ms = timed_gets(big_http, "/leads", {"updatedSince": since, "limit": 100})
        print(f"GET /leads ({label} page): {ms:.2f} ms per request")
        assert statuses == [200] * len(statuses)
    last_lead = big_dataset.leads[-1]["id"]
    statuses, ms = timed_gets(big_http, f"/leads/{last_lead}/events", {"since": "2000-01-01T00:00:00Z"})
    print(f"GET /leads/{{last}}/events: {ms:.2f} ms per request")
    assert statuses == [200] * len(statuses)
    newest_leads = fetch_all(big_http, "/leads", {"updatedSince": newest, "limit": 50}, "leads").items
    assert newest_leads and all(lead["updatedAt"] == newest for lead in newest_leads)
