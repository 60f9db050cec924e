"""Run one contender in a fresh subprocess and collect its result file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYCACHE = ROOT / "bench" / ".work" / "pycache"


class ContenderFailed(RuntimeError):
    """A contender process exited non-zero; the message points at its log."""


def run_contender(name: str, params: dict[str, Any], workdir: Path, label: str) -> dict[str, Any]:
    """`python -m bench.contenders.<name>` with `params`; returns its result plus process wall time."""
    workdir.mkdir(parents=True, exist_ok=True)
    params_path = workdir / f"{label}.params.json"
    result_path = workdir / f"{label}.result.json"
    log_path = workdir / f"{label}.log"
    result_path.unlink(missing_ok=True)
    params_path.write_text(json.dumps({**params, "result_path": str(result_path)}))
    env = {
        **os.environ,
        "RUNTIME__DLTHUB_TELEMETRY": "false",
        "PYTHONPATH": str(ROOT),
        # Dagster's ephemeral instance still wants a home it may write to.
        "DAGSTER_HOME": str(workdir / "dagster_home"),
        # Compiled bytecode is cached under bench/.work, so process start is not a compile.
        "PYTHONPYCACHEPREFIX": str(PYCACHE),
    }
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    (workdir / "dagster_home").mkdir(exist_ok=True)
    started = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.run(
            [sys.executable, "-m", f"bench.contenders.{name}", str(params_path)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=False,
        )
    process_seconds = time.perf_counter() - started
    if proc.returncode != 0 or not result_path.exists():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        raise ContenderFailed(f"{name} ({label}) exited with {proc.returncode}; log {log_path}:\n{tail}")
    result = json.loads(result_path.read_text())
    result["process_seconds"] = process_seconds
    return result
