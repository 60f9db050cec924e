"""`python -m apten_assets.webhooks --host 0.0.0.0 --port 8000`: the receiver in one command.

Settings come from APTEN_WEBHOOK_SECRET and APTEN_WEBHOOK_INBOX; without a secret it exits at
once with a message saying what to set.
"""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn

from apten_assets.lib.config import ConfigError
from apten_assets.webhooks.receiver import ROUTE, config_from_env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m apten_assets.webhooks", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 in a container)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    # uvicorn configures only its own loggers; this makes the receiver's lines (event, key, size) show.
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    try:
        config = config_from_env()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"receiving Apten webhooks on http://{args.host}:{args.port}{ROUTE}, inbox {config.inbox.path}",
        file=sys.stderr,
    )
    # The app re-reads the same settings at startup, so `uvicorn apten_assets.webhooks:app` behaves alike.
    uvicorn.run("apten_assets.webhooks:app", host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
