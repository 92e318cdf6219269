"""The web console in a real browser: Debian's chromium, headless, driven
through chromium-driver (selenium), against a real ``segnode serve`` that
receives from dcmtk's storescu and sends to dcmtk's storescp.

An administrator signs in, adds a peer, watches the overview change by
itself while a series arrives, finds the series' job failed (its pipeline
names a model that is not installed), mends the pipeline, retries the job
from the series page and sees it done with its measurements, and makes a
route edit the schema refuses, shown beside its field. Each step leaves a
screenshot, checked to be a picture of a page and not a blank one; they are
kept under ``SEGNODE_SCREENSHOTS`` when that is set (the README's picture).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from pydicom.uid import ExplicitVRLittleEndian

from tests.conftest import NodeProcess, StoreSCP, dcmtk, dcmtk_env, free_port
from tests.synthetic import STORESCU_FLAGS, write_ct_series

pytestmark = pytest.mark.browser

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
USER, PASSWORD = "admin", "a long pass phrase, for the browser test"
WAIT_SECONDS = 90  # a job on 2 busy cores, with the worker's start


@pytest.fixture(scope="module")
def browser() -> Iterator:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail("chromium and chromium-driver are not installed: run ./install.sh --test")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


@pytest.fixture
def destination(tmp_path) -> Iterator[StoreSCP]:
    scp = StoreSCP(tmp_path)
    yield scp
    scp.stop()


@pytest.fixture
def console_node(node_factory, destination, tmp_path) -> NodeProcess:
    """A node with its console, whose only route's pipeline names a model that is not installed."""
    node = node_factory(models_dir=str(tmp_path / "models"))
    node.console_port = free_port()
    node.config["node"]["console"] = {"port": node.console_port}
    node.config.update(
        destinations={"results": {"ae_title": "STORESCP", "host": "127.0.0.1", "port": destination.port}},
        pipelines={"organs": {"model": "no-such-model", "device": "cpu"}},
        routes=[{"name": "ct", "match": {"modality": "CT"}, "pipeline": "organs", "send_to": ["results"]}],
        jobs={"max_attempts": 1, "retry_base_seconds": 0.5, "retry_max_seconds": 1},
    )
    node.write_config()
    added = subprocess.run(
        [sys.executable, "-m", "node.cli", "console", "add-user", "--config", str(node.config_path), USER,
         "--password-stdin"],
        input=PASSWORD + "\n", capture_output=True, text=True, cwd=node.workdir,
    )
    assert added.returncode == 0, added.stderr
    return node.start()


class Screens:
    """Screenshots of each step, each checked to show a page."""

    def __init__(self, driver, folder: Path):
        self.driver, self.folder = driver, folder
        folder.mkdir(parents=True, exist_ok=True)

    def take(self, name: str) -> Path:
        png = self.driver.get_screenshot_as_png()
        image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        assert image.shape[0] >= 600 and image.shape[1] >= 1000, image.shape
        colours = np.unique(image.reshape(-1, 3), axis=0)
        # A rendered page: text and tables in many shades, not a blank or one-colour error screen.
        assert len(colours) > 64, f"{name}: only {len(colours)} colours"
        assert (image.std(axis=(0, 1)) > 10).all(), f"{name}: nearly uniform"
        path = self.folder / f"{name}.png"
        path.write_bytes(png)
        return path


def wait_until(driver, condition, what: str, seconds: float = WAIT_SECONDS):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.25).until(condition, message=f"waiting for {what}")


def text_of(driver, css: str) -> str:
    """The text of every element `css` selects, read in one script: the
    overview replaces its live part every 2 s, and elements found before a
    refresh would be stale when read after it."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.innerText).join(' ');", css
    )


def form_of(driver, css: str):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css)


def config_entry(driver, section: str, position: int):
    """The form of entry `position` of a section on /config."""
    from selenium.webdriver.common.by import By

    forms = driver.find_elements(By.CSS_SELECTOR, f"section#{section} article.config-entry form.entry")
    return forms[position]


def test_an_administrator_signs_in_routes_watches_and_retries(browser, console_node, destination, tmp_path):
    from selenium.webdriver.common.by import By

    node, base = console_node, f"http://127.0.0.1:{console_node.console_port}"
    shots = Screens(browser, Path(os.environ.get("SEGNODE_SCREENSHOTS") or tmp_path / "screens"))

    # Sign in: a stranger is sent to the sign-in page first.
    browser.get(f"{base}/")
    wait_until(browser, lambda d: d.current_url.startswith(f"{base}/login"), "the sign-in page")
    browser.find_element(By.NAME, "user").send_keys(USER)
    browser.find_element(By.NAME, "password").send_keys(PASSWORD)
    shots.take("1-sign-in")
    browser.find_element(By.CSS_SELECTOR, "form[action='/login'] button").click()
    wait_until(browser, lambda d: d.find_elements(By.ID, "live"), "the overview")
    assert "open associations" in text_of(browser, "#live")

    # Add a peer through the configuration page; the file keeps it.
    browser.get(f"{base}/config")
    add_peer = form_of(browser, "section#peers details.config-add")
    add_peer.find_element(By.TAG_NAME, "summary").click()
    add_peer.find_element(By.NAME, "ae_title").send_keys("CT_SCANNER_2")
    add_peer.find_element(By.NAME, "host").send_keys("10.0.0.12")
    add_peer.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_until(browser, lambda d: "CT_SCANNER_2" in text_of(d, "p.notice"), "the notice of the new peer")
    peers = yaml.safe_load(node.config_path.read_text())["peers"]
    assert {"ae_title": "CT_SCANNER_2", "host": "10.0.0.12"} in peers
    shots.take("2-peer-added")

    # The overview changes by itself while storescu sends a series.
    browser.get(f"{base}/")
    wait_until(browser, lambda d: d.find_elements(By.ID, "live"), "the overview")
    assert "STORESCU" not in text_of(browser, "#live")
    series = write_ct_series(tmp_path / "ct", slices=24, rows=96, columns=96)
    subprocess.run(
        [dcmtk("storescu"), *STORESCU_FLAGS[ExplicitVRLittleEndian], "-aet", "STORESCU", "-aec", "SEGNODE",
         "127.0.0.1", str(node.port), *map(str, series)],
        check=True, env=dcmtk_env(), capture_output=True,
    )
    # No reload: the page's own polling brings the peer, its 24 instances and the failed job.
    wait_until(browser, lambda d: "STORESCU" in text_of(d, "#live"), "the peer on the overview")
    wait_until(browser, lambda d: "24" in text_of(d, "#live table"), "the instance count")
    wait_until(browser, lambda d: text_of(d, ".tile.job-failed .figure") == "1", "the failed job")
    shots.take("3-overview")

    # The job failed for the missing model: mend the pipeline, then retry from the series page.
    browser.get(f"{base}/config")
    reloads = node.log().count("configuration reloaded")
    pipeline = config_entry(browser, "pipelines", 0)
    model = pipeline.find_element(By.NAME, "model")
    model.clear()
    model.send_keys("builtin")
    pipeline.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_until(browser, lambda d: "organs" in text_of(d, "p.notice"), "the notice of the mended pipeline")
    assert yaml.safe_load(node.config_path.read_text())["pipelines"]["organs"]["model"] == "builtin"

    browser.get(f"{base}/series")
    browser.find_element(By.CSS_SELECTOR, "a[href^='/series/']").click()
    assert "no model named 'no-such-model'" in text_of(browser, "span.error")
    # The console asked the node to reload; the worker takes the pipeline from what the node applied.
    wait_until(browser, lambda d: node.log().count("configuration reloaded") > reloads, "the reload")
    browser.find_element(By.CSS_SELECTOR, "form[action^='/jobs/'] button").click()

    def job_done(driver) -> bool:
        driver.refresh()
        return bool(driver.find_elements(By.CSS_SELECTOR, "tr.job-done"))

    wait_until(browser, job_done, "the retried job to finish")
    assert "Other soft tissue" in text_of(browser, "table") or "body" in text_of(browser, "table").lower()
    shots.take("4-series-done")

    # An invalid route edit is refused beside its field, and the file is left as it was.
    browser.get(f"{base}/config")
    before = node.config_path.read_bytes()
    route = config_entry(browser, "routes", 0)
    for box in route.find_elements(By.CSS_SELECTOR, "input[name=send_to]:checked"):
        box.click()
    route.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "section#routes .field.invalid"),
               "the refusal")
    refused = text_of(browser, "section#routes .field.invalid .field-error")
    assert "at least 1" in refused, refused
    assert node.config_path.read_bytes() == before
    shots.take("5-route-refused")

    if os.environ.get("SEGNODE_SCREENSHOTS"):
        shutil.copy(shots.folder / "3-overview.png", shots.folder / "console-overview.png")
