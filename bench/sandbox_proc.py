"""The bundled sandbox in its own process, so its CPU and memory are never a contender's.

The parent drives it over a pipe: change latency and rate limit between runs, and read the
request counts the sandbox itself saw (list pages included), split by endpoint and status.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from types import TracebackType
from typing import Any

from apten_assets.sandbox.app import FaultConfig
from apten_assets.sandbox.data import DatasetSpec

START_TIMEOUT_SECONDS = 600.0


@dataclass(frozen=True)
class RequestCounts:
    """Requests the sandbox served since the last reset."""

    by_endpoint: dict[str, int] = field(default_factory=dict)
    by_status: dict[int, int] = field(default_factory=dict)
    cpu_seconds: float = 0.0
    span_seconds: float = 0.0

    @property
    def per_second(self) -> float:
        """Requests per second between the first and the last arrival."""
        return (self.total - 1) / self.span_seconds if self.span_seconds > 0 else 0.0

    @property
    def total(self) -> int:
        return sum(self.by_endpoint.values())

    @property
    def too_many_requests(self) -> int:
        return self.by_status.get(429, 0)


@dataclass(frozen=True)
class SandboxInfo:
    base_url: str
    build_seconds: float
    description: str
    lead_call_ids: int
    found_lead_calls: int


def endpoint_of(path: str) -> str:
    """`/v1/leads` -> leads, `/v1/leads/{id}/events` -> events, `/v1/calls/{id}` -> calls."""
    parts = path.strip("/").split("/")
    if parts[-1] == "events":
        return "events"
    if len(parts) >= 2 and parts[1] == "calls":
        return "calls"
    return parts[-1] if parts else "other"


def _serve(conn: Connection, spec: DatasetSpec, faults: FaultConfig) -> None:
    import resource

    from apten_assets.sandbox.data import SandboxDataset
    from apten_assets.sandbox.server import SandboxServer

    started = time.perf_counter()
    dataset = SandboxDataset(spec)
    build_seconds = time.perf_counter() - started
    missing = set(dataset.missing_call_ids)
    found = sum(1 for call_id in dataset.lead_call_ids if call_id not in missing)
    with SandboxServer(dataset, faults=faults) as sb:
        # The sandbox clock stands still at the anchor: late summaries and calls in progress stay
        # as they are, so every contender, early or late in the run, sees exactly the same data.
        anchor = dataset.anchor
        sb.state.now = lambda: anchor  # type: ignore[method-assign]
        conn.send(
            SandboxInfo(sb.base_url, build_seconds, dataset.describe(), len(dataset.lead_call_ids), found)
        )
        cpu_mark = time.process_time()
        while True:
            command, argument = conn.recv()
            if command == "stop":
                break
            if command == "faults":
                sb.state.faults = argument
                conn.send(None)
            elif command == "reset":
                sb.state.clear_request_log()
                cpu_mark = time.process_time()
                conn.send(None)
            elif command == "counts":
                by_endpoint: Counter[str] = Counter()
                by_status: Counter[int] = Counter()
                log = sb.state.request_log
                for record in log:
                    by_endpoint[endpoint_of(record.path)] += 1
                    by_status[record.status] += 1
                cpu = time.process_time() - cpu_mark
                span = log[-1].t - log[0].t if log else 0.0
                conn.send(RequestCounts(dict(by_endpoint), dict(by_status), cpu, span))
            elif command == "arrivals":
                conn.send([(record.t, record.status) for record in sb.state.request_log])
            elif command == "rss":
                conn.send(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    conn.close()


class SandboxProcess:
    """`with SandboxProcess(spec, faults) as sandbox:` serves `spec` on loopback in a child process."""

    def __init__(self, spec: DatasetSpec, faults: FaultConfig | None = None) -> None:
        self.spec = spec
        self._faults = faults or FaultConfig()
        self._conn: Connection | None = None
        self._process: Any = None
        self.info: SandboxInfo | None = None

    def __enter__(self) -> SandboxProcess:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._process = ctx.Process(
            target=_serve, args=(child, self.spec, self._faults), name="apten-sandbox", daemon=True
        )
        self._process.start()
        child.close()
        self._conn = parent
        if not parent.poll(START_TIMEOUT_SECONDS):
            self.stop()
            raise RuntimeError("the sandbox process did not start")
        self.info = parent.recv()
        return self

    @property
    def base_url(self) -> str:
        assert self.info is not None
        return self.info.base_url

    def _ask(self, command: str, argument: Any = None) -> Any:
        assert self._conn is not None, "the sandbox process is not running"
        self._conn.send((command, argument))
        return self._conn.recv()

    def set_faults(self, faults: FaultConfig) -> None:
        """New latency / rate limit; also starts an empty rate-limit window."""
        self._ask("faults", faults)

    def reset_counts(self) -> None:
        self._ask("reset")

    def counts(self) -> RequestCounts:
        return self._ask("counts")

    def arrivals(self) -> list[tuple[float, int]]:
        """(monotonic arrival time, status) of every request since the last reset."""
        return self._ask("arrivals")

    def stop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(BrokenPipeError, OSError):
                self._conn.send(("stop", None))
            self._conn.close()
            self._conn = None
        if self._process is not None:
            self._process.join(15)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(5)
            self._process = None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
