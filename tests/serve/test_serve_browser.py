"""The chat page in headless Chromium (Debian's `chromium` + Playwright's client): load /, attach an
image, send a message, see streamed text appear, stop a long answer; the screenshot is a test artifact
(`$PIXTRAL_TEST_ARTIFACTS` or `out/test-artifacts/`)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from pixtral.serve import ServeSettings, create_app
from tests.serve.serve_helpers import REPO, live_server, png_bytes

CHROMIUM = os.environ.get("PIXTRAL_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-dev-shm-usage",
]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium) - browser test skipped"
)


@pytest.fixture(scope="module")
def page_url(engine):
    app = create_app(engine, ServeSettings(access_log=False, api_key="page-key", served_model_name="tiny"))
    with live_server(app) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield browser
        browser.close()


def artifact_dir() -> Path:
    path = Path(os.environ.get("PIXTRAL_TEST_ARTIFACTS", REPO / "out" / "test-artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_chat_page_attach_send_stream_stop(page_url, browser, tmp_path):
    from playwright.sync_api import expect

    image = tmp_path / "photo.png"
    image.write_bytes(png_bytes(64, 48, seed=3))
    page = browser.new_page(viewport={"width": 1100, "height": 800})
    external: list[str] = []
    page.on(
        "request",
        lambda req: None if req.url.startswith((page_url, "data:", "blob:")) else external.append(req.url),
    )
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(page_url + "/")
    assert page.title() == "Pixtral chat"

    # the server wants a key: the page says so, then works once it is entered
    expect(page.locator("#model-name")).to_contain_text("API key")
    page.click("#toggle-settings")
    page.fill("#api-key", "page-key")
    page.dispatch_event("#api-key", "change")
    expect(page.locator("#model-name")).to_have_text("tiny")
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "24")
    page.click("#toggle-settings")

    page.set_input_files("#file-input", str(image))
    expect(page.locator("#attachments .thumb img")).to_have_count(1)
    page.fill("#prompt", "What is in this picture?")
    page.click("#send")
    expect(page.locator(".msg.user .images img")).to_have_count(1)
    first = page.locator(".msg.assistant").nth(0)
    expect(first.locator(".text")).to_have_text(re.compile(r"\S"), timeout=60_000)  # streamed text appears
    expect(first).not_to_have_class(re.compile("streaming"), timeout=60_000)
    expect(first.locator(".meta")).to_contain_text("24 tokens")
    expect(page.locator("#attachments .thumb")).to_have_count(0)
    assert page.is_hidden("#error")

    # second turn: a long answer, stopped with the Stop button
    page.click("#toggle-settings")
    page.fill("#max-tokens", "2000")
    page.click("#toggle-settings")
    page.fill("#prompt", "Now write a long story.")
    page.press("#prompt", "Enter")
    second = page.locator(".msg.assistant").nth(1)
    expect(second.locator(".text")).to_have_text(re.compile(r"\S{3}"), timeout=60_000)
    expect(page.locator("#stop")).to_be_enabled()
    page.screenshot(path=str(artifact_dir() / "serve_chat_page.png"), full_page=True)
    page.click("#stop")
    expect(second.locator(".meta")).to_contain_text("stopped")
    expect(page.locator("#send")).to_be_enabled()
    expect(page.locator("#stop")).to_be_disabled()
    assert errors == [] and external == []
    page.close()
