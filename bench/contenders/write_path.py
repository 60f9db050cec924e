"""The calls step's write path replayed without HTTP (`bench/pii_cost.py`), in a process of its
own so that its peak RSS is the replay's: the bodies, and the sessions of every target it writes
(DuckDB in full and redacted mode, PostgreSQL in full mode, in the full bench).

Parameters: `calls`, `share_pii_turns`, `calls_per_lead` and `turns_per_call` (the bodies' shape),
and `targets` (`pii_cost.Target` fields: name, mode, url, warm_url). The result holds the figures
(`write_path`, `pii_cost.WritePath.to_json()`), the lines it printed, and rows per table of the
first target.
"""

from __future__ import annotations

from typing import Any

from bench.contenders._harness import run
from bench.pii_cost import Target, profile_for, replay


def load(params: dict[str, Any], state: None) -> dict[str, Any]:
    lines: list[str] = []
    cost = replay(
        profile_for(params["calls_per_lead"], params["turns_per_call"]),
        params["calls"],
        [Target(**target) for target in params["targets"]],
        params["share_pii_turns"],
        say=lines.append,
    )
    return {"rows": cost.full.rows, "write_path": cost.to_json(), "lines": lines}


if __name__ == "__main__":
    run(load)
