"""The page of `sam-deblur serve` in a real headless Chromium (Debian's ``chromium`` and
``chromium-driver``, driven by Selenium), against a real uvicorn server and the tiny models.

Skipped, saying why, when Chromium, its driver or Selenium is missing (``.ci/run`` installs
them). The screenshot goes to ``tmp_path``; with ``SAM_DEBLUR_SCREENSHOT=docs/serve.png`` it is
also written there (that is how the README's picture is made).
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from tiny_models import TinyEnv, run_cli, small_photo

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")


@pytest.fixture(name="server")
def server_fixture(tiny_env: TinyEnv, tmp_path: Path) -> Iterator[str]:
    """A real uvicorn server on a free loopback port; yields its base URL."""
    uvicorn = pytest.importorskip("uvicorn", reason="the serve extra (uvicorn) is not installed")
    from sam_deblur_cli.serve.app import create_app
    from sam_deblur_cli.serve.jobs import ServeSettings

    settings = ServeSettings(device="cpu", temp_parent=tmp_path / "serve-temp")
    settings.temp_parent.mkdir()  # type: ignore[union-attr]
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=0, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)
    assert list((tmp_path / "serve-temp").iterdir()) == []  # the service removed its folder


@pytest.fixture(name="browser")
def browser_fixture(tmp_path: Path) -> Iterator[Any]:
    if CHROMIUM is None or DRIVER is None:
        pytest.skip(
            "Chromium and its driver are not installed (apt-get install chromium chromium-driver)"
        )
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1200,820"):
        options.add_argument(flag)
    options.add_experimental_option(
        "prefs", {"download.default_directory": str(tmp_path / "downloads")}
    )
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(DRIVER))
    driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior",
        {"behavior": "allow", "downloadPath": str(tmp_path / "downloads")},
    )
    yield driver
    driver.quit()


def _wait(predicate: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("the page did not get there in time")


def test_drop_a_photo_compare_toggle_masks_and_download(
    server: str, browser: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    photo = tmp_path / "street.png"
    Image.fromarray(small_photo("astronaut", 2)).save(photo)  # 256 x 256
    code, _, err = run_cli(capsys, photo, "-o", tmp_path / "cli.png", "--device", "cpu")
    assert code == 0, err

    browser.get(server + "/")
    find = browser.find_element
    _wait(lambda: "ready" in find(By.ID, "status").get_attribute("class"))
    assert "segnafnet-gopro" in Select(find(By.ID, "model")).first_selected_option.text
    find(By.ID, "files").send_keys(str(photo))
    _wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#list li[data-state=done]"))
    after = find(By.ID, "after")
    _wait(lambda: browser.execute_script("return arguments[0].naturalWidth", after) == 256)

    slider = find(By.ID, "slider")
    slider.send_keys(*[Keys.ARROW_LEFT] * 20)
    assert slider.get_attribute("value") == "30"
    assert "30%" in after.value_of_css_property("clip-path")

    before = find(By.ID, "before")
    assert before.get_attribute("src").endswith("/before")
    find(By.ID, "overlay").click()
    _wait(lambda: before.get_attribute("src").endswith("/overlay"))
    _wait(
        lambda: browser.execute_script(
            "return arguments[0].complete && arguments[0].naturalWidth", before
        )
    )

    Select(find(By.ID, "zoom")).select_by_value("2")
    _wait(lambda: find(By.ID, "frame").size["width"] == 512)
    Select(find(By.ID, "zoom")).select_by_value("fit")
    find(By.ID, "overlay").click()
    _wait(lambda: before.get_attribute("src").endswith("/before"))
    frame, shown = find(By.ID, "frame").size, after.size
    assert (shown["width"], shown["height"]) == (frame["width"], frame["height"])  # aligned
    browser.save_screenshot(str(tmp_path / "serve.png"))
    if os.environ.get("SAM_DEBLUR_SCREENSHOT"):
        shutil.copy(tmp_path / "serve.png", os.environ["SAM_DEBLUR_SCREENSHOT"])

    find(By.ID, "download").click()
    downloads = tmp_path / "downloads"
    saved = _wait(lambda: [p for p in downloads.glob("*.png")] if downloads.exists() else None)
    assert [p.name for p in saved] == ["street_deblurred.png"]
    got = np.asarray(Image.open(saved[0]))
    assert np.array_equal(got, np.asarray(Image.open(tmp_path / "cli.png")))
    assert not np.array_equal(got, np.asarray(Image.open(photo)))
