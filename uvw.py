"""Run uv on any machine with Python 3.11+: `python3 uvw.py run --frozen pytest`.

Uses the `uv` on your PATH when there is one. Otherwise it fetches uv's official standalone binary
once, from uv's wheel on the package index, checks the wheel's pinned SHA-256 and unpacks the binary
into `.uv/<version>/` in this clone; later calls reuse it. It needs only the standard library: no pip,
no venv module and no writing to the system Python, so it works the same on an "externally managed"
Debian/Ubuntu Python (PEP 668) as on any other. Set `UV_DEFAULT_INDEX` (or `UV_INDEX_URL`) to fetch
through a mirror of the index; uv reads the same variables for the project's packages.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

UV_VERSION = "0.13.9"
# The wheels of uv 0.13.9 this script may unpack, with their SHA-256 as published on PyPI.
WHEELS = {
    ("linux", "x86_64", "glibc"): (
        "manylinux_2_17_x86_64.manylinux2014_x86_64",
        "d7f459fe4fd247d830351c75686d3996ace3c6f3f728eb0e85a30b7ada0cef19",
    ),
    ("linux", "x86_64", "musl"): (
        "musllinux_1_1_x86_64",
        "2c45530751517d6c3bbc69a19473f6effe47cce047bede01ffd8af7ea7b36b25",
    ),
    ("linux", "aarch64", "glibc"): (
        "manylinux_2_17_aarch64.manylinux2014_aarch64.musllinux_1_1_aarch64",
        "5435c5ce14a56431208ca0996416d310f1598e8c2c8ba707688985a16bb82dbe",
    ),
    ("linux", "aarch64", "musl"): (
        "manylinux_2_17_aarch64.manylinux2014_aarch64.musllinux_1_1_aarch64",
        "5435c5ce14a56431208ca0996416d310f1598e8c2c8ba707688985a16bb82dbe",
    ),
    ("darwin", "x86_64", ""): (
        "macosx_10_12_x86_64",
        "c16ed11e013557536b3e60065f1b912f6407bd6518e041b961e23ef9e6b4fbf5",
    ),
    ("darwin", "arm64", ""): (
        "macosx_11_0_arm64",
        "66c512266d633bef48384a1f53003f41f2a8e7b36fe6e7fbfd3e0fd52d96fa63",
    ),
    ("win32", "amd64", ""): (
        "win_amd64",
        "6a44b2ed8111d2f60d2b92627c5dccda3f7ed7570b18ce115e569cd68c28246b",
    ),
    ("win32", "arm64", ""): (
        "win_arm64",
        "eeb92051c2123b9730c46b04cc843cfa4bc7d7b0aec56df431a2215ef4cb0273",
    ),
}
DEFAULT_INDEX = "https://pypi.org/simple/"
ROOT = Path(__file__).resolve().parent
EXE = "uv.exe" if sys.platform == "win32" else "uv"


def _platform_key() -> tuple[str, str, str]:
    machine = platform.machine().lower()
    machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
    if sys.platform == "linux":
        libc = "glibc" if platform.libc_ver()[0] == "glibc" else "musl"
        return "linux", machine, libc
    if sys.platform == "darwin":
        return "darwin", "arm64" if machine == "aarch64" else machine, ""
    if sys.platform == "win32":
        return "win32", "amd64" if machine == "x86_64" else machine, ""
    return sys.platform, machine, ""


def _wheel_url(index: str, filename: str) -> str:
    """The wheel's download URL, from the index's JSON simple API (PEP 691)."""
    page = urllib.parse.urljoin(index.rstrip("/") + "/", "uv/")
    request = urllib.request.Request(page, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        files = json.load(response)["files"]
    for entry in files:
        if entry["filename"] == filename:
            return urllib.parse.urljoin(page, entry["url"])
    raise SystemExit(f"uvw: {filename} is not on {page}")


def _install(target: Path) -> None:
    key = _platform_key()
    if key not in WHEELS:
        raise SystemExit(
            f"uvw: no pinned uv wheel for {key}; install uv yourself (https://docs.astral.sh/uv/) "
            "and run the same command with `uv` in place of `python3 uvw.py`"
        )
    tag, sha256 = WHEELS[key]
    filename = f"uv-{UV_VERSION}-py3-none-{tag}.whl"
    index = os.environ.get("UV_DEFAULT_INDEX") or os.environ.get("UV_INDEX_URL") or DEFAULT_INDEX
    print(f"uvw: no uv on PATH; fetching uv {UV_VERSION} ({filename}) into {target}", file=sys.stderr)
    with urllib.request.urlopen(_wheel_url(index, filename), timeout=300) as response:
        wheel = response.read()
    digest = hashlib.sha256(wheel).hexdigest()
    if digest != sha256:
        raise SystemExit(f"uvw: {filename} has SHA-256 {digest}, expected {sha256}; not using it")
    member = f"uv-{UV_VERSION}.data/scripts/{EXE}"
    target.mkdir(parents=True, exist_ok=True)
    # Unpacked beside the target and renamed into place, so a concurrent run never sees half a binary.
    with (
        zipfile.ZipFile(io.BytesIO(wheel)) as archive,
        tempfile.NamedTemporaryFile(dir=target, delete=False) as out,
    ):
        out.write(archive.read(member))
    tmp = Path(out.name)
    tmp.chmod(0o755)
    os.replace(tmp, target / EXE)


def find_uv() -> str:
    """The uv to run: the one on PATH, else this clone's private copy (fetched on first use)."""
    on_path = shutil.which("uv")
    if on_path:
        return on_path
    private = ROOT / ".uv" / UV_VERSION
    if not (private / EXE).exists():
        _install(private)
    return str(private / EXE)


def main() -> int:
    uv = find_uv()
    args = [uv, *sys.argv[1:]]
    if sys.platform == "win32":
        return subprocess.call(args)
    os.execv(uv, args)
    return 0  # not reached: execv replaces this process


if __name__ == "__main__":
    raise SystemExit(main())
