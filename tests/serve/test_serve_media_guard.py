"""SSRF guard: every refusal happens BEFORE a connection is attempted.

No test here reaches anything but 127.0.0.1: DNS is mocked, and the guard's inner network backend is
replaced by one that records every connection and routes the one "public" test address to a local server.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpcore
import pytest
from fastapi.testclient import TestClient

from pixtral.serve import ServeSettings, create_app
from pixtral.serve.media_guard import (
    BlockedAddressError,
    MediaFetchError,
    RemoteMediaFetcher,
    blocked_reason,
)
from tests.serve.fake_engine import FakeEngine
from tests.serve.serve_helpers import image_message, png_bytes

PUBLIC_IP = "93.184.216.34"  # never contacted: the recording backend routes it to the local server
PNG = png_bytes(16, 16)


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802
        port = self.server.server_address[1]
        routes = {
            "/redirect-loopback": f"http://127.0.0.1:{port}/img.png",
            "/redirect-v6": "http://[::1]/img.png",
            "/redirect-metadata": "http://169.254.169.254/latest/meta-data/",
            "/redirect-private-host": "http://intranet.example/img.png",
            "/redirect-ok": "/img.png",
            "/redirect-loop": "/redirect-loop",
            "/redirect-file": "file:///etc/passwd",
        }
        if self.path in routes:
            self.send_response(302)
            self.send_header("Location", routes[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif self.path == "/img.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)
        elif self.path == "/big":
            self.send_response(200)
            self.end_headers()  # no Content-Length: the cap must hold while streaming
            for _ in range(64):
                self.wfile.write(b"\0" * 65536)
        elif self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(1000):
                self.wfile.write(b"\0")
                self.wfile.flush()
                time.sleep(0.01)
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()


@pytest.fixture(scope="module")
def local_http():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


class RecordingBackend(httpcore.NetworkBackend):
    """Records every connection the guard lets through; only PUBLIC_IP is routed (to 127.0.0.1)."""

    def __init__(self, local_port: int | None):
        self.local_port = local_port
        self.connections: list[tuple[str, int]] = []
        self.inner = httpcore.SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        self.connections.append((host, port))
        if host != PUBLIC_IP or self.local_port is None:
            raise AssertionError(f"the guard let a connection to {host}:{port} through")
        return self.inner.connect_tcp("127.0.0.1", self.local_port, timeout, local_address, socket_options)


DNS = {
    "images.example": [PUBLIC_IP],
    "loopback.example": ["127.0.0.1"],
    "intranet.example": ["10.0.0.5"],
    "mixed.example": [PUBLIC_IP, "192.168.0.10"],  # one private record is enough to refuse
    "v6loop.example": ["::1"],
    "mapped.example": ["::ffff:169.254.169.254"],
    "meta.example": ["169.254.169.254"],
}


def fake_resolver(host: str, port: int) -> list[str]:
    if host not in DNS:
        raise MediaFetchError(f"cannot resolve host {host!r}")
    return DNS[host]


def make_fetcher(port=None, **kwargs) -> tuple[RemoteMediaFetcher, RecordingBackend]:
    backend = RecordingBackend(port)
    kwargs.setdefault("max_bytes", 1 << 20)
    kwargs.setdefault("timeout_s", 5.0)
    fetcher = RemoteMediaFetcher(resolver=fake_resolver, inner_backend=backend, **kwargs)
    return fetcher, backend


SSRF_URLS = [
    "http://127.0.0.1/",
    "http://127.1.2.3:8080/x.png",
    "http://[::1]/x.png",
    "http://[::ffff:127.0.0.1]/x.png",
    "http://10.0.0.1/x.png",
    "http://10.255.255.255/x.png",
    "http://172.16.0.1/x.png",
    "http://172.31.255.254/x.png",
    "http://192.168.0.1/x.png",
    "http://192.168.255.255/x.png",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fd00:ec2::254]/latest/meta-data/",
    "http://100.100.100.200/",
    "http://168.63.129.16/",
    "http://0.0.0.0/",
    "http://[::]/",
    "http://224.0.0.1/",
    "http://[fe80::1]/",
    "http://100.64.0.1/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "https://loopback.example/x.png",
    "http://intranet.example/x.png",
    "http://mixed.example/x.png",
    "http://v6loop.example/x.png",
    "http://mapped.example/x.png",
    "http://meta.example/x.png",
]


@pytest.mark.parametrize("url", SSRF_URLS)
def test_ssrf_targets_refused_before_connecting(url):
    fetcher, backend = make_fetcher()
    with pytest.raises(BlockedAddressError, match="refusing to fetch"):
        fetcher(url)
    assert backend.connections == []


@pytest.mark.parametrize(
    "path", ["/redirect-loopback", "/redirect-v6", "/redirect-metadata", "/redirect-private-host"]
)
def test_redirect_to_internal_address_refused_before_connecting(local_http, path):
    fetcher, backend = make_fetcher(local_http)
    with pytest.raises(BlockedAddressError):
        fetcher(f"http://images.example{path}")
    assert backend.connections == [(PUBLIC_IP, 80)]  # only the first, public hop


def test_redirect_to_other_scheme_and_loops_refused(local_http):
    fetcher, _ = make_fetcher(local_http)
    with pytest.raises(MediaFetchError, match="only http and https"):
        fetcher("http://images.example/redirect-file")
    with pytest.raises(MediaFetchError, match="too many redirects"):
        fetcher("http://images.example/redirect-loop")


def test_public_fetch_works_and_follows_safe_redirects(local_http):
    fetcher, backend = make_fetcher(local_http)
    assert fetcher("http://images.example/img.png") == PNG
    assert fetcher("http://images.example/redirect-ok") == PNG
    assert {c[0] for c in backend.connections} == {PUBLIC_IP}


def test_size_time_status_and_allow_list_caps(local_http):
    fetcher, _ = make_fetcher(local_http, max_bytes=100_000)
    with pytest.raises(MediaFetchError, match="larger than the limit"):
        fetcher("http://images.example/big")
    with pytest.raises(MediaFetchError, match="HTTP 404"):
        fetcher("http://images.example/missing")
    fetcher, _ = make_fetcher(local_http, timeout_s=0.5)
    t0 = time.monotonic()
    with pytest.raises(MediaFetchError, match="longer than"):
        fetcher("http://images.example/slow")
    assert time.monotonic() - t0 < 3
    fetcher, backend = make_fetcher(local_http, allowed_domains=("cdn.example",))
    with pytest.raises(MediaFetchError, match="not in the allowed media domains"):
        fetcher("http://images.example/img.png")
    assert backend.connections == []
    for bad in ("ftp://images.example/x", "http://user:pw@images.example/x", "gopher://x/"):
        with pytest.raises(MediaFetchError):
            fetcher(bad)


def test_blocked_reason_accepts_only_public_unicast():
    assert blocked_reason("8.8.8.8") is None
    assert blocked_reason("2606:4700:4700::1111") is None
    for address in (
        "127.0.0.1",
        "::1",
        "10.1.1.1",
        "172.20.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "0.0.0.0",
        "::",
        "224.0.0.251",
        "ff02::1",
        "fe80::1",
        "fc00::1",
        "::ffff:10.0.0.1",
        "2002:a00::1",
        "240.0.0.1",
        "255.255.255.255",
        "198.18.0.1",
    ):
        assert blocked_reason(address) is not None, address


def test_server_refuses_ssrf_with_a_clear_400_and_serves_public_images(local_http):
    fetcher, backend = make_fetcher(local_http)
    settings = ServeSettings(access_log=False, allow_remote_media=True)
    app = create_app(FakeEngine(), settings, fetcher=fetcher)
    with TestClient(app) as client:
        for url in (
            "http://127.0.0.1/x.png",
            "http://[::1]/x.png",
            "http://169.254.169.254/",
            "http://loopback.example/x.png",
            "http://images.example/redirect-loopback",
        ):
            r = client.post("/v1/chat/completions", json={"messages": [image_message(url)], "max_tokens": 1})
            assert r.status_code == 400, r.text
            assert r.json()["error"]["code"] == "remote_media_refused"
            assert "refusing to fetch" in r.json()["error"]["message"]
        r = client.post(
            "/v1/chat/completions",
            json={"messages": [image_message("http://images.example/img.png")], "max_tokens": 1},
        )
        assert r.status_code == 200, r.text
    assert {c[0] for c in backend.connections} == {PUBLIC_IP}


def test_remote_media_is_off_by_default():
    with TestClient(create_app(FakeEngine(), ServeSettings(access_log=False))) as client:
        r = client.post(
            "/v1/chat/completions", json={"messages": [image_message("http://images.example/a.png")]}
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "remote_media_disabled"
