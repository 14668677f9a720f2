"""`mmfuse serve` on a caption model, over real HTTP (uvicorn on a loopback port): POST /caption
answers what `caption_images` gives, refuses bad uploads naming the field, checks the token; a
classification server has no /caption. The tiny captioner is trained here (tests/test_captioning.py's
tiny_image encoder and MiniLM's WordPiece from its wheel): nothing downloads."""
from __future__ import annotations

import io
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mmfuse.captioning.artifact import load_captioner, save_captioner
from mmfuse.captioning.model import caption_images, pixels_of
from mmfuse.cli import app as cli
from mmfuse.config import parse_config
from mmfuse.data.media import open_image
from mmfuse.serve import ServeSettings, create_app
from mmfuse.serve.local import running
from test_captioning import SCENES, caption_of, scene, tiny_config, tiny_model
from test_serve import metric, wait_ready

BEAM_SIZE = 2
TOKEN = "test-token-0123456789abcdef"


def build_caption_model(folder: Path) -> tuple[Path, list[Path]]:
    """Train (until it says the four captions) and save a tiny captioner with beam size 2;
    returns (model dir, one PNG per scene)."""
    folder.mkdir(parents=True, exist_ok=True)
    images = []
    for i, (left, right) in enumerate(SCENES):
        images.append(folder / f"scene{i}.png")
        scene(left, right).save(images[-1])
    model = tiny_model(beam_size=BEAM_SIZE)
    pixels = pixels_of(model, [scene(*s) for s in SCENES])
    ids = model.tokenizer.encode([caption_of(*s) for s in SCENES], 16)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(300):
        optimizer.zero_grad()
        loss = model.loss(pixels, ids, torch.arange(len(SCENES)))
        loss.backward()
        optimizer.step()
        if loss.item() < 0.01:
            break
    save_captioner(model.eval(), parse_config(tiny_config(beam_size=BEAM_SIZE)), folder / "model")
    return folder / "model", images


@pytest.fixture(scope="module")
def caption_model(tmp_path_factory) -> tuple[Path, list[Path]]:
    return build_caption_model(tmp_path_factory.mktemp("serve-caption"))


@pytest.fixture(scope="module")
def server(caption_model):
    settings = ServeSettings(model_dir=caption_model[0], max_wait_ms=2)
    with running(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)
        yield client


def upload(path: Path) -> dict:
    return {"image": (path.name, path.read_bytes(), "image/png")}


def direct_captions(model_dir: Path, images: list[Path]) -> list[str]:
    """What the model says of the files without a server (as `mmfuse caption` reads them)."""
    model, config = load_captioner(model_dir)
    pictures = [open_image(path, max_pixels=config.data.max_pixels) for path in images]
    return caption_images(model, pixels_of(model, pictures))


def test_caption_is_what_the_model_says(server, caption_model):
    model_dir, images = caption_model
    expected = direct_captions(model_dir, images)
    assert expected == [caption_of(*s) for s in SCENES]  # trained: a wrong image would get a wrong caption
    for image, want in zip(images, expected):
        response = server.post("/caption", files=upload(image))
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["caption"] == want and body["beam_size"] == BEAM_SIZE
        assert 0 < body["seconds"] < 30


def test_concurrent_captions_share_a_pass_and_stay_each_images_own(caption_model):
    model_dir, images = caption_model
    settings = ServeSettings(model_dir=model_dir, max_batch=16, max_wait_ms=150)
    asked = [images[i % len(images)] for i in range(8)]
    with running(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)
        with ThreadPoolExecutor(len(asked)) as pool:
            responses = list(pool.map(lambda path: client.post("/caption", files=upload(path)), asked))
        text = client.get("/metrics").text
    assert [r.json()["caption"] for r in responses] == direct_captions(model_dir, asked)
    assert metric(text, "mmfuse_batch_rows_sum") == len(asked)
    assert metric(text, "mmfuse_batch_rows_count") < len(asked)


def test_info_page_docs_and_metrics(server):
    info = server.get("/info").json()
    assert info["task"] == "caption" and info["modalities"] == ["image"] and info["beam_size"] == BEAM_SIZE
    assert info["inputs"]["image"]["kind"] == "file" and "PNG" in info["inputs"]["image"]["formats"]
    assert info["auth"] is False and info["search"] is False
    assert server.get("/health/live").json()["status"] == "live"
    paths = server.get("/openapi.json").json()["paths"]
    assert {"/caption", "/info", "/health/ready", "/metrics"} <= set(paths)
    assert not {"/predict", "/predict/upload", "/embed"} & set(paths)
    body = paths["/caption"]["post"]["requestBody"]
    assert body["required"] is True
    assert "image/png" in body["content"]["multipart/form-data"]["encoding"]["image"]["contentType"]
    assert set(paths["/caption"]["post"]["responses"]) >= {"200", "413", "415", "422", "503", "504"}
    page = server.get("/")
    assert page.status_code == 200 and 'id="caption"' in page.text
    assert metric(server.get("/metrics").text, "mmfuse_model_ready") == 1.0
    # What a classification server answers is not here.
    assert server.post("/predict", json={"rows": [{"text": "hi"}]}).status_code == 404


def test_bad_uploads_are_refused_naming_the_image(server, caption_model):
    png = caption_model[1][0].read_bytes()
    for data, status, words in [(b"just some text, no picture", 415, "not an image"),
                                (b"<html><body>login</body></html>", 422, "HTML"),
                                (png[: len(png) // 2], 422, "truncated"),
                                (b"", 422, "empty")]:
        response = server.post("/caption", files={"image": ("x.png", data, "image/png")})
        assert response.status_code == status, response.text
        assert response.json()["field"] == "image" and words in response.json()["message"], response.text
    missing = server.post("/caption", data={"text": "a caption of nothing"})
    assert missing.status_code == 422 and missing.json()["field"] == "image"
    as_text = server.post("/caption", data={"image": "not a file"})
    assert as_text.status_code == 422 and as_text.json()["field"] == "image"


def test_size_caps_are_enforced(caption_model):
    """The body cap (413, before the model) and the pixel cap (read from the header)."""
    model_dir, images = caption_model
    settings = ServeSettings(model_dir=model_dir, max_body_bytes=64 * 1024, max_pixels=32 * 32 - 1)
    big = io.BytesIO()  # noise does not compress: ~120 kB of PNG
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)).save(big, format="PNG")
    with running(create_app(settings)) as url, httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)
        too_long = client.post("/caption", files={"image": ("big.png", big.getvalue(), "image/png")})
        too_many = client.post("/caption", files=upload(images[0]))  # 32 x 32 = 1,024 pixels
    assert too_long.status_code == 413 and too_long.json()["field"] == "body"
    assert "too large" in too_long.json()["message"]
    assert too_many.status_code == 422 and too_many.json()["field"] == "image"
    assert "image too large" in too_many.json()["message"]


def test_the_token_is_required(caption_model):
    model_dir, images = caption_model
    with running(create_app(ServeSettings(model_dir=model_dir, token=TOKEN))) as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        wait_ready(client)  # health needs no token
        missing = client.post("/caption", files=upload(images[0]))
        wrong = client.post("/caption", files=upload(images[0]), headers={"Authorization": "Bearer wrong-token-0000"})
        info = client.get("/info")
        good = client.post("/caption", files=upload(images[0]), headers={"Authorization": f"Bearer {TOKEN}"})
        schema = client.get("/openapi.json").json()
    assert missing.status_code == 401 and missing.json()["message"] == "missing bearer token"
    assert wrong.status_code == 401 and wrong.json()["field"] == "Authorization"
    assert info.status_code == 401
    assert good.status_code == 200 and good.json()["caption"] == caption_of(*SCENES[0])
    assert schema["paths"]["/caption"]["post"]["security"] == [{"bearer": []}]


def test_not_ready_while_loading(caption_model):
    model_dir, images = caption_model
    release = threading.Event()

    def slow_load():
        release.wait(30)
        return load_captioner(model_dir)

    with running(create_app(ServeSettings(model_dir=model_dir), load=slow_load)) as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        refused = client.post("/caption", files=upload(images[0]))
        release.set()
        wait_ready(client)
        answered = client.post("/caption", files=upload(images[0]))
    assert refused.status_code == 503 and refused.json()["error"] == "not_ready" and refused.headers["retry-after"]
    assert answered.status_code == 200


def test_a_classification_server_has_no_caption_route(tmp_path):
    # Its routes do not depend on the model (this one fails to load): /caption is not one of them.
    with running(create_app(ServeSettings(model_dir=tmp_path / "nothing"))) as url, \
            httpx.Client(base_url=url, timeout=30) as client:
        response = client.post("/caption", files={"image": ("x.png", b"\x89PNG", "image/png")})
        paths = client.get("/openapi.json").json()["paths"]
    assert response.status_code == 404 and response.json()["error"] == "not_found"
    assert "/caption" not in paths and "/predict/upload" in paths


def test_the_command_serves_a_caption_model(caption_model, monkeypatch):
    import mmfuse.serve.app

    served = []
    monkeypatch.setattr(mmfuse.serve.app, "serve", served.append)  # not the blocking server
    result = CliRunner().invoke(cli, ["serve", str(caption_model[0]), "--port", "8123"])
    assert result.exit_code == 0, result.output
    assert served[0].model_dir == caption_model[0] and served[0].port == 8123


def test_loading_a_caption_server_imports_no_lightning(caption_model):
    code = (f"import sys; from pathlib import Path\n"
            f"from mmfuse.serve import ServeSettings, create_app\n"
            f"app = create_app(ServeSettings(model_dir=Path({str(caption_model[0])!r})))\n"
            f"app.state.model.start(); app.state.model.thread.join(60)\n"
            f"assert app.state.model.status == 'ready', app.state.model.error\n"
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
