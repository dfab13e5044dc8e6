"""Headless Chromium for the study's report (repro/report.py): open a page as a reader would, with the network
switched off, and read back what the browser saw — console errors, requests, the drawn figures, the load time.

Used by tests/test_report.py (the browser test) and scripts/bench_report.py (page load time, screenshots). Needs
Selenium (requirements.txt) and Chromium with its driver from the system packages (Debian: ``apt-get install -y
chromium chromium-driver``; `make test` installs them as root); the drivers are found on PATH, never downloaded.
"""
import json
import shutil
import time
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
DRIVERS = ("chromedriver",)
WINDOW = (1280, 1000)
DRAWN_TIMEOUT_S = 15


class BrowserUnavailable(RuntimeError):
    """Headless Chromium cannot be started here; the message says what is missing and how to install it."""


def _found(names):
    return next((shutil.which(name) for name in names if shutil.which(name)), None)


def start(window=WINDOW):
    """A headless Chromium under Selenium, logging the console and the network, sized like a laptop screen."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as error:
        raise BrowserUnavailable("Selenium is not installed ({}): pip install -r requirements.txt".format(error))
    browser, driver = _found(BROWSERS), _found(DRIVERS)
    if not browser or not driver:
        raise BrowserUnavailable("no {} found on PATH: install them (as root) with apt-get install -y chromium "
                                 "chromium-driver, or run make test".format(
                                     " and ".join(name for name, found in (("chromium", browser),
                                                                          ("chromedriver", driver)) if not found)))
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    # --no-sandbox: these machines run everything as root, where Chromium's sandbox refuses to start.
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size={},{}".format(*window), "--hide-scrollbars", "--disable-extensions"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    try:
        session = webdriver.Chrome(options=options, service=Service(driver))
    except Exception as error:          # Selenium's errors differ by cause; each means "cannot run here"
        raise BrowserUnavailable("headless Chromium ({}) did not start: {}".format(
            browser, str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)) from error
    session.set_page_load_timeout(DRAWN_TIMEOUT_S)
    return session


def go_offline(session):
    """Switch the page's network off (DevTools network emulation): what the page still draws needs nothing outside."""
    session.execute_cdp_cmd("Network.enable", {})
    session.execute_cdp_cmd("Network.emulateNetworkConditions", {
        "offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1})


def open_page(session, path):
    """Load ``path`` (file://) and wait until the report's script has drawn every figure; returns the seconds from
    the start of navigation to the first complete drawing (the page's own clock)."""
    session.get_log("browser")          # start each page with empty logs
    session.get_log("performance")
    session.get(Path(path).resolve().as_uri())
    deadline = time.monotonic() + DRAWN_TIMEOUT_S
    while time.monotonic() < deadline:
        drawn_at = session.execute_script("return window.reportDrawnAt === undefined ? null : window.reportDrawnAt")
        if drawn_at is not None:
            return drawn_at / 1000.0
        time.sleep(0.02)
    raise AssertionError("the report did not finish drawing within {} s (console: {})".format(
        DRAWN_TIMEOUT_S, console_errors(session)))


def first_contentful_paint(session):
    """Seconds from navigation to the first paint of the page's text (the reader sees the page before its figures)."""
    paints = session.execute_script("return performance.getEntriesByName('first-contentful-paint')"
                                    ".map(entry => entry.startTime)")
    return paints[0] / 1000.0 if paints else None


def console_errors(session):
    """The console's SEVERE entries since the last call (JavaScript errors, failed loads)."""
    return [entry["message"] for entry in session.get_log("browser") if entry["level"] == "SEVERE"]


def requested_urls(session):
    """Every URL the page asked the network stack for since the last call (DevTools' Network events)."""
    urls = []
    for entry in session.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def screenshot(session, path, height=None):
    """Save the page as PNG (``height``: resize the window first, to take more of the page)."""
    if height:
        width = session.execute_script("return window.outerWidth")
        session.set_window_size(width, height)
        time.sleep(0.3)                 # the responsive figures redraw at the new size
    session.save_screenshot(str(path))
    return Path(path)
