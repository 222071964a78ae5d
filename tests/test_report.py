"""The evaluation's HTML report, from real nnU-Net and rNCA predictions (with --save_uncertainty), opened in
headless Chromium: its rows, its sorting and its pictures are checked in the browser's DOM, not in the text."""
import os
import re
import shutil

import pytest

from rnca_nnunet.evaluate import case_stem

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# CI sets this, so that a browser missing there fails the test instead of skipping it
BROWSER_REQUIRED = os.environ.get("RNCA_REQUIRE_BROWSER") == "1"


@pytest.fixture(scope="module")
def report(vessel_evaluation):
    return vessel_evaluation


def test_report_is_written_beside_its_pictures_and_needs_no_network(report):
    folder, summary, stdout = report
    page = (folder / "html" / "index.html").read_text()
    assert f"report: {folder / 'html' / 'index.html'}" in stdout
    stems = [case_stem(case["case"]) for case in summary["per_case"]]
    assert sorted(os.listdir(folder / "html" / "cases")) == sorted(
        [f"{s}.png" for s in stems] + [f"{s}_uncertainty.png" for s in stems])
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", page), "nothing is fetched from a network"
    for case in summary["per_case"]:
        scores = case["uncertainty"]
        assert 0 <= scores["cells"] <= 1 and 0 <= scores["topology"] <= 1
        assert case["changed_cells"]["vessel"] >= 0


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    if not (CHROMIUM and CHROMEDRIVER):
        message = "Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)"
        if BROWSER_REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e .[test])")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium')}", "--window-size=1400,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def column_values(browser, header: str):
    """The cases table's cells under `header`, top to bottom, as the page shows them now."""
    names = [th.text for th in browser.find_elements("css selector", "#cases thead th")]
    column = names.index(header)
    return [row.find_elements("css selector", "td")[column] for row in browser.find_elements("css selector",
                                                                                                "#cases tbody tr")]


def test_report_in_chromium_sorts_its_cases_and_loads_every_picture(report, browser):
    folder, summary, _ = report
    browser.get((folder / "html" / "index.html").as_uri())
    assert browser.find_elements("css selector", "#summary tbody tr")[0].text.startswith("base vessel")
    assert len(browser.find_elements("css selector", "#summary tbody tr")) == 2  # base and refined, one class
    cases = [c.text for c in column_values(browser, "case")]
    assert sorted(cases) == sorted(case["case"] for case in summary["per_case"])

    dice = {case["case"]: case["refined"]["vessel"]["dice"] for case in summary["per_case"]}
    assert len(set(dice.values())) > 1, "the cases must differ for sorting to show anything"
    header = next(th for th in browser.find_elements("css selector", "#cases thead th") if th.text == "dice after")
    header.click()
    shown = [float(cell.get_attribute("data-v")) for cell in column_values(browser, "dice after")]
    assert shown == sorted(shown) and header.get_attribute("aria-sort") == "ascending"
    assert column_values(browser, "case")[0].text == min(dice, key=dice.get)
    header.click()
    shown = [float(cell.get_attribute("data-v")) for cell in column_values(browser, "dice after")]
    assert shown == sorted(shown, reverse=True)
    assert column_values(browser, "case")[0].text == max(dice, key=dice.get)

    images = browser.find_elements("css selector", "#cases img.thumb")
    assert len(images) == 2 * len(summary["per_case"])  # the overlay and the uncertainty picture of each case
    for image in images:
        assert browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", image) > 0
    links = [a.get_attribute("href") for a in browser.find_elements("css selector", "#cases a")]
    for link in links:
        browser.get(link)
        assert browser.execute_script("return document.images.length && document.images[0].naturalWidth") > 0, link
