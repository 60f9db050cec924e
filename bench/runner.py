"""Run one contender in a fresh subprocess and collect its result file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
PYCACHE = ROOT / "bench" / ".work" / "pycache"
SAMPLE_SECONDS = 0.05


class TreeSampler:
    """Samples a process and its descendants: CPU time (last seen per process, summed) and the
    largest total resident set seen at once. A process that exits between two samples loses at
    most one interval of CPU."""

    def __init__(self, root: psutil.Process, interval: float = SAMPLE_SECONDS) -> None:
        self.root = root
        self.interval = interval
        self.cpu: dict[int, float] = {}
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tree-sampler", daemon=True)

    def _sample(self) -> None:
        try:
            processes = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        rss = 0
        for process in processes:
            try:
                with process.oneshot():
                    times = process.cpu_times()
                    rss += process.memory_info().rss
            except psutil.Error:
                continue
            self.cpu[process.pid] = times.user + times.system
        self.peak_rss = max(self.peak_rss, rss)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def cpu_seconds(self) -> float:
        return sum(self.cpu.values())


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
        proc = psutil.Popen(
            [sys.executable, "-m", f"bench.contenders.{name}", str(params_path)],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        with TreeSampler(proc) as sampler:
            returncode = proc.wait()
    process_seconds = time.perf_counter() - started
    if returncode != 0 or not result_path.exists():
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-25:])
        raise ContenderFailed(f"{name} ({label}) exited with {returncode}; log {log_path}:\n{tail}")
    result = json.loads(result_path.read_text())
    # The whole process as its users run it: interpreter start, imports and setup included.
    result["process_seconds"] = process_seconds
    result["process_cpu_seconds"] = sampler.cpu_seconds
    result["process_peak_rss_bytes"] = sampler.peak_rss
    return result
