"""Retake the MLflow UI screenshots in docs/ from a running MLflow UI, in a real (headless) Chromium.

Not a project dependency: needs Playwright's Python package and a Chromium, e.g.
    apt-get install chromium && python -m venv /tmp/pw && /tmp/pw/bin/pip install playwright
    dermagan ui --port 5000 &          # the project's store
    /tmp/pw/bin/python scripts/mlflow_screenshots.py --url http://127.0.0.1:5000 --out docs
(playwright's own browser download is not needed: --chromium points at the system one.)

Writes, cropped to the page's main panel (no side navigation, no assistant panel):
    mlflow-runs.png      the experiment's runs table grouped by the tag `arm`
    mlflow-charts.png    chart view of the test metrics (test/bal_acc, test/recall_<class>), grouped by arm
    mlflow-registry.png  the registered classifier's versions
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
import urllib.request
from pathlib import Path

VIEWPORT = {"width": 1700, "height": 1050}
CHART_FILTER = "test/(bal_acc|recall_(akiec|df|vasc))$"  # the chart search takes a regular expression


def experiment_id(url: str, name: str) -> str:
    query = urllib.parse.urlencode({"experiment_name": name})
    try:
        with urllib.request.urlopen(f"{url}/api/2.0/mlflow/experiments/get-by-name?{query}", timeout=30) as answer:
            return json.load(answer)["experiment"]["experiment_id"]
    except OSError as exc:
        sys.exit(f"mlflow_screenshots: no MLflow UI answering at {url} with an experiment '{name}' ({exc}); "
                 "start it with `dermagan ui`")


def close_assistant(page) -> None:
    """The MLflow Assistant panel (MLflow 3.x) opens on the right; its close button is the right-most 'Close'."""
    buttons = [b for b in page.get_by_role("button", name="Close").all() if b.bounding_box()]
    if buttons:
        max(buttons, key=lambda b: b.bounding_box()["x"]).click()
        page.wait_for_timeout(800)


def main_panel_clip(page) -> dict:
    """The area right of the side navigation, down to the last visible content row."""
    nav = page.get_by_text("Model registry", exact=True).first.bounding_box()
    left = (nav["x"] + nav["width"] + 24) if nav else 0
    return {"x": left, "y": 0, "width": VIEWPORT["width"] - left, "height": VIEWPORT["height"]}


def shoot(page, path: Path) -> None:
    page.screenshot(path=str(path), clip=main_panel_clip(page))
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:5000", help="the running MLflow UI (default: %(default)s)")
    parser.add_argument("--experiment", default="dermagan", help="experiment (default: %(default)s)")
    parser.add_argument("--model", default="dermagan-classifier", help="registered model (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("docs"), help="folder for the PNGs (default: %(default)s)")
    parser.add_argument("--chromium", default="/usr/bin/chromium", help="browser binary (default: %(default)s)")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    exp = experiment_id(args.url.rstrip("/"), args.experiment)
    runs = f"{args.url.rstrip('/')}/#/experiments/{exp}/runs?workflowType=machine_learning"
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as play:
        browser = play.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(runs)
        page.get_by_role("button", name="Group by").wait_for(timeout=60000)
        page.wait_for_timeout(2000)
        close_assistant(page)
        page.get_by_role("button", name="Group by").click()
        page.get_by_role("menuitemcheckbox", name="arm", exact=True).click()
        page.keyboard.press("Escape")
        page.wait_for_timeout(1500)
        shoot(page, args.out / "mlflow-runs.png")
        page.goto(f"{runs}&compareRunsMode=CHART")  # the grouping is kept in the page state
        search = page.get_by_placeholder("Search metric charts")
        search.wait_for(timeout=60000)
        search.fill(CHART_FILTER)
        page.wait_for_timeout(3000)
        shoot(page, args.out / "mlflow-charts.png")
        page.goto(f"{args.url.rstrip('/')}/#/models/{urllib.parse.quote(args.model)}?workflowType=machine_learning")
        page.get_by_text("Version", exact=False).first.wait_for(timeout=60000)
        page.wait_for_timeout(2500)
        close_assistant(page)
        shoot(page, args.out / "mlflow-registry.png")
        browser.close()


if __name__ == "__main__":
    main()
