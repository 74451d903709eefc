"""Load benchmark of a served classifier: ``mlflow models serve`` on loopback, concurrent clients.

:func:`serve` starts the real server (``--env-manager local``, 127.0.0.1, a free port) and waits for
``/ping``; :func:`load_test` sends a bounded number of requests from a fixed number of client
threads, each request one base64 image, and reports latency percentiles, throughput and errors.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from dermagan.errors import DermaganError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def image_body(files) -> bytes:
    """The ``/invocations`` JSON for image files: ``dataframe_split`` with one base64 ``image`` column."""
    cells = [[base64.b64encode(Path(f).read_bytes()).decode()] for f in files]
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": cells}}).encode()


def post(port: int, body: bytes, timeout: float = 60) -> tuple[int, dict]:
    """POST ``body`` to the local server; (HTTP status, parsed JSON answer)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        text = exc.read()
        try:
            return exc.code, json.loads(text or b"{}")
        except json.JSONDecodeError:
            return exc.code, {"message": text.decode(errors="replace")}


@contextlib.contextmanager
def serve(model_uri: str, log_path: Path, tracking_uri: str | None = None, startup_s: float = 180):
    """Run ``mlflow models serve -m model_uri`` on 127.0.0.1 until the block ends; yields the port.

    Pickle deserialization is switched off for the server (``MLFLOW_ALLOW_PICKLE_DESERIALIZATION``)."""
    bindir = Path(sys.executable).parent
    port = free_port()
    env = {**os.environ, "PATH": f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    log_path = Path(log_path)
    with log_path.open("w") as log:
        process = subprocess.Popen([str(bindir / "mlflow"), "models", "serve", "-m", model_uri, "--env-manager",
                                    "local", "--host", "127.0.0.1", "--port", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            deadline = time.monotonic() + startup_s
            while True:
                if process.poll() is not None:
                    raise DermaganError(f"mlflow models serve exited with {process.returncode}; see {log_path}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise DermaganError(f"the server did not answer /ping within {startup_s:.0f} s; see {log_path}")
                time.sleep(0.5)
            yield port
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 15)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)


def load_test(port: int, bodies: list[bytes], clients: int = 8, requests: int = 500,
              time_limit_s: float = 600) -> dict:
    """``requests`` POSTs spread over ``clients`` threads (request i sends ``bodies[i % len]``), stopping
    early at ``time_limit_s``. Returns p50/p95/max latency (ms), throughput and the error count."""
    latencies, errors, lock = [], [], threading.Lock()
    counter = iter(range(requests))
    deadline = time.monotonic() + time_limit_s

    def client() -> None:
        while time.monotonic() < deadline:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            start = time.perf_counter()
            try:
                status, answer = post(port, bodies[index % len(bodies)])
                ok = status == 200 and "predictions" in answer
            except OSError as exc:
                ok, answer = False, {"message": str(exc)}
            elapsed = (time.perf_counter() - start) * 1000
            with lock:
                latencies.append(elapsed)
                if not ok:
                    errors.append(str(answer.get("message", answer))[:200])

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    values = np.asarray(latencies)
    return {"clients": clients, "requests_planned": requests, "requests_sent": len(latencies),
            "errors": len(errors), "first_errors": errors[:3], "wall_s": round(wall, 2),
            "throughput_rps": round(len(latencies) / wall, 2) if wall else None,
            "p50_ms": round(float(np.percentile(values, 50)), 1) if len(values) else None,
            "p95_ms": round(float(np.percentile(values, 95)), 1) if len(values) else None,
            "max_ms": round(float(values.max()), 1) if len(values) else None}


def sample_files(images_dir: Path, count: int) -> list[Path]:
    """The first ``count`` JPEG/PNG files of a folder, sorted by name (real images, one per request)."""
    from dermagan.classify.preprocess import IMAGE_SUFFIXES

    files = sorted(p for p in Path(images_dir).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DermaganError(f"{images_dir}: no .jpg/.jpeg/.png images to send")
    return files[:count]


def markdown(result: dict) -> str:
    return "\n".join([
        f"Serving load test: `{result['model']}` via `mlflow models serve` on 127.0.0.1, {result['clients']} "
        f"concurrent clients, one {result['image_px']} image per request ({result['distinct_images']} distinct "
        "real images).", "",
        "| requests | errors | p50 latency (ms) | p95 latency (ms) | max (ms) | throughput (req/s) | wall (s) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
        f"| {result['requests_sent']} | {result['errors']} | {result['p50_ms']} | {result['p95_ms']} | "
        f"{result['max_ms']} | {result['throughput_rps']} | {result['wall_s']} |", ""])


def run_bench_serve(model_uri: str, images_dir: Path, out: Path, clients: int = 8, requests: int = 500,
                    count: int = 32, time_limit_s: float = 600, tracking_uri: str | None = None) -> tuple[dict, str]:
    """Serve ``model_uri``, check one answer, run :func:`load_test`; write ``out`` (JSON) and ``out.md``."""
    from PIL import Image

    from dermagan.atomic import atomic_file

    files = sample_files(images_dir, count)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    bodies = [image_body([f]) for f in files]
    with serve(model_uri, out.with_suffix(".server.log"), tracking_uri) as port:
        status, answer = post(port, bodies[0])
        if status != 200:
            raise DermaganError(f"the server refused a real image ({status}): {answer.get('message', answer)}")
        result = load_test(port, bodies, clients=clients, requests=requests, time_limit_s=time_limit_s)
    with Image.open(files[0]) as image:
        width, height = image.size
    result = {"model": model_uri, "distinct_images": len(files), "image_px": f"{width}x{height}", **result}
    table = markdown(result)
    with atomic_file(out) as tmp_json, atomic_file(out.with_suffix(".md")) as tmp_md:
        tmp_json.write_text(json.dumps(result, indent=2) + "\n")
        tmp_md.write_text(table)
    return result, table
