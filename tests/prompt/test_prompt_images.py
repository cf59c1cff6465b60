"""load_image: every source kind, limits checked before decoding, clear InputErrors."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from pixtral.errors import InputError
from pixtral.prompt.images import ImageLimits, MediaPolicy, load_image
from pixtral.serve.media import image_limits
from pixtral.serve.settings import ServeSettings
from tests.prompt.prompt_helpers import data_url, encode, noise_image, png_declaring


@pytest.fixture
def no_decoding(monkeypatch):
    """Fail the test if a PNG's pixel data is decoded."""

    def refuse(self):
        raise AssertionError("the image was decoded before its size was checked")

    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", refuse)


def test_sources_load_the_same_pixels(tmp_path):
    image = noise_image(23, 11, "RGBA")
    data = encode(image)
    path = tmp_path / "a b.png"  # the space must survive the file:// URL
    path.write_bytes(data)
    for source in [data, bytearray(data), data_url(data), str(path), path, path.as_uri(), image]:
        loaded = load_image(source)
        assert loaded.size == (23, 11) and loaded.mode == "RGBA"
        assert np.array_equal(np.asarray(loaded), np.asarray(image))


def test_remote_url_goes_through_the_fetcher():
    data = encode(noise_image(5, 7))
    asked = []
    loaded = load_image(
        "https://example.com/x.png", MediaPolicy(fetch_remote=lambda url: asked.append(url) or data)
    )
    assert asked == ["https://example.com/x.png"] and loaded.size == (5, 7)


@pytest.mark.parametrize(
    "url", ["https://example.com/x.png", "http://10.0.0.1/x.jpg", "HTTP://EXAMPLE.COM/x"]
)
def test_remote_url_without_fetcher_is_refused(url):
    with pytest.raises(InputError, match="remote image URLs are disabled"):
        load_image(url)


def test_decompression_bomb_is_refused_before_decoding(no_decoding):
    bomb = png_declaring(8000, 8000)  # 64 MP > 50 MP default, below PIL's own warning threshold
    assert len(bomb) < 100
    with pytest.raises(
        InputError, match=r"8000x8000 = 64,000,000 pixels, more than the 50,000,000 pixel limit"
    ):
        load_image(bomb)
    with pytest.raises(InputError, match="pixel"):
        load_image(data_url(bomb))


def test_enormous_header_is_refused(no_decoding):
    with pytest.raises(InputError, match="pixels"):
        load_image(png_declaring(100_000, 100_000))


def test_pixel_limit_is_configurable():
    data = encode(noise_image(11, 10))
    with pytest.raises(InputError, match="110 pixels, more than the 100 pixel limit"):
        load_image(data, MediaPolicy(ImageLimits(max_pixels=100)))
    assert load_image(data, MediaPolicy(ImageLimits(max_pixels=110))).size == (11, 10)


def test_pil_images_are_not_held_to_the_encoded_data_limits():
    # whoever decoded the image (e.g. the server, under its own limits) has already accepted its size
    tiny = ImageLimits(max_bytes=1, max_pixels=1, allowed_formats=frozenset({"PNG"}))
    assert load_image(noise_image(11, 10), MediaPolicy(tiny)).size == (11, 10)
    with pytest.raises(InputError, match="no pixels"):
        load_image(Image.new("RGB", (0, 3)))


def test_limits_are_validated_and_format_names_normalised():
    assert ImageLimits(allowed_formats=frozenset({"png", "Jpeg"})).allowed_formats == {"PNG", "JPEG"}
    with pytest.raises(ValueError, match="positive"):
        ImageLimits(max_pixels=0)


def test_byte_limit_is_checked_for_every_source(tmp_path):
    data = encode(noise_image(64, 64))
    limits = ImageLimits(max_bytes=len(data) - 1)
    path = tmp_path / "big.png"
    path.write_bytes(data)
    for source in [data, data_url(data), str(path), lambda: None]:
        if callable(source):
            source = "https://example.com/big.png"
        with pytest.raises(InputError, match="more than the .* MiB limit"):
            load_image(source, MediaPolicy(limits, fetch_remote=lambda url: data))
    assert load_image(data, MediaPolicy(ImageLimits(max_bytes=len(data)))).size == (64, 64)


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP"])
def test_truncated_file_is_refused_at_load_time(image_format):
    data = encode(noise_image(300, 200), image_format)
    with pytest.raises(InputError, match="truncated"):
        load_image(data[: len(data) // 2])


def test_non_image_data_url_is_refused():
    with pytest.raises(InputError, match="not an image"):
        load_image("data:text/plain;base64," + base64.b64encode(b"hello, world").decode())


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("data:image/png;base64,@@@not base64@@@", "invalid base64"),
        ("data:image/png;base64,iVBORw0KGgo", "invalid base64"),  # bad padding
        ("data:image/png,%89PNG", "not base64-encoded"),
        ("data:image/png;base64", "no ','"),
        ("data:image/png;base64,", "empty"),
    ],
)
def test_bad_data_urls_are_refused(url, message):
    with pytest.raises(InputError, match=message):
        load_image(url)


def test_data_url_with_line_breaks_is_accepted():
    url = data_url(encode(noise_image(9, 9)))
    header, payload = url.split(",")
    wrapped = "\n".join(payload[i : i + 76] for i in range(0, len(payload), 76))
    assert load_image(f"{header},{wrapped}").size == (9, 9)


@pytest.mark.parametrize("image_format", ["PPM", "ICO", "TGA"])
def test_formats_outside_the_allowed_list_are_refused(image_format):
    with pytest.raises(
        InputError, match=f"is a {image_format} image; allowed formats are BMP, GIF, JPEG, PNG, TIFF, WEBP"
    ):
        load_image(encode(noise_image(16, 16), image_format))


def test_allowed_formats_are_configurable():
    jpeg = encode(noise_image(16, 16), "JPEG")
    with pytest.raises(InputError, match="is a JPEG image; allowed formats are PNG"):
        load_image(jpeg, MediaPolicy(ImageLimits(allowed_formats=frozenset({"PNG"}))))


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"])
def test_default_formats_load(image_format):
    assert load_image(encode(noise_image(16, 8), image_format)).size == (16, 8)


def test_exif_orientation_is_left_alone():
    exif = Image.Exif()
    exif[0x0112] = 8  # "rotate 90° counter-clockwise to display"
    loaded = load_image(encode(noise_image(40, 20), "JPEG", exif=exif.tobytes()))
    assert loaded.size == (40, 20) and loaded.getexif()[0x0112] == 8


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("/no/such/picture.png", "does not exist"),
        ("file:///no/such/picture.png", "does not exist"),
        ("ftp://example.com/a.png", "unsupported image URL scheme 'ftp'"),
        ("", "empty"),
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n not really", "not a readable image"),
        (12, "not int"),
    ],
)
def test_unreadable_sources_are_refused(source, message):
    with pytest.raises(InputError, match=message):
        load_image(source)


def test_directory_is_refused(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        load_image(str(tmp_path))


def test_unreadable_image_message_names_the_source_not_a_python_object(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")
    for source, what in [(str(notes), "notes.txt"), (b"plain text", "the image data"),
                         ("data:image/png;base64," + base64.b64encode(b"text").decode(), "the data: URL")]:  # fmt: skip
        with pytest.raises(InputError) as refused:
            load_image(source)
        message = str(refused.value)
        assert what in message and "not a readable image" in message
        assert "BytesIO" not in message and " at 0x" not in message


def test_local_file_is_bounded_by_pixels_not_bytes(tmp_path):
    path = tmp_path / "scan.bmp"
    Image.new("RGB", (3000, 2400), "white").save(path)  # uncompressed: 21.6 MB, 7.2 M pixels
    assert path.stat().st_size > 20 * 1024 * 1024
    assert load_image(str(path)).size == (3000, 2400)  # the CLI's, the engine's and the Python API's default
    with pytest.raises(InputError, match="more than the 20.0 MiB limit"):  # a server keeps its byte limit
        load_image(str(path), MediaPolicy(image_limits(ServeSettings())))
    with pytest.raises(InputError, match="pixel limit"):
        load_image(str(path), MediaPolicy(ImageLimits(max_pixels=1_000_000)))
