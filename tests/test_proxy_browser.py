"""A real browser through the shipped nginx proxy: Debian's chromium, driven by selenium through
Debian's chromedriver (never a downloaded one), signs in by the SSO cookie flow and by basic auth
and sees the mirrored runs on TensorBoard's scalars dashboard.

Set TBMIRROR_SCREENSHOT_DIR to keep the screenshot (the docs' image:
`TBMIRROR_SCREENSHOT_DIR=docs/images .venv/bin/python -m pytest tests/test_proxy_browser.py`).
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from conftest import MlflowServer, wait_until
from helpers.proxy import PASSWORD, PREFIX, USER, Nginx, ProxyStack, need_tools, proxy_stack

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
SCREENSHOT = "reverse-proxy-scalars.png"

# Every text in the page, shadow DOMs included (TensorBoard's dashboards are web components).
PAGE_TEXT = """
const texts = [];
const walk = (node) => {
  if (node.shadowRoot) walk(node.shadowRoot);
  for (const child of node.childNodes) {
    if (child.nodeType === Node.TEXT_NODE) texts.push(child.textContent);
    else walk(child);
  }
};
walk(document.body);
return texts.join(" ");
"""
# How many series lines the charts have drawn (Plottable's SVG `path.line`, shadow DOMs included).
DRAWN_LINES = """
let drawn = 0;
const walk = (node) => {
  if (node.shadowRoot) walk(node.shadowRoot);
  for (const child of node.children) {
    if (child.matches("path.line") && (child.getAttribute("d") || "").length > 10) drawn += 1;
    walk(child);
  }
};
walk(document.documentElement);
return drawn;
"""


def spki_hash(nginx: Nginx) -> str:
    """The certificate's public key hash, for chromium to trust that one certificate only."""
    key = subprocess.run(
        ["openssl", "x509", "-in", str(nginx.certificate), "-pubkey", "-noout"],
        check=True, capture_output=True,
    ).stdout  # fmt: skip
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "der"], input=key, check=True, capture_output=True
    ).stdout
    digest = subprocess.run(
        ["openssl", "dgst", "-sha256", "-binary"], input=der, check=True, capture_output=True
    ).stdout
    return base64.b64encode(digest).decode()


@contextmanager
def chromium(stack: ProxyStack, profile: Path) -> Iterator[WebDriver]:
    """Debian's chromium, headless, with a fresh profile, trusting the stack's certificates."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-dev-shm-usage", "--window-size=1400,900",
        f"--user-data-dir={profile}",
        # the test's self-signed certificates, and nothing else
        "--ignore-certificate-errors-spki-list="
        + ",".join(spki_hash(nginx) for nginx in (stack.basic, stack.sso)),
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def page_text(driver: WebDriver) -> str:
    return str(driver.execute_script(PAGE_TEXT))


def data_requests(driver: WebDriver) -> list[tuple[str, int]]:
    """(URL, status) of every TensorBoard API request the page made (Resource Timing)."""
    entries = driver.execute_script(
        "return performance.getEntriesByType('resource')"
        ".filter(e => e.name.includes('/data/')).map(e => [e.name, e.responseStatus])"
    )
    return [(str(url), int(status)) for url, status in entries]


def wait_for_scalars_dashboard(driver: WebDriver, stack: ProxyStack) -> str:
    """The page's text once every mirrored run's name shows on it and its scalars are loaded
    and drawn (fails after 90 s, or on any API request that did not answer 200)."""

    def shown() -> str | None:
        requests = data_requests(driver)
        assert all(status == 200 for _, status in requests), requests
        loaded = any("/data/plugin/scalars/scalars" in url for url, _ in requests)
        text = page_text(driver)
        names = all(run in text for run in stack.runs.values())
        drawn = int(driver.execute_script(DRAWN_LINES)) >= len(stack.runs)
        return text if loaded and names and drawn else None

    text: str = wait_until(shown, 90, f"the charts of {sorted(stack.runs.values())}", every=1)
    return text


def test_a_browser_signs_in_and_sees_the_runs_on_the_scalars_dashboard(
    tmp_path: Path, mlflow_server: MlflowServer
) -> None:
    """By the SSO cookie flow, then by basic auth (one stack: a module fixture would be built
    once per xdist worker)."""
    need_tools((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver"))
    with (
        proxy_stack(tmp_path / "stack", mlflow_server) as stack,
        chromium(stack, tmp_path / "chromium") as browser,
    ):
        sign_in_by_sso(stack, browser, tmp_path / SCREENSHOT)
        host = stack.basic.url.removeprefix("https://")
        browser.get(f"https://{USER}:{PASSWORD}@{host}{PREFIX}/#scalars")  # then kept
        assert "loss" in wait_for_scalars_dashboard(browser, stack)


def sign_in_by_sso(stack: ProxyStack, browser: WebDriver, screenshot: Path) -> None:
    """Sign in through the sign-in page, see the scalars, and take the docs' screenshot."""
    browser.get(f"{stack.sso.url}{PREFIX}/")
    text = page_text(browser)
    assert "Sign in" in text and stack.runs["alpha"] not in text
    browser.find_element(By.ID, "sign-in").click()
    back = f"{stack.sso.url}{PREFIX}/"  # the dashboard then adds its own #fragment
    wait_until(lambda: browser.current_url.split("#")[0] == back, 30, f"the redirect to {back}")
    browser.get(f"{stack.sso.url}{PREFIX}/#scalars")
    assert "loss" in wait_for_scalars_dashboard(browser, stack)
    browser.save_screenshot(str(screenshot))
    keep = os.environ.get("TBMIRROR_SCREENSHOT_DIR")
    if keep:
        shutil.copyfile(screenshot, Path(keep) / SCREENSHOT)
