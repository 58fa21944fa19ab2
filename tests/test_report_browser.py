"""leaderboard.html in headless Chromium at 1280 px with all 13 trained algorithms: every figure
renders within the page, no table cell's text overflows, the page never scrolls sideways,
nothing is fetched from outside."""

import shutil

import numpy as np
import pytest
from PIL import Image

from tests.test_report import make_runs

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,  # headless Chromium
    pytest.mark.skipif(
        not (CHROMIUM and DRIVER), reason="Debian chromium and chromium-driver not installed (.ci/run installs them)"
    ),
]


def test_every_figure_renders_and_no_request_fails(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from metabench.algorithms import REGISTRY
    from metabench.report import build

    every = tuple(sorted(name for name, cls in REGISTRY.items() if cls.trained))  # the real leaderboard's width
    runs_dir = make_runs(tmp_path, algorithms=every, seeds=(0,))  # one seed, as the default leaderboard
    build(runs_dir, tmp_path / "profiles", tmp_path / "reports")
    page = (tmp_path / "reports" / "leaderboard.html").resolve()
    assert "http://" not in page.read_text() and "https://" not in page.read_text()

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'chrome-profile'}",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        driver.get(page.as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])"
        )
        assert len(images) == 4
        for alt, complete, width, height in images:
            assert complete and width > 100 and height > 100, alt
        layout = driver.execute_script(
            """
            const page = document.documentElement.clientWidth;
            return {
              page: page,
              scroll: document.documentElement.scrollWidth,
              wideImages: Array.from(document.images).filter(i => i.getBoundingClientRect().right > page + 1).map(i => i.alt),
              overflowing: Array.from(document.querySelectorAll('td, th'))
                .filter(c => c.scrollWidth > c.clientWidth + 1).map(c => c.textContent.slice(0, 40)),
            };
            """
        )
        assert layout["scroll"] <= layout["page"], "the page scrolls sideways at 1280 px"
        assert layout["wideImages"] == [], "a figure is wider than the page"
        assert layout["overflowing"] == [], "text overflows its table cell"
        failed = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert failed == []
        resources = driver.execute_script(
            "return performance.getEntriesByType('resource').filter(r => !r.name.startsWith('data:')).map(r => r.name)"
        )
        assert resources == []
        # what a reader sees: emphasis rendered, the budget beside the scores, captions that say what is drawn
        seen = driver.execute_script(
            """
            const section = Array.from(document.querySelectorAll('h2')).find(h => h.textContent === 'How the numbers are computed');
            let strong = 0, raw = false;
            for (let e = section.nextElementSibling; e && e.tagName !== 'H2'; e = e.nextElementSibling) {
              strong += e.querySelectorAll('strong').length;
              raw = raw || e.textContent.includes('**');
            }
            const main = document.querySelector('table');
            return {
              strong: strong, raw: raw,
              header: Array.from(main.querySelectorAll('th')).map(th => th.textContent),
              budgets: Array.from(main.querySelectorAll('tbody tr')).map(tr => tr.children[4].textContent),
              captions: Array.from(document.querySelectorAll('figcaption')).map(c => c.textContent),
            };
            """
        )
        assert seen["strong"] >= 3 and not seen["raw"]
        assert seen["header"][4] == "budget (steps × tasks)" and all(" × " in b for b in seen["budgets"])
        assert "with one seed: its accuracy ± the 95% interval over the shared test episodes" in seen["captions"][0]
        assert "grey dots" not in seen["captions"][0]  # one seed: no seed dots are drawn, none promised
        shot = tmp_path / "page.png"
        driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.std() > 10  # not a blank page
