"""One media policy (prompt/images.py: MediaPolicy) governs the CLI's, the Python API's and the server's
image sources: the same rule gives the same answer in both, the server only adds its status code."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from pixtral.errors import InputError
from pixtral.prompt.images import LOCAL_MEDIA, ImageLimits, MediaPolicy, MediaRefused, load_image
from pixtral.serve import ServeSettings, create_app
from pixtral.serve.media import media_policy
from pixtral.serve.media_guard import MediaFetchError
from tests.serve.fake_engine import FakeEngine
from tests.serve.serve_helpers import data_url, image_message, png_bytes

CHAT = "/v1/chat/completions"


def post_image(settings: ServeSettings, url: str):
    with TestClient(create_app(FakeEngine(), settings)) as client:
        return client.post(CHAT, json={"messages": [image_message(url)], "max_tokens": 1})


def test_cli_policy_reads_a_local_file_the_server_policy_refuses_with_a_4xx(tmp_path):
    path = tmp_path / "cat.png"
    path.write_bytes(png_bytes(12, 8))
    for source in (str(path), path.as_uri()):
        assert load_image(source, LOCAL_MEDIA).size == (12, 8)
        with pytest.raises(MediaRefused, match="local image files are disabled") as refused:
            load_image(source, media_policy(ServeSettings(access_log=False), None))
        assert refused.value.reason == "local_media_disabled"
        r = post_image(ServeSettings(access_log=False), source)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "local_media_disabled"
        assert "--allowed-local-media-path" in r.json()["error"]["message"]


def test_local_roots_are_checked_after_resolving_symlinks(tmp_path):
    allowed, outside = tmp_path / "media", tmp_path / "secret.png"
    allowed.mkdir()
    outside.write_bytes(png_bytes())
    (allowed / "in.png").write_bytes(png_bytes())
    (allowed / "link.png").symlink_to(outside)
    policy = MediaPolicy(local_roots=(allowed,))
    assert load_image(str(allowed / "in.png"), policy).size == (32, 24)
    for source in (str(outside), str(allowed / "link.png"), str(allowed / ".." / "secret.png")):
        with pytest.raises(MediaRefused, match="outside the directories") as refused:
            load_image(source, policy)
        assert refused.value.reason == "local_media_forbidden"


@pytest.mark.parametrize("n_bytes_over", [1, 1000])
def test_data_url_byte_limit_is_the_same_rule_in_the_cli_and_the_server(n_bytes_over):
    data = png_bytes(64, 64)
    url = data_url(data)
    limit = len(data) - n_bytes_over
    with pytest.raises(InputError, match="MiB limit"):
        load_image(url, MediaPolicy(ImageLimits(max_bytes=limit)))
    assert load_image(url, MediaPolicy(ImageLimits(max_bytes=len(data)))).size == (64, 64)
    r = post_image(ServeSettings(access_log=False, max_image_bytes=limit), url)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_image"
    assert "MiB limit" in r.json()["error"]["message"]
    assert post_image(ServeSettings(access_log=False, max_image_bytes=len(data)), url).status_code == 200


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("data:text/plain;base64,aGVsbG8=", "invalid_image"),
        ("ftp://example.com/x.png", "invalid_image"),
        ("gopher://example.com/x.png", "invalid_image"),
        ("https://example.com/x.png", "remote_media_disabled"),
    ],
)
def test_refusals_are_the_same_for_both_policies(url, reason):
    for policy in (LOCAL_MEDIA, media_policy(ServeSettings(access_log=False), None)):
        with pytest.raises(MediaRefused) as refused:
            load_image(url, policy)
        assert refused.value.reason == reason
    r = post_image(ServeSettings(access_log=False), url)
    assert r.status_code == 400 and r.json()["error"]["code"] == reason


def test_a_windows_drive_letter_is_a_path_not_a_scheme():
    with pytest.raises(InputError, match="does not exist"):
        load_image("C:\\no\\such\\picture.png", LOCAL_MEDIA)
    with pytest.raises(MediaRefused, match="local image files are disabled"):
        load_image("C:\\no\\such\\picture.png", MediaPolicy(local_roots=()))


def test_the_policy_names_its_schemes_and_what_to_send():
    def fetch(url: str) -> bytes:
        raise MediaFetchError("refusing to fetch from '10.0.0.1': a private address")

    assert LOCAL_MEDIA.schemes == {"data", "file", ""}
    server = media_policy(ServeSettings(access_log=False), fetch)
    assert server.schemes == {"data", "http", "https"}
    assert "local path" not in server.accepted() and "http(s)://" in server.accepted()
    with pytest.raises(MediaRefused, match="refusing to fetch") as refused:  # the fetcher's own refusal
        load_image("http://10.0.0.1/x.png", server)
    assert refused.value.reason == "remote_media_refused"
