"""The README's main-job line on the other kind of Python: Debian's own, "externally managed" (PEP 668),
in a scratch clone, with a fresh HOME and no uv on the PATH. The suite itself runs the README's test
line on whatever Python CI has (.ci/run), so together both kinds are proven."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_docs import readme_commands
from uvw import UV_VERSION

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = Path("/usr/bin/python3")


def _externally_managed(python: Path) -> bool:
    stdlib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return (Path(stdlib) / "EXTERNALLY-MANAGED").exists()


def _uv_cache_dir() -> str | None:
    """The running uv's package cache, so the clone links wheels instead of downloading them again."""
    uv = os.environ.get("UV") or shutil.which("uv")
    if uv is None:
        return None
    return subprocess.run([uv, "cache", "dir"], capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="no system Python at /usr/bin/python3")
def test_main_job_line_runs_on_an_externally_managed_python_in_a_fresh_clone(tmp_path: Path) -> None:
    if not _externally_managed(SYSTEM_PYTHON):
        pytest.skip("/usr/bin/python3 is not externally managed here; the suite already covers it")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    home = tmp_path / "home"
    home.mkdir()
    drop = ("APTEN_", "DAGSTER_", "UV", "VIRTUAL_ENV", "PYTHON", "PYENV", "CONDA", "PIP_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    # What a newcomer's shell has on Debian: the system's own directories, so `python3` is Debian's
    # and there is no uv anywhere on the PATH.
    env.update(HOME=str(home), PATH="/usr/bin:/bin")
    if (cache := _uv_cache_dir()) is not None:
        env["UV_CACHE_DIR"] = cache
    assert shutil.which("uv", path=env["PATH"]) is None
    main_job = readme_commands()[0]

    result = subprocess.run(
        ["bash", "-c", main_job], cwd=clone, env=env, capture_output=True, text=True, timeout=900
    )

    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "uvw: no uv on PATH; fetching uv" in result.stderr
    assert (clone / ".uv" / UV_VERSION / "uv").is_file()
    venv = dict(
        line.split(" = ", 1)
        for line in (clone / ".venv" / "pyvenv.cfg").read_text().splitlines()
        if " = " in line
    )
    assert venv["home"] == str(SYSTEM_PYTHON.parent)
    rows = [line for line in result.stdout.splitlines() if line.startswith("| 20")]
    assert len(rows) == 4, result.stdout[-3000:]  # three days back and today
    assert (clone / "data" / "apten.duckdb").is_file()
