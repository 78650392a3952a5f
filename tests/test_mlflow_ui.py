"""MLflow's compare view as a user sees it: a real `mlflow server` on loopback, two runs recorded through
pipeline.tracking that differ in one param and one metric, and the compare page opened in headless Debian chromium
driven by Selenium. The screenshot lands in the test's folder; set TAVCE_UI_SCREENSHOT=docs/mlflow_compare.png to
refresh the one in docs/."""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline import tracking
from tests.servers import mlflow_server

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
PAGE_TIMEOUT_S = 90


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


@pytest.fixture
def server_url(tmp_path: Path) -> Iterator[str]:
    """`mlflow server` on 127.0.0.1 with a sqlite store and an artifact root in tmp; yields its URL."""
    with mlflow_server(f"sqlite:///{tmp_path}/server.db", tmp_path / "artifacts") as url:
        yield url


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                    reason="Debian's chromium and chromium-driver are not installed (scripts/run.sh setup installs "
                           "them with apt-get)")
def test_compare_view_lists_both_runs_and_their_differing_param_and_metric(server_url: str,
                                                                          tmp_path: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # two DVC experiments of the sweep, as the stages record them (each stage run nested under its experiment)
    runs = {}
    for exp, lr, auc in (("sweep-lr1e-4", 1e-4, 0.97), ("sweep-lr1e-3", 1e-3, 0.88)):
        ctx = tracking.RunContext(root=tmp_path, tracking_uri=server_url, git_rev="0123abc", dvc_exp_name=exp)
        with tracking.stage_run(ctx, "train_tavc", {"train_tavc.lr": lr, "train_tavc.steps": 600, "common.seed": 0},
                                "d41d8cd9") as tracker:
            tracker.log_metrics({"heldout_auc": auc, "heldout_pos_minus_neg": 0.61})
            runs[exp] = tracker.run_id
    import mlflow

    exp_id = mlflow.MlflowClient(server_url).get_experiment_by_name(tracking.EXPERIMENT_NAME).experiment_id
    query = urllib.parse.urlencode({"runs": json.dumps(list(runs.values())), "experiments": json.dumps([exp_id])})

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1500,1900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        driver.get(f"{server_url}/#/compare-runs?{query}")
        deadline = time.monotonic() + PAGE_TIMEOUT_S
        while True:
            text = driver.find_element("tag name", "body").text
            if "Parameters" in text and "heldout_auc" in text and "train_tavc:sweep-lr1e-3" in text:
                break
            assert time.monotonic() < deadline, f"compare view did not render:\n{text[:2000]}"
            time.sleep(0.5)
        for button in driver.find_elements("css selector", "button[aria-label]"):  # hide the assistant side panel
            if "close" in (button.get_attribute("aria-label") or "").lower() and button.is_displayed():
                button.click()
                break
        time.sleep(1.0)  # let the plots finish drawing before the screenshot
        text = driver.find_element("tag name", "body").text
        lines = text.splitlines()
        shot = tmp_path / "mlflow_compare.png"
        driver.save_screenshot(str(shot))
    finally:
        driver.quit()

    assert "Comparing 2 Runs" in text
    for exp, run_id in runs.items():
        assert f"train_tavc:{exp}" in lines and run_id in text
    assert "train_tavc.lr 0.0001 0.001" in lines  # the param that differs, one column per run
    assert "train_tavc.steps 600 600" in lines and "common.seed 0 0" in lines
    # the Metrics table: names in one column, then each metric's values, one per run (whatever the layout, the
    # words in reading order are the names followed by the values row by row)
    section = lines[lines.index("Metrics"):lines.index("Artifacts")]
    words = " ".join(w for w in section[1:] if w != "Show diff only").split()
    names = [w for w in words if not _is_number(w)]
    values = [float(w) for w in words if _is_number(w)]
    table = {n: values[2 * i:2 * i + 2] for i, n in enumerate(names)}
    assert table == {"heldout_auc": [0.97, 0.88], "heldout_pos_minus_neg": [0.61, 0.61]}, section
    assert shot.stat().st_size > 20_000
    target = os.environ.get("TAVCE_UI_SCREENSHOT")
    if target:
        shutil.copyfile(shot, target)
