"""One drill process: `python -m tools.reliability.runner KIND [options]`.

Runs part of `apten_pipeline_job` in this process against the Dagster instance in DAGSTER_HOME
(ephemeral when unset) with the APTEN_* settings of the environment, like a run worker the
Dagster daemon launches. Prints one JSON line per run (`{"drill_run": {...}}`); exits 0 when
every run succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("kinds", nargs="+", choices=["leads", "events_and_calls", "pipeline", "calls"])
    parser.add_argument("--range", dest="partition_range", help="FIRST...LAST partition keys")
    parser.add_argument("--partition", help="one partition key")
    parser.add_argument("--call-ids", default="", help="comma-separated call ids (calls run config)")
    args = parser.parse_args(argv)

    import dagster as dg

    from tools.reliability.harness import run_pipeline

    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    keys = tuple(args.partition_range.split("...")) if args.partition_range else None
    call_ids = [c for c in args.call_ids.split(",") if c]
    ok = True
    for kind in args.kinds:
        outcome = run_pipeline(
            kind,
            partition_range_keys=keys,  # type: ignore[arg-type]
            partition_key=args.partition,
            call_ids=call_ids,
            instance=instance,
        )
        line = {"kind": kind, "run_id": outcome.run_id, "success": outcome.success, "error": outcome.error}
        print(json.dumps({"drill_run": line}), flush=True)
        if not outcome.success:
            ok = False
            break
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
