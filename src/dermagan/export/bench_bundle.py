"""The offline bundle as a clinic laptop would run it: a fresh venv with only onnxruntime, numpy and
Pillow; cold start (process start to the first prediction, one image), a folder run, peak memory and
size on disk. ``dermagan bench-bundle`` glue; the venv lives in a temporary folder removed afterwards.
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from dermagan.atomic import atomic_file
from dermagan.errors import DermaganError
from dermagan.export.bundle import is_bundle
from dermagan.export.runtime_env import folder_bytes, make_runtime_venv, run_bundle, runtime_requirements


def _checked(run: dict, what: str) -> dict:
    if run["returncode"] != 0:
        raise DermaganError(f"the bundle failed on {what} (exit {run['returncode']}): {run['stderr'][-500:]}")
    return run


def run_bench_bundle(bundle: Path, images_dir: Path, out: Path, repeats: int = 3) -> tuple[dict, str]:
    """Measure ``bundle`` in a fresh runtime venv on the images of ``images_dir``; write ``out`` and ``out.md``."""
    bundle, images_dir, out = Path(bundle), Path(images_dir), Path(out)
    if not is_bundle(bundle):
        raise DermaganError(f"{bundle}: not a dermagan export bundle (no bundle.json of kind dermagan-onnx-bundle)")
    first = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:1]
    if not first:
        raise DermaganError(f"{images_dir}: no images")
    n_images = sum(1 for p in images_dir.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    with tempfile.TemporaryDirectory(prefix="dermagan-bundle-bench-") as tmp:
        python = make_runtime_venv(Path(tmp) / "venv")
        rows = {}
        for label, extra in (("fp32", ()), ("int8", ("--int8",))):
            cold = [_checked(run_bundle(python, bundle, first[0], Path(tmp) / f"one-{label}-{i}.csv", *extra),
                             "one image") for i in range(repeats)]
            folder = _checked(run_bundle(python, bundle, images_dir, Path(tmp) / f"all-{label}.csv", *extra,
                                         "--threads", "2"), str(images_dir))
            rows[label] = {"cold_start_s_median": statistics.median(r["wall_s"] for r in cold),
                           "cold_start_s_runs": [round(r["wall_s"], 3) for r in cold],
                           "peak_rss_mib_one_image": max(r["peak_rss_mib"] or 0 for r in cold),
                           "folder_images": n_images, "folder_wall_s": folder["wall_s"],
                           "folder_images_per_s": n_images / folder["wall_s"],
                           "peak_rss_mib_folder": folder["peak_rss_mib"]}
        venv_mib = folder_bytes(Path(tmp) / "venv") / 2**20
    files = {p.name: p.stat().st_size for p in sorted(bundle.iterdir()) if p.is_file()}
    result = {"bundle": str(bundle), "runtime": runtime_requirements(), "venv_mib": round(venv_mib, 1),
              "bundle_bytes": sum(files.values()), "files": files, "engines": rows}
    lines = [f"Offline bundle `{bundle.name}` in a fresh venv ({', '.join(runtime_requirements())}; "
             f"{venv_mib:.0f} MiB installed); bundle {sum(files.values()) / 2**20:.1f} MiB on disk "
             f"(model.onnx {files.get('model.onnx', 0) / 2**20:.1f} MiB, model.int8.onnx "
             f"{files.get('model.int8.onnx', 0) / 2**20:.1f} MiB).", "",
             "| model | cold start, 1 image (s, median of runs) | peak RSS (MiB) | folder: images | folder wall (s) "
             "| images/s | folder peak RSS (MiB) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for label, r in rows.items():
        lines.append(f"| {label} | {r['cold_start_s_median']:.2f} | {r['peak_rss_mib_one_image']:.0f} | "
                     f"{r['folder_images']} | {r['folder_wall_s']:.2f} | {r['folder_images_per_s']:.1f} | "
                     f"{r['peak_rss_mib_folder']:.0f} |")
    table = "\n".join(lines) + "\n"
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as tmp_json, atomic_file(out.with_suffix(".md")) as tmp_md:
        tmp_json.write_text(json.dumps(result, indent=2) + "\n")
        tmp_md.write_text(table)
    return result, table
