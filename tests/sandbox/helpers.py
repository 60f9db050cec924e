"""Plain-httpx paging over the sandbox, independent of the project's own client."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Pages:
    items: list[dict[str, Any]] = field(default_factory=list)
    page_sizes: list[int] = field(default_factory=list)
    tokens: list[str | None] = field(default_factory=list)


def fetch_all(client: httpx.Client, path: str, params: dict[str, Any], key: str) -> Pages:
    """Follow nextToken until it is null, keeping every page's size and token."""
    pages = Pages()
    token: str | None = None
    while True:
        response = client.get(path, params=params | ({"nextToken": token} if token else {}))
        response.raise_for_status()
        body = response.json()
        pages.items.extend(body[key])
        pages.page_sizes.append(len(body[key]))
        token = body["nextToken"]
        pages.tokens.append(token)
        if token is None:
            return pages
        assert len(pages.tokens) < 10_000, "nextToken never became null"
