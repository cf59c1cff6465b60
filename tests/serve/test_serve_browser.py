"""The chat page in headless Chromium (Debian's `chromium` + Playwright's client): load /, attach an
image, send a message, see streamed text appear, stop a long answer; then, over a gated fake engine that
lets a test act before the first token and during a stream, what the page keeps of stopped, abandoned and
refused turns, how it reports an unreadable image, and its layout on a 390 px phone screen. Screenshots
are test artifacts (`$PIXTRAL_TEST_ARTIFACTS` or `out/test-artifacts/`)."""

from __future__ import annotations

import os
import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pixtral.serve import ServeSettings, create_app
from tests.serve.fake_engine import FakeEngine
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


# ------------------------------------------------------------------ turns kept, dropped and refused


@dataclass
class GatedEngine(FakeEngine):
    """The fake engine whose answers wait for `gate` before their first token, then come a word every
    `delay_s`: a test acts before the first token (gate closed) or during a stream, without racing."""

    gate: threading.Event = field(default_factory=threading.Event)
    delay_s: float = 0.02

    def stream(self, request, params, tools=None):
        if self.gate.wait(timeout=60):
            yield from super().stream(request, params, tools)


@pytest.fixture
def gated():
    engine = GatedEngine()
    with live_server(create_app(engine, ServeSettings(access_log=False))) as url:
        try:
            yield url, engine
        finally:
            engine.gate.set()  # let a held generation see its cancellation


class ChatPage:
    """A fresh browser context on the chat page, recording the messages of every chat request it sends
    and every uncaught script error."""

    def __init__(self, browser, url: str, viewport: dict | None = None):
        from playwright.sync_api import expect

        self.page = browser.new_page(viewport=viewport or {"width": 1100, "height": 800})
        self.sent: list[list[dict]] = []
        self.errors: list[str] = []
        self.page.on("request", self._record)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.goto(url + "/")
        expect(self.page.locator("#model-name")).to_have_text("fake-pixtral")

    def _record(self, request) -> None:
        if request.url.endswith("/v1/chat/completions"):
            self.sent.append(request.post_data_json["messages"])

    def setting(self, element_id: str, value: str) -> None:
        self.page.click("#toggle-settings")
        self.page.fill("#" + element_id, value)
        self.page.dispatch_event("#" + element_id, "change")
        self.page.click("#toggle-settings")

    def send(self, text: str) -> None:
        self.page.fill("#prompt", text)
        self.page.click("#send")


def reply_of(engine: FakeEngine, n_tokens: int) -> str:
    """What the fake engine answers with `n_tokens` tokens (one word a token)."""
    return " ".join((engine.reply.split(" ") * n_tokens)[:n_tokens])


def roles(messages: list[dict]) -> list[str]:
    return [m["role"] for m in messages]


def test_stop_before_the_first_token_drops_the_turn(gated, browser):
    from playwright.sync_api import expect

    url, engine = gated
    chat = ChatPage(browser, url)
    page = chat.page
    chat.setting("max-tokens", "8")
    chat.send("Hello there")
    expect(page.locator(".msg.assistant.streaming")).to_have_count(1)
    page.click("#stop")  # the gate is closed: no token has come
    expect(page.locator("#send")).to_be_enabled()
    engine.gate.set()

    # nothing of the stopped turn is kept: its text is back in the box, and sending it again works
    expect(page.locator(".msg")).to_have_count(0)
    expect(page.locator("#prompt")).to_have_value("Hello there")
    expect(page.locator("#status")).to_contain_text("Stopped before the answer began")
    page.click("#send")
    expect(page.locator(".msg.assistant .text")).to_have_text(reply_of(engine, 8))
    expect(page.locator(".msg.assistant .meta")).to_contain_text("8 tokens")
    assert page.is_hidden("#error")
    assert roles(chat.sent[-1]) == ["user"]
    assert chat.errors == []


def test_new_chat_while_streaming_starts_from_nothing(gated, browser):
    from playwright.sync_api import expect

    url, engine = gated
    engine.gate.set()
    chat = ChatPage(browser, url)
    page = chat.page
    chat.setting("max-tokens", "2000")
    chat.send("Tell me a long story")
    expect(page.locator(".msg.assistant .text")).to_contain_text("hello world")  # it streams
    page.click("#new-chat")
    expect(page.locator(".msg")).to_have_count(0)
    expect(page.locator("#send")).to_be_enabled()

    chat.setting("max-tokens", "8")
    chat.send("A new question")
    expect(page.locator(".msg.assistant .text")).to_have_text(reply_of(engine, 8))
    expect(page.locator(".msg.assistant")).not_to_have_class(re.compile("streaming"))
    expect(page.locator(".msg.user")).to_have_count(1)
    assert chat.sent[-1] == [{"role": "user", "content": [{"type": "text", "text": "A new question"}]}]
    assert page.is_hidden("#error")
    assert chat.errors == []


def test_a_refused_turn_is_taken_back_whole(gated, browser):
    from playwright.sync_api import expect

    url, engine = gated
    engine.gate.set()
    chat = ChatPage(browser, url)
    page = chat.page
    chat.setting("max-tokens", "50000")  # over the server's limit: refused with a 400
    chat.send("Hello there")
    expect(page.locator("#error")).to_contain_text("max_tokens=50000")
    expect(page.locator(".msg")).to_have_count(0)
    expect(page.locator("#empty-hint")).to_be_visible()
    expect(page.locator("#prompt")).to_have_value("Hello there")

    chat.setting("max-tokens", "8")
    page.click("#send")  # the same text, sent again
    expect(page.locator(".msg.assistant .text")).to_have_text(reply_of(engine, 8))
    expect(page.locator(".msg.user")).to_have_count(1)
    expect(page.locator("#error")).to_be_hidden()
    assert roles(chat.sent[-1]) == ["user"]
    assert chat.errors == []


def test_an_unreadable_image_is_named_and_not_attached(gated, browser):
    from playwright.sync_api import expect

    url, _ = gated
    chat = ChatPage(browser, url)
    page = chat.page
    page.set_input_files(
        "#file-input", files=[{"name": "fake.png", "mimeType": "image/png", "buffer": b"not a PNG"}]
    )
    expect(page.locator("#error")).to_have_text(
        "fake.png is not an image this browser can read (corrupt or unsupported format)."
    )
    expect(page.locator("#attachments .thumb")).to_have_count(0)
    assert chat.errors == []


def test_phone_screen_layout_and_stopped_meta(gated, browser):
    from playwright.sync_api import expect

    url, engine = gated
    engine.gate.set()
    chat = ChatPage(browser, url, viewport={"width": 390, "height": 844})
    page = chat.page
    height = lambda selector: page.locator(selector).bounding_box()["height"]  # noqa: E731
    assert height("#new-chat") == height("#toggle-settings")  # "New chat" on one line
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing sticks out sideways
    prompt = page.evaluate(
        "(() => { const p = document.getElementById('prompt'); return [p.scrollHeight, p.clientHeight]; })()"
    )
    assert prompt[0] <= prompt[1], f"the placeholder is clipped: {prompt}"

    # the bundled 32 x 39 px sample is shown big enough to see, with a border
    chat.setting("max-tokens", "8")
    page.set_input_files("#file-input", str(REPO / "src/pixtral/assets/sample.png"))
    chat.send("Name the colour of the square.")
    image = page.locator(".msg.user .images img")
    expect(image).to_have_count(1)
    box = image.bounding_box()
    assert box["width"] >= 64 and box["height"] >= 64, box
    assert image.evaluate("(img) => getComputedStyle(img).borderTopStyle") != "none"
    assert image.evaluate("(img) => parseFloat(getComputedStyle(img).borderTopWidth)") >= 1

    # a stopped answer still says how many tokens came and how fast
    expect(page.locator(".msg.assistant .meta")).to_contain_text("8 tokens")
    chat.setting("max-tokens", "2000")
    chat.send("Now a long story.")
    second = page.locator(".msg.assistant").nth(1)
    expect(second.locator(".text")).to_contain_text("hello world")
    page.click("#stop")
    expect(second.locator(".meta")).to_have_text(re.compile(r"^stopped · \d+ tokens · [\d.]+ tok/s$"))
    page.screenshot(path=str(artifact_dir() / "serve_chat_page_phone.png"), full_page=True)
    assert chat.errors == []
