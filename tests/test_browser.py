"""The web page end to end in headless Debian chromium: upload, ask, read the answer and its
explanation (the heatmap over the image, the coloured words); record audio from chromium's fake
microphone."""
from __future__ import annotations

import base64
import os
from pathlib import Path

import httpx
import pytest

from mmfuse import Predictor
from mmfuse.serve import ServeSettings, create_app
from mmfuse.serve.local import running
from test_serve import QUESTION, build_tiny_model, wait_ready
from test_serve_audio import build_all_modalities_model

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).parent / "artifacts"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian chromium at /usr/bin/chromium")


@pytest.fixture
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    # Under pytest's own temporary root, so the profile is pruned like every other test's files.
    profile = tmp_path_factory.mktemp("chromium-profile")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--window-size=900,1100",
                 # A microphone without a person: no permission prompt, a generated test signal.
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 "--autoplay-policy=no-user-gesture-required"):
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
        assert not browser.find_elements(By.ID, "audio")  # only the model's own inputs are shown
        browser.find_element(By.ID, "image").send_keys(str(image))
        wait.until(lambda driver: driver.find_element(By.ID, "preview-image").is_displayed())
        browser.find_element(By.ID, "text").send_keys(question)
        browser.find_element(By.ID, "ask").click()
        wait.until(EC.visibility_of_element_located((By.ID, "result")))
        answer = browser.find_element(By.ID, "answer").text
        shown = [li.find_element(By.CLASS_NAME, "label").text for li in browser.find_elements(By.CSS_SELECTOR, "#topk li")]
        probabilities = [li.find_element(By.CLASS_NAME, "prob").text for li in browser.find_elements(By.CSS_SELECTOR, "#topk li")]
        contribution = browser.find_element(By.ID, "c-no-image").text
        assert browser.find_element(By.ID, "c-no-text").text.endswith("%")
        ARTIFACTS.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "browser.png"))
    assert answer in labels
    assert shown[0] == answer and set(shown) <= set(labels) and len(shown) == min(5, len(labels))
    values = [float(p.rstrip("%")) for p in probabilities]
    assert all(0 <= v <= 100 for v in values) and values == sorted(values, reverse=True)
    assert contribution.endswith("%")
    assert not browser.find_element(By.ID, "error").is_displayed()
    assert (ARTIFACTS / "browser.png").stat().st_size > 5000


# What the page drew: the overlay canvas against the image under it, and how many of its pixels show.
READ_OVERLAY = """
const image = document.getElementById("heat-image-image"), canvas = document.getElementById("heatmap-image");
if (!image || !canvas || !image.complete || canvas.width !== Math.round(image.clientWidth * devicePixelRatio)) return null;
const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
let shown = 0;
for (let i = 3; i < data.length; i += 4) if (data[i] > 0) shown++;
const box = (e) => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.width, r.height]; };
return {image: box(image), canvas: box(canvas), pixels: [canvas.width, canvas.height], ratio: devicePixelRatio,
        shown, total: data.length / 4, alt: image.alt, label: canvas.getAttribute("aria-label")};
"""


def test_the_explanation_is_drawn_over_the_image_and_on_the_words(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    model_dir, image, question = model_and_question(tmp_path)
    with running(create_app(ServeSettings(model_dir=model_dir))) as url:
        wait = open_page(browser, url)
        browser.find_element(By.ID, "image").send_keys(str(image))
        wait.until(lambda driver: driver.find_element(By.ID, "preview-image").is_displayed())
        browser.find_element(By.ID, "text").send_keys(question)
        ask_and_read(browser, wait)
        assert browser.find_element(By.ID, "explanation").is_displayed()
        overlay = WebDriverWait(browser, 30).until(lambda driver: driver.execute_script(READ_OVERLAY))
        words = [(span.text, span.get_attribute("title"), span.get_attribute("class"),
                  span.value_of_css_property("background-color"))
                 for span in browser.find_elements(By.CSS_SELECTOR, "#words-text .word")]
        browser.execute_script("document.getElementById('answer').scrollIntoView()")
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "browser-explain.png"))
        with httpx.Client(base_url=url, timeout=30) as client:  # what the page was answered
            expected = client.post("/predict/upload", files={"image": image.read_bytes()},
                                   data={"text": question, "explain": "true"}).json()["predictions"][0]
    # The overlay lies exactly on the image, at its displayed size, and shows something.
    assert overlay["canvas"] == overlay["image"] and overlay["image"][2] > 100
    assert overlay["pixels"] == [round(overlay["image"][2] * overlay["ratio"]), round(overlay["image"][3] * overlay["ratio"])]
    assert 0 < overlay["shown"] <= overlay["total"]
    assert overlay["alt"] and "heatmap" in overlay["label"]  # text alternatives
    # Each word is highlighted, with its attribution in the title and its sign in the class.
    attributions = expected["explanation"]["words"]["text"]
    assert [text for text, *_ in words] == [w["word"] for w in attributions] == question.split()
    for (_, title, kind, background), want in zip(words, attributions):
        assert float(title) == pytest.approx(want["attribution"], abs=1e-4)
        assert kind == "word " + ("for" if want["attribution"] >= 0 else "against")
        assert background.startswith("rgba(") and not background.endswith(", 0)")


# ----- audio: a file, and a recording from the (fake) microphone ------------------------------------

@pytest.fixture(scope="module")
def audio_model(tmp_path_factory) -> tuple[Path, list[dict]]:
    return build_all_modalities_model(tmp_path_factory.mktemp("browser-audio"))


def open_page(browser, url: str):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    with httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)
    browser.get(url + "/")
    wait = WebDriverWait(browser, 30)
    wait.until(EC.text_to_be_present_in_element((By.ID, "model-info"), "labels"))
    return wait


def ask_and_read(browser, wait) -> tuple[str, dict[str, str]]:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

    browser.find_element(By.ID, "ask").click()
    wait.until(lambda driver: driver.find_element(By.ID, "result").is_displayed()
               or driver.find_element(By.ID, "error").is_displayed())
    assert not browser.find_element(By.ID, "error").is_displayed(), browser.find_element(By.ID, "error").text
    wait.until(EC.visibility_of_element_located((By.ID, "result")))
    cells = {cell.get_attribute("id"): cell.text for cell in browser.find_elements(By.CSS_SELECTOR, "#contribution td")}
    return browser.find_element(By.ID, "answer").text, cells


def test_an_audio_file_on_the_page(audio_model, browser):
    from selenium.webdriver.common.by import By

    model_dir, rows = audio_model
    labels = Predictor.load(model_dir).labels
    with running(create_app(ServeSettings(model_dir=model_dir))) as url:
        wait = open_page(browser, url)
        assert {"image", "text", "audio", "record-audio"} <= {e.get_attribute("id") for e in
                                                            browser.find_elements(By.CSS_SELECTOR, "#inputs [id]")}
        browser.find_element(By.ID, "audio").send_keys(rows[4]["audio"])
        wait.until(lambda driver: driver.find_element(By.ID, "preview-audio").is_displayed())
        answer, alone = ask_and_read(browser, wait)
        assert answer in labels and alone == {}  # one input: nothing to take away
        browser.find_element(By.ID, "text").send_keys(rows[4]["text"])
        answer, cells = ask_and_read(browser, wait)
    assert answer in labels
    assert set(cells) == {"c-all", "c-no-text", "c-no-audio"} and all(v.endswith("%") for v in cells.values())


def test_record_from_the_microphone_and_predict(audio_model, browser):
    from selenium.webdriver.common.by import By

    from mmfuse.data.audio_media import decode_audio_bytes

    model_dir, _ = audio_model
    labels = Predictor.load(model_dir).labels
    with running(create_app(ServeSettings(model_dir=model_dir))) as url:
        wait = open_page(browser, url)
        record = browser.find_element(By.ID, "record-audio")
        record.click()
        wait.until(lambda driver: "recording" in driver.find_element(By.ID, "record-status-audio").text)
        wait.until(lambda driver: float(driver.find_element(By.ID, "record-status-audio").text.split()[1]) >= 1.2)
        record.click()
        wait.until(lambda driver: "recorded" in driver.find_element(By.ID, "record-status-audio").text)
        assert browser.find_element(By.ID, "preview-audio").is_displayed()
        # The file the page will send: read it back out of the file input.
        encoded = browser.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const file = document.getElementById("audio").files[0];
            file.arrayBuffer().then((buffer) => {
              let text = "";
              for (const byte of new Uint8Array(buffer)) text += String.fromCharCode(byte);
              done([file.name, file.type, btoa(text)]);
            });
        """)
        answer, _ = ask_and_read(browser, wait)
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "browser-audio.png"))
    name, kind, data = encoded[0], encoded[1], base64.b64decode(encoded[2])
    assert name == "recording.wav" and kind == "audio/wav"
    assert data[:4] == b"RIFF" and data[8:16] == b"WAVEfmt "
    channels, rate, bits = int.from_bytes(data[22:24], "little"), int.from_bytes(data[24:28], "little"), \
        int.from_bytes(data[34:36], "little")
    assert (channels, rate, bits) == (1, 16_000, 16)
    wave = decode_audio_bytes(data, max_seconds=30, sample_rate=16_000)
    assert 1.0 <= len(wave) / 16_000 <= 10
    assert float(abs(wave).max()) > 0.01  # chromium's fake microphone beeps: real samples were collected
    assert answer in labels


# ----- a caption model: pick an image, read its caption ------------------------------------------

def test_a_caption_model_on_the_page(tmp_path, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from test_captioning import SCENES, caption_of
    from test_serve_caption import build_caption_model

    model_dir, images = build_caption_model(tmp_path)
    with running(create_app(ServeSettings(model_dir=model_dir))) as url:
        with httpx.Client(base_url=url, timeout=30) as client:
            wait_ready(client)
        browser.get(url + "/")
        wait = WebDriverWait(browser, 30)
        wait.until(EC.text_to_be_present_in_element((By.ID, "model-info"), "caption model"))
        assert not browser.find_elements(By.ID, "text")  # an image is all a captioner takes
        assert browser.find_element(By.ID, "ask").text == "Caption"
        browser.find_element(By.ID, "image").send_keys(str(images[1]))
        wait.until(lambda driver: driver.find_element(By.ID, "preview-image").is_displayed())
        browser.find_element(By.ID, "ask").click()
        wait.until(lambda driver: driver.find_element(By.ID, "caption-result").is_displayed()
                   or driver.find_element(By.ID, "error").is_displayed())
        assert not browser.find_element(By.ID, "error").is_displayed(), browser.find_element(By.ID, "error").text
        caption, meta = browser.find_element(By.ID, "caption").text, browser.find_element(By.ID, "caption-meta").text
        assert not browser.find_element(By.ID, "result").is_displayed()  # no classification answer
        ARTIFACTS.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(ARTIFACTS / "browser-caption.png"))
    assert caption == caption_of(*SCENES[1])
    assert meta.startswith("beam size 2, ") and meta.endswith(" ms")
