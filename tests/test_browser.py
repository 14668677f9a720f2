"""The web page end to end in headless Debian chromium: upload, ask, read the answer."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import httpx
import pytest

from mmfuse import Predictor
from mmfuse.serve import ServeSettings, create_app
from mmfuse.serve.local import running
from test_serve import QUESTION, build_tiny_model, wait_ready

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).parent / "artifacts"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium")


@pytest.fixture
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="mmfuse-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=900,1100"):
        options.add_argument(flag)
    # A Service with an explicit driver path: Selenium Manager never looks for (or downloads) one.
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def model_and_question(tmp_path: Path) -> tuple[Path, Path, str]:
    """A tiny model, or with MMFUSE_BROWSER_MODEL=DIR a real easy-VQA model (for a telling screenshot)."""
    real = os.environ.get("MMFUSE_BROWSER_MODEL")
    if real:
        import easy_vqa

        questions, _, image_ids = easy_vqa.get_test_questions()
        return Path(real), Path(easy_vqa.get_test_image_paths()[image_ids[0]]), questions[0]
    model_dir, images = build_tiny_model(tmp_path)
    return model_dir, images[0], QUESTION


def test_upload_ask_and_see_the_answer(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    model_dir, image, question = model_and_question(tmp_path)
    labels = Predictor.load(model_dir).labels
    with running(create_app(ServeSettings(model_dir=model_dir))) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            wait_ready(client)
        browser.get(url + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(EC.text_to_be_present_in_element((By.ID, "model-info"), "labels"))
        browser.find_element(By.ID, "image").send_keys(str(image))
        wait.until(lambda driver: driver.find_element(By.ID, "preview").is_displayed())
        browser.find_element(By.ID, "text").send_keys(question)
        browser.find_element(By.ID, "ask").click()
        wait.until(EC.visibility_of_element_located((By.ID, "result")))
        answer = browser.find_element(By.ID, "answer").text
        shown = [li.find_element(By.CLASS_NAME, "label").text for li in browser.find_elements(By.CSS_SELECTOR, "#topk li")]
        probabilities = [li.find_element(By.CLASS_NAME, "prob").text for li in browser.find_elements(By.CSS_SELECTOR, "#topk li")]
        contribution = browser.find_element(By.ID, "c-no-image").text
        ARTIFACTS.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "browser.png"))
    assert answer in labels
    assert shown[0] == answer and set(shown) <= set(labels) and len(shown) == min(5, len(labels))
    values = [float(p.rstrip("%")) for p in probabilities]
    assert all(0 <= v <= 100 for v in values) and values == sorted(values, reverse=True)
    assert contribution.endswith("%")
    assert not browser.find_element(By.ID, "error").is_displayed()
    assert (ARTIFACTS / "browser.png").stat().st_size > 5000
