"""The real MLflow UI, served on 127.0.0.1, in headless Chromium: the experiment of a tracked
run opens on its runs (not on the GenAI traces page) and lists the run by name."""

import json
import re
import shutil
import time

import pytest

from metabench.runner import evaluate_run, train_run
from metabench.tracking import run_link
from tests.test_tracking import Server, config

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,  # a real mlflow server and headless Chromium
    pytest.mark.skipif(
        not (CHROMIUM and DRIVER), reason="Debian chromium and chromium-driver not installed (.ci/run installs them)"
    ),
]


@pytest.fixture
def data(tmp_path, glyphs_dir):
    shutil.copytree(glyphs_dir / "glyphs", tmp_path / "data" / "glyphs")
    return tmp_path / "data"


def test_the_experiment_page_lists_the_tracked_runs(tmp_path, data, monkeypatch):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    server = Server(tmp_path / "mlflow").start()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        names = []
        for seed in (0, 1):
            run = config(tmp_path, data, seed=seed, iterations=5, val_every=5)
            train_run(run)
            evaluate_run(run)
            names.append(run.run_id)
        experiments = server.get("/api/2.0/mlflow/experiments/search?max_results=10")["experiments"]
        (experiment,) = [e for e in experiments if e["name"] == "metabench-glyphs"]

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--window-size=1280,1000",
            f"--user-data-dir={tmp_path / 'chrome-profile'}",
        ):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(DRIVER), options=options)
        try:
            driver.get(f"{server.url}/#/experiments/{experiment['experiment_id']}?workflowType=machine_learning")
            deadline, text = time.monotonic() + 90, ""
            while time.monotonic() < deadline:
                text = driver.execute_script("return document.body.innerText")
                if all(name in text for name in names):
                    break
                time.sleep(1)
            driver.save_screenshot(str(tmp_path / "mlflow-ui.png"))
            assert all(name in text for name in names), text[:2000]
            assert "Start tracing" not in text and "GenAI" not in driver.current_url

            # the run's page, through the link the report gives: the test accuracy is the first metric
            record = json.loads((run.run_dir / "mlflow_run.json").read_text())
            driver.get(run_link(record["run_id"], server.url, record["experiment_id"]))
            deadline, text = time.monotonic() + 90, ""
            while time.monotonic() < deadline:
                text = driver.execute_script("return document.body.innerText")
                if "accuracy_ci95" in text and "train/loss" in text:
                    break
                time.sleep(1)
            driver.save_screenshot(str(tmp_path / "mlflow-run.png"))
            assert run.run_id in text, text[:2000]
            # the model-training view (its sidebar lists Models), not the GenAI one (Judges, Evaluation runs)
            assert "Models" in text and "Judges" not in text, text[:2000]
            listed = text.split("Model metrics (", 1)[1].split("Parameters (", 1)[0].split()
            metrics = [word for word in listed if re.fullmatch(r"accuracy|accuracy_ci95|[a-z]+/[a-z_]+", word)]
            assert metrics[:2] == ["accuracy", "accuracy_ci95"], metrics
            assert listed[listed.index("accuracy") + 1] != "NaN"  # the evaluated value, not the placeholder
        finally:
            driver.quit()
    finally:
        server.stop()
