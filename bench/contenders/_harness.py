"""What every contender process shares: read its parameters, time the load, report peak RSS.

Only the load is timed: interpreter start, imports and one-off setup (which a deployed pipeline
pays once, not per run) are not, for every contender alike.
"""

from __future__ import annotations

import cProfile
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# dlt reads this when it resolves its configuration; no contender may phone home.
os.environ["RUNTIME__DLTHUB_TELEMETRY"] = "false"

Setup = Callable[[dict[str, Any]], Any]
Load = Callable[[dict[str, Any], Any], dict[str, Any]]


def peak_rss_bytes() -> int:
    """Peak resident set of this process (or of a child it waited for), in bytes (Linux: KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) * 1024


def cpu_seconds() -> float:
    """User plus system CPU time of this process so far, all threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(load: Load, setup: Setup | None = None, argv: list[str] | None = None) -> None:
    """`state = setup(params)`, then `load(params, state)` timed; it returns {"rows": {...}, ...}.

    The result file gets that plus `seconds`, `peak_rss_bytes` and `rss_before_load_bytes`.
    With `profile_path` in the parameters the load runs under cProfile.
    """
    args = sys.argv[1:] if argv is None else argv
    params = json.loads(Path(args[0]).read_text())
    state = setup(params) if setup is not None else None
    rss_before = peak_rss_bytes()
    cpu_before = cpu_seconds()
    profile_path = params.get("profile_path")
    started = time.perf_counter()
    if profile_path:
        profiler = cProfile.Profile()
        outcome = profiler.runcall(load, params, state)
        profiler.dump_stats(profile_path)
    else:
        outcome = load(params, state)
    seconds = time.perf_counter() - started
    outcome.update(
        seconds=seconds,
        cpu_seconds=cpu_seconds() - cpu_before,
        peak_rss_bytes=peak_rss_bytes(),
        rss_before_load_bytes=rss_before,
    )
    Path(params["result_path"]).write_text(json.dumps(outcome, default=str))


# The tables the calls step writes: the store's time writing them is the backend's share of the
# step's transform-and-write.
CALL_TABLES = frozenset({"calls", "call_summaries", "call_transcript_turns"})


class StepTimer:
    """Wall time inside wrapped functions, summed per label (the library itself is unchanged: the
    functions are replaced in this process only)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, name: str, label: str | Callable[..., str | None]) -> None:
        """`label` is a string, or a function of the call's arguments returning one (None: not
        timed)."""
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            key = label(*args, **kwargs) if callable(label) else label
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                if key is not None:
                    self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - started

        setattr(owner, name, timed)
        self._undo.append(lambda: setattr(owner, name, original))

    def wrap_call_table_writes(self, store_class: type, label: Callable[[], str | None]) -> None:
        """The store's `upsert_calls`, and its `upsert` of a call table (the summaries), timed
        under `label()`."""
        self.wrap(store_class, "upsert_calls", lambda *args, **kwargs: label())
        self.wrap(
            store_class, "upsert", lambda store, spec, *a, **k: label() if spec.name in CALL_TABLES else None
        )

    def restore(self) -> None:
        """Puts the wrapped functions back."""
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
