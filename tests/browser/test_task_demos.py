"""The task demos in real Chromium, on a live app: a visitor uploads an image to a detector's
demo and sees the labelled boxes and their table; the segmenter, audio and text demos answer in
their own terms. A screenshot of each lands in the test's tmp dir (and artifacts/browser/)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import Page, expect

from serving.tasks.audio import wav_bytes
from storefront.demo_built import digit_finder, keypad_tones
from storefront.demo_text import python_doc_embeddings
from tests import task_models as tm
from tests.integration.journey import approve, live_app, publish, signup

pytestmark = pytest.mark.browser
SHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "browser"
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory,
           embedded_redis_url: str) -> Iterator[dict[str, Any]]:
    with live_app(tmp_path_factory.mktemp("task-demos"), embedded_redis_url,
                  "the app to listen", redis_namespace="task-demos:") as (url, _):
        with httpx.Client(base_url=url, timeout=120) as http:
            _, seller = signup(http, "seller")
            slugs = {}
            for name, build in [("detector", tm.yolo_like), ("segmenter", tm.ppocr_det),
                                ("audio", tm.audio_clf), ("text", tm.text_clf),
                                ("digits", digit_finder), ("keypad", keypad_tones),
                                ("embeddings", python_doc_embeddings)]:
                data, manifest = build()
                out = publish(http, seller, data, {**manifest, "title": f"Demo {name}"})
                approve(http, out["slug"], out["version"])
                slugs[name] = out["slug"]
        yield {"url": url, "slugs": slugs}


@pytest.fixture
def demo(browser: Any, served: dict[str, Any], tmp_path: Path) -> Iterator[Any]:
    """Opens a listing's model page and returns its demo frame; fails the test if the page
    reached any other host."""
    ctx = browser.new_context(base_url=served["url"], viewport={"width": 1280, "height": 1000})
    hosts: set[str] = set()
    ctx.on("request", lambda r: hosts.add(urlparse(r.url).hostname or r.url[:5]))
    page = ctx.new_page()
    page.set_default_timeout(WAIT_MS)

    def open_demo(name: str) -> tuple[Page, Any]:
        page.goto(f"/models/{served['slugs'][name]}")
        page.locator("iframe.demo").scroll_into_view_if_needed()
        return page, page.frame_locator("iframe.demo")

    yield open_demo
    ctx.close()
    assert hosts <= {"127.0.0.1", "data:", "blob:"}, f"pages reached other hosts: {hosts}"


def _shot(page: Page, tmp_path: Path, name: str) -> None:
    page.locator("iframe.demo").scroll_into_view_if_needed()
    page.screenshot(path=str(tmp_path / f"{name}.png"), full_page=True)
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    assert (tmp_path / f"{name}.png").stat().st_size > 0


def _picture(tmp_path: Path, text: bool = False) -> Path:
    img = Image.new("RGB", (320, 160), "white" if text else "gray")
    if text:
        ImageDraw.Draw(img).text((20, 30), "Hello world", fill="black", font_size=32)
    path = tmp_path / "picture.png"
    img.save(path)
    return path


def test_a_visitor_uploads_an_image_to_a_detector_and_sees_boxes(demo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    page, frame = demo("detector")
    frame.locator("#demo-image input[type=file]").set_input_files(str(_picture(tmp_path)))
    expect(frame.locator("#demo-image img")).to_be_visible()
    frame.get_by_role("button", name="Detect").click()
    table = frame.locator("#demo-output")
    expect(table).to_contain_text("cat")
    expect(table).to_contain_text("dog")
    expect(table).to_contain_text("0.9")  # the cat's score
    expect(frame.locator("#demo-drawn img")).to_be_visible()  # the image with the boxes drawn
    expect(frame.locator("#demo-remaining")).to_contain_text("free demo calls left today")
    _shot(page, tmp_path, "task-object-detection")


def test_segmentation_audio_and_text_demos_answer(demo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    page, frame = demo("segmenter")
    frame.locator("#demo-image input[type=file]").set_input_files(
        str(_picture(tmp_path, text=True)))
    expect(frame.locator("#demo-image img")).to_be_visible()
    frame.get_by_role("button", name="Segment").click()
    expect(frame.locator("#demo-output")).to_contain_text("text")
    expect(frame.locator("#demo-output")).to_contain_text("background")
    expect(frame.locator("#demo-drawn img")).to_be_visible()
    _shot(page, tmp_path, "task-image-segmentation")

    page, frame = demo("audio")
    t = np.arange(8000) / 16000
    clip = tmp_path / "clip.wav"
    clip.write_bytes(wav_bytes((0.8 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000))
    frame.locator("#demo-audio input[type=file]").set_input_files(str(clip))
    frame.get_by_role("button", name="Classify").click()
    expect(frame.locator("#demo-output")).to_contain_text("speech")
    _shot(page, tmp_path, "task-audio-classification")

    page, frame = demo("text")
    frame.locator("#demo-text textarea").fill("awful and bad, terrible")
    frame.get_by_role("button", name="Classify").click()
    expect(frame.locator("#demo-output [data-testid=label-output-value]")).to_have_text(
        "negative")
    _shot(page, tmp_path, "task-text-classification")




def test_the_catalogs_built_listings_answer_from_their_own_examples(demo, tmp_path) -> None:  # type: ignore[no-untyped-def]
    page, frame = demo("digits")  # an example page of digits, then Detect
    frame.locator("#demo-image").scroll_into_view_if_needed()
    frame.get_by_text("Examples").scroll_into_view_if_needed()
    frame.locator(".gallery-item, button.gallery-item, [data-testid=dataset] button"
                  ).first.click()
    expect(frame.locator("#demo-image img")).to_be_visible()
    frame.get_by_role("button", name="Detect").click()
    expect(frame.locator("#demo-output")).to_contain_text("0.9")
    expect(frame.locator("#demo-drawn img")).to_be_visible()
    _shot(page, tmp_path, "catalog-digit-finder")

    page, frame = demo("keypad")  # the first example clip is the key 5
    frame.locator(".gallery-item, button.gallery-item, [data-testid=dataset] button"
                  ).first.click()
    frame.get_by_role("button", name="Classify").click()
    expect(frame.locator("#demo-output [data-testid=label-output-value]")).to_have_text("5")
    _shot(page, tmp_path, "catalog-phone-keypad-tones")

    page, frame = demo("embeddings")  # the examples prefill the two texts
    frame.get_by_role("button", name="Embed and compare").click()
    expect(frame.locator("#demo-output")).to_contain_text("Cosine similarity: 0.6")
    _shot(page, tmp_path, "catalog-python-doc-embeddings")
