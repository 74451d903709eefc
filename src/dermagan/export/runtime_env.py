"""The bundle's run-time world: a fresh virtual environment with only onnxruntime, numpy and Pillow,
and measurements of the bundle in it (cold start, peak memory, size on disk).

Used by the fresh-venv test and by ``scripts/bench_bundle.py``. The three packages are pinned to the
versions installed here, so pip can answer from its cache and the bundle is checked against what
export was tested with.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import venv
from importlib.metadata import version
from pathlib import Path

from dermagan.errors import DermaganError

RUNTIME_PACKAGES = ("onnxruntime", "numpy", "pillow")


def runtime_requirements() -> list[str]:
    """``package==version`` of the bundle's three run-time packages, as installed with dermagan."""
    return [f"{name}=={version(name)}" for name in RUNTIME_PACKAGES]


def venv_python(folder: Path) -> Path:
    return Path(folder) / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def make_runtime_venv(folder: Path, timeout_s: float = 900) -> Path:
    """Create ``folder`` as a venv holding only pip and the three run-time packages; returns its python.

    Raises DermaganError (with pip's last lines) when the packages cannot be installed, e.g. offline."""
    folder = Path(folder)
    if folder.exists():
        raise DermaganError(f"{folder}: already exists; give a new folder for the run-time venv")
    venv.EnvBuilder(with_pip=True, clear=False, symlinks=os.name != "nt").create(folder)
    python = venv_python(folder)
    command = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q",
               *runtime_requirements()]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise DermaganError(f"pip install {' '.join(runtime_requirements())} took over {timeout_s:.0f} s") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise DermaganError(f"cannot install {' '.join(runtime_requirements())} into {folder}:\n{tail}")
    return python


def installed(python: Path) -> dict[str, str]:
    """``{distribution: version}`` of everything installed in that interpreter's environment."""
    code = "import importlib.metadata as m, json; print(json.dumps({d.metadata['Name'].lower(): d.version for d in m.distributions()}))"
    done = subprocess.run([str(python), "-I", "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


PEAK_MARK = "DERMAGAN_PEAK_RSS_KIB="
# Runs predict.py as __main__ and reports the process's own peak RSS on the way out (sys.exit included):
# VmHWM from /proc (it belongs to the new program; ru_maxrss can carry the parent's peak over a vfork+exec),
# else ru_maxrss.
_WRAPPER = ("import atexit, resource, runpy, sys\n"
            "def _peak():\n"
            "    try:\n"
            "        for line in open('/proc/self/status'):\n"
            "            if line.startswith('VmHWM:'):\n"
            "                return int(line.split()[1])\n"
            "    except OSError:\n"
            "        pass\n"
            "    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "atexit.register(lambda: sys.stderr.write('\\n" + PEAK_MARK + "%d\\n' % _peak()))\n"
            "script = sys.argv[1]\nsys.argv = sys.argv[1:]\nrunpy.run_path(script, run_name='__main__')\n")


def run_bundle(python: Path, bundle: Path, target: Path, out: Path, *extra: str, timeout_s: float = 600) -> dict:
    """Run the bundle's ``predict.py target --out out`` in ``python -I`` and measure it: wall seconds
    from process start to exit (on one image: the cold start to the first prediction) and the
    process's peak RSS (MiB: Linux ``VmHWM``, else ``ru_maxrss``)."""
    start = time.perf_counter()
    done = subprocess.run([str(python), "-I", "-c", _WRAPPER, str(Path(bundle) / "predict.py"), str(target),
                           "--out", str(out), *extra], capture_output=True, text=True, timeout=timeout_s)
    wall = time.perf_counter() - start
    peak = [line for line in done.stderr.splitlines() if line.startswith(PEAK_MARK)]
    stderr = "\n".join(line for line in done.stderr.splitlines() if not line.startswith(PEAK_MARK)).strip()
    return {"returncode": done.returncode, "stdout": done.stdout, "stderr": stderr, "wall_s": wall,
            "peak_rss_mib": int(peak[-1][len(PEAK_MARK):]) / 1024 if peak else None}
