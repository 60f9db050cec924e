"""A loopback proxy in front of the sandbox that misbehaves for chosen records only.

Real HTTP both ways: the pipeline talks to the proxy, the proxy forwards to the sandbox (the key
header included) unless a rule answers instead. Rules are keyed by endpoint and id, so one lead's
events or one call can be broken while everything else is served as usual.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpx

from apten_assets.sandbox.server import SandboxServer
from tests.lib.scripted_server import Reply, ScriptedServer, Seen

# (endpoint, id) -> answer; endpoint is "leads" (id None), "events" (lead id) or "call" (call id).
Rule = Callable[[Seen, "HostileProxy"], Reply]


class HostileProxy:
    def __init__(self, sandbox: SandboxServer) -> None:
        self.sandbox = sandbox
        self.rules: dict[tuple[str, str | None], Rule] = {}
        self.leads_page_edit: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        self._http = httpx.Client(timeout=30.0)
        self._lock = threading.Lock()
        self.hits: dict[tuple[str, str | None], int] = {}
        self._server = ScriptedServer(self._respond)

    @property
    def base_url(self) -> str:
        return self._server.base_url

    def forward(self, seen: Seen) -> httpx.Response:
        headers = {"x-api-key": seen.headers["x-api-key"]} if "x-api-key" in seen.headers else {}
        url = f"http://127.0.0.1:{self.sandbox.port}{seen.path}"
        return self._http.get(url, params=seen.query, headers=headers)

    def _respond(self, seen: Seen) -> Reply:
        parts = seen.path.strip("/").split("/")  # v1, leads | calls, id, events
        if parts[1] == "calls":
            key: tuple[str, str | None] = ("call", parts[2])
        elif len(parts) == 4:
            key = ("events", parts[2])
        else:
            key = ("leads", None)
        with self._lock:
            self.hits[key] = self.hits.get(key, 0) + 1
        rule = self.rules.get(key)
        if rule is not None:
            return rule(seen, self)
        response = self.forward(seen)
        body = response.json()
        if key[0] == "leads" and response.status_code == 200 and self.leads_page_edit is not None:
            body = self.leads_page_edit(body)
        return Reply(status=response.status_code, json=body)

    def __enter__(self) -> HostileProxy:
        self._server.__enter__()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.__exit__(*exc_info)
        self._http.close()
