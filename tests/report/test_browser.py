"""The report in a real browser: headless Chromium, network disabled, every plot drawn, no
console error, no request beyond the file itself."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import lossvista as lv

selenium = pytest.importorskip("selenium")
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
KINDS = ("plane", "line", "interpolation", "grid", "density", "eigs", "monitor", "race")


def _browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        reason = f"not installed: {missing} (scripts/install-test-tools.sh installs them)"
        print(reason)
        pytest.skip(reason)
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1200,900",
        # No network: names resolve nowhere and any proxied request goes to a closed port.
        "--host-resolver-rules=MAP * ~NOTFOUND",
        "--proxy-server=127.0.0.1:9",
        "--proxy-bypass-list=<-loopback>",
        # WebGL (3-D surfaces) on the CPU.
        "--use-angle=swiftshader",
        "--enable-unsafe-swiftshader",
        "--ignore-gpu-blocklist",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    service = webdriver.ChromeService(executable_path=CHROMEDRIVER)
    return webdriver.Chrome(options=options, service=service)


@pytest.fixture(scope="module")
def opened(results, tmp_path_factory):
    path = tmp_path_factory.mktemp("browser") / "report.html"
    lv.report(path, *(results[k] for k in KINDS), title="<script>alert(1)</script>")
    driver = _browser()
    try:
        driver.get(path.as_uri())
        driver.execute_script("return document.readyState")
        yield driver, path
    finally:
        driver.quit()


def _plot_sizes(driver) -> list[dict]:
    return driver.execute_script(
        """
        return Array.from(document.querySelectorAll('div.lv-plot')).map(function(div){
          var drawn = Array.from(div.querySelectorAll('svg.main-svg, canvas')).filter(
            function(el){var r = el.getBoundingClientRect(); return r.width > 0 && r.height > 0;});
          return {id: div.id, drawn: drawn.length, gl: div.querySelectorAll('canvas').length,
                  traces: (div.data || []).length, fullData: (div._fullData || []).length};
        });
        """
    )


def test_every_plot_is_drawn(opened):
    driver, _ = opened
    sizes = _plot_sizes(driver)
    assert len(sizes) >= len(KINDS)
    for plot in sizes:
        assert plot["drawn"] > 0 and plot["traces"] > 0, plot
    # The 3-D surface is drawn with WebGL.
    assert any(plot["gl"] > 0 for plot in sizes)
    # The hostile title is shown as text and never ran: no alert is open.
    assert driver.title == "<script>alert(1)</script>"
    with pytest.raises(NoAlertPresentException):
        _ = driver.switch_to.alert.text


def test_the_surface_buttons_switch_the_values(opened, results):
    driver, _ = opened
    loss = results["plane"].values["loss"]
    div = "document.querySelector('section[data-kind=\"landscape-2d\"] div.lv-plot')"
    buttons = driver.find_elements(
        By.CSS_SELECTOR, "section[data-kind='landscape-2d'] .updatemenu-button"
    )
    labels = [b.text for b in buttons]
    assert labels[0] == "linear" and "log10" in labels
    ActionChains(driver).move_to_element(buttons[labels.index("log10")]).click().perform()
    z = driver.execute_script(f"return {div}.data[0].z")
    np.testing.assert_allclose(np.array(z, dtype=float), np.log10(loss).T, rtol=1e-12)
    ActionChains(driver).move_to_element(buttons[0]).click().perform()
    assert driver.execute_script(f"return {div}.data[0].z") == loss.T.tolist()


def test_no_console_error(opened):
    driver, _ = opened
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []


def test_no_request_but_the_page(opened):
    driver, path = opened
    requested = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            requested.add(message["params"]["request"]["url"])
    resources = driver.execute_script(
        "return performance.getEntriesByType('resource').map(function(e){return e.name;})"
    )
    requested |= set(resources)
    outside = {url for url in requested if url != path.as_uri() and not url.startswith("data:")}
    assert outside == set()
    assert path.as_uri() in requested  # the log did record the page itself


def test_the_nd_slider_cuts_the_grid(opened, results):
    driver, _ = opened
    grid = results["grid"]
    plot_id = driver.execute_script(
        "return document.querySelector('section[data-kind=\"landscape-3d\"] div.lv-plot').id"
    )
    for index in range(grid.shape[2]):
        z = driver.execute_script(
            """
            var input = document.querySelector('input[data-plot="' + arguments[0] + '"]');
            input.value = arguments[1];
            input.dispatchEvent(new Event('input'));
            return document.getElementById(arguments[0]).data[0].z;
            """,
            plot_id,
            index,
        )
        assert z == grid.values["loss"][:, :, index].T.tolist()
