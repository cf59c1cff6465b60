"""encode_chat == mistral-common called directly, and the spec's verified vectors (§4 table, §5.2 examples)."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from mistral_common.protocol.instruct.chunk import ImageURLChunk, TextChunk
from mistral_common.protocol.instruct.messages import AssistantMessage, SystemMessage, UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from PIL import Image

from pixtral.errors import InputError
from pixtral.prompt.chat import EncodedPrompt, encode_chat
from pixtral.prompt.images import DEFAULT_LIMITS, ImageLimits, MediaPolicy, MediaRefused
from tests.prompt.prompt_helpers import data_url, encode, noise_image

BOS, EOS, INST, END_INST, IMG, IMG_BREAK, IMG_END = 1, 2, 3, 4, 10, 12, 13


def reference(tokenizer, messages):
    """mistral-common on a hand-built request; images go in as data: URLs that mistral-common opens itself."""
    tokenized = tokenizer.encode_chat_completion(ChatCompletionRequest(messages=messages))
    return tokenized.tokens, tokenized.images


def assert_same(ours: EncodedPrompt, theirs) -> None:
    tokens, images = theirs
    assert ours.token_ids == tokens
    assert len(ours.images) == len(images)
    for mine, ref in zip(ours.images, images, strict=True):
        assert mine.dtype == np.float32 and mine.shape == ref.shape
        assert np.array_equal(mine, ref)


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def single_image_parity(tokenizer, url: str, limits: ImageLimits = DEFAULT_LIMITS) -> EncodedPrompt:
    ours = encode_chat(
        [{"role": "user", "content": [image_part(url), {"type": "text", "text": "What is this?"}]}],
        tokenizer,
        media=MediaPolicy(limits=limits),
    )
    theirs = reference(
        tokenizer, [UserMessage(content=[ImageURLChunk(image_url=url), TextChunk(text="What is this?")])]
    )
    assert_same(ours, theirs)
    return ours


# docs/architecture.md, "Image preprocessing": input (W, H) -> resized (W, H), total tokens, [IMG] count   [verified with MC 1.13.1]
SIZE_TABLE = [
    ((1024, 1024), (1024, 1024), 4160, 4096),
    ((2048, 1024), (1024, 512), 2080, 2048),
    ((1000, 500), (1008, 512), 2048, 2016),
    ((640, 480), (640, 480), 1230, 1200),
    ((1920, 1080), (1024, 576), 2340, 2304),
    ((1500, 100), (1024, 80), 325, 320),
    ((3000, 2), (1024, 16), 65, 64),
    ((17, 17), (32, 32), 6, 4),
    ((16, 16), (16, 16), 2, 1),
    ((40, 20), (48, 32), 8, 6),
]


@pytest.mark.parametrize(("size", "resized", "n_tokens", "n_img"), SIZE_TABLE, ids=lambda v: str(v))
def test_size_table_matches_spec_and_mistral_common(tokenizer, size, resized, n_tokens, n_img):
    ours = single_image_parity(tokenizer, data_url(encode(noise_image(*size))))
    (image,) = ours.images
    assert image.shape == (3, resized[1], resized[0])
    block = ours.token_ids[2 : 2 + n_tokens]  # <s>[INST] then the image first
    assert block.count(IMG) == n_img and block[-1] == IMG_END
    assert block.count(IMG_BREAK) == n_tokens - n_img - 1
    assert ours.token_ids[2 + n_tokens :].count(IMG) == 0


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "1"])
def test_colour_modes_match_mistral_common(tokenizer, mode):
    image = noise_image(67, 45, mode, seed=1)
    assert image.mode == mode
    single_image_parity(tokenizer, data_url(encode(image)))


def test_palette_with_transparency_matches_mistral_common(tokenizer):
    image = noise_image(50, 30, "P", seed=2)
    data = encode(image, transparency=int(np.asarray(image)[0, 0]))
    assert Image.open(io.BytesIO(data)).info.get("transparency") is not None
    single_image_parity(tokenizer, data_url(data))


@pytest.mark.parametrize("image_format", ["JPEG", "TIFF"])
def test_cmyk_matches_mistral_common(tokenizer, image_format):
    data = encode(noise_image(40, 33, "CMYK", seed=3), image_format)
    single_image_parity(tokenizer, data_url(data, f"image/{image_format.lower()}"))


@pytest.mark.parametrize("size", [(1, 5000), (5000, 1)])
def test_extreme_aspect_ratios_match_mistral_common(tokenizer, size):
    ours = single_image_parity(tokenizer, data_url(encode(noise_image(*size, seed=4))))
    assert ours.images[0].shape[1:] in ((1024, 16), (16, 1024))


@pytest.mark.slow
def test_8000x8000_matches_mistral_common(tokenizer):
    data = encode(Image.new("RGB", (8000, 8000), (12, 200, 31)), compress_level=1)
    ours = single_image_parity(tokenizer, data_url(data), ImageLimits(max_pixels=64_000_000))
    assert ours.images[0].shape == (3, 1024, 1024)


def test_white_pixel_normalises_to_spec_value(tokenizer):
    url = data_url(encode(Image.new("RGB", (16, 16), "white")))
    (image,) = encode_chat([{"role": "user", "content": [image_part(url)]}], tokenizer).images
    expected = np.array([1.9303, 2.0749, 2.1459], dtype=np.float32)[:, None, None]
    np.testing.assert_allclose(image, np.broadcast_to(expected, image.shape), atol=1e-4)


def test_transparent_pixels_become_white(tokenizer):
    url = data_url(encode(Image.new("RGBA", (16, 16), (0, 0, 0, 0))))
    transparent = encode_chat([{"role": "user", "content": [image_part(url)]}], tokenizer).images[0]
    url = data_url(encode(Image.new("RGB", (16, 16), "white")))
    white = encode_chat([{"role": "user", "content": [image_part(url)]}], tokenizer).images[0]
    assert np.array_equal(transparent, white)


def test_spec_worked_example_with_images(tokenizer):
    wide = data_url(encode(noise_image(40, 20)))
    tall = data_url(encode(noise_image(20, 40, "RGBA")))
    messages = [
        {"role": "system", "content": "You are helpful."},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe"},
                image_part(wide),
                {"type": "text", "text": "and"},
                image_part(tall),
            ],
        },
        {"role": "assistant", "content": "A blue box and a white box."},
        {"role": "user", "content": [{"type": "text", "text": "What colour?"}, image_part(wide)]},
    ]
    # fmt: off
    expected = [1, 3, 5847, 13089, 10, 10, 10, 12, 10, 10, 10, 13, 1421, 10, 10, 12, 10, 10, 12, 10, 10, 13, 4,
                1065, 10991, 7616, 1321, 1261, 7496, 7616, 1046, 2, 3, 4568, 1584, 20351, 1338,
                10, 10, 10, 12, 10, 10, 10, 13, 7493, 22526, 1063, 4]
    # fmt: on
    ours = encode_chat(messages, tokenizer)
    assert ours.token_ids == expected
    assert [image.shape for image in ours.images] == [(3, 32, 48), (3, 48, 32), (3, 32, 48)]


def test_spec_worked_example_text_only(tokenizer):
    messages = [
        {"role": "system", "content": "SYS"},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Bye"},
    ]
    ours = encode_chat(messages, tokenizer)
    assert ours.token_ids == [1, 3, 37133, 4, 22177, 1033, 2, 3, 1083, 61300, 1267, 3606, 1101, 4]
    assert ours.images == []


def test_multi_turn_multi_image_system_prompt_matches_mistral_common(tokenizer):
    urls = [
        data_url(encode(noise_image(w, h, seed=i))) for i, (w, h) in enumerate([(90, 30), (33, 70), (64, 64)])
    ]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": [{"type": "text", "text": "Answer in English."}]},
        {
            "role": "user",
            "content": [image_part(urls[0]), {"type": "text", "text": "first"}, image_part(urls[1])],
        },
        {"role": "assistant", "content": [{"type": "text", "text": "Two shapes.  "}]},
        {"role": "user", "content": "and now?"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "Hmm."},
        {"role": "user", "content": [{"type": "text", "text": "last"}, image_part(urls[2])]},
    ]
    theirs = reference(
        tokenizer,
        [
            SystemMessage(content="Be brief."),
            SystemMessage(content=[TextChunk(text="Answer in English.")]),
            UserMessage(
                content=[
                    ImageURLChunk(image_url=urls[0]),
                    TextChunk(text="first"),
                    ImageURLChunk(image_url=urls[1]),
                ]
            ),
            AssistantMessage(content=[TextChunk(text="Two shapes.  ")]),
            UserMessage(content="and now?"),
            UserMessage(content=[TextChunk(text="a"), TextChunk(text="b")]),
            AssistantMessage(content="Hmm."),
            UserMessage(content=[TextChunk(text="last"), ImageURLChunk(image_url=urls[2])]),
        ],
    )
    ours = encode_chat(messages, tokenizer)
    assert_same(ours, theirs)
    assert len(ours.images) == 3 and ours.token_ids.count(IMG_END) == 3


def test_trailing_image_moves_first_but_other_orders_are_kept(tokenizer):
    url = data_url(encode(noise_image(16, 16)))
    hello = tokenizer.instruct_tokenizer.tokenizer.encode("Hello", bos=False, eos=False)
    moved = encode_chat(
        [{"role": "user", "content": [{"type": "text", "text": "Hello"}, image_part(url)]}], tokenizer
    )
    assert moved.token_ids == [BOS, INST, IMG, IMG_END, *hello, END_INST]
    kept = encode_chat(
        [{"role": "user", "content": [image_part(url), {"type": "text", "text": "Hello"}, image_part(url)]}],
        tokenizer,
    )
    assert kept.token_ids == [BOS, INST, IMG, IMG_END, *hello, IMG, IMG_END, END_INST]


def test_every_image_source_gives_the_same_prompt(tokenizer, tmp_path):
    image = noise_image(37, 21, "RGBA", seed=5)
    data = encode(image)
    path = tmp_path / "picture.png"
    path.write_bytes(data)
    sources = [
        image_part(data_url(data)),
        image_part(str(path)),
        image_part(path.as_uri()),
        {"type": "image", "image": data},
        {"type": "image", "image": path},
        {"type": "image", "image": str(path)},
        {"type": "image", "image": Image.open(path)},
        {"type": "image_url", "image_url": "data:image/png;base64," + data_url(data).split(",")[1]},
        image_part("https://example.com/picture.png"),
    ]
    prompts = [
        encode_chat(
            [{"role": "user", "content": [source, {"type": "text", "text": "hi"}]}],
            tokenizer,
            media=MediaPolicy(fetch_remote=lambda url: data),
        )
        for source in sources
    ]
    for prompt in prompts[1:]:
        assert prompt.token_ids == prompts[0].token_ids
        assert np.array_equal(prompt.images[0], prompts[0].images[0])


def test_exif_orientation_is_not_applied(tokenizer):
    image = noise_image(40, 20, seed=6)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    url = data_url(encode(image, "JPEG", exif=exif.tobytes()), "image/jpeg")
    ours = single_image_parity(tokenizer, url)
    assert ours.images[0].shape == (3, 32, 48)  # still 40 wide, 20 tall


def test_conversation_may_end_with_system_messages_after_the_user(tokenizer):
    messages = [{"role": "user", "content": "hi"}, {"role": "system", "content": "S"}]
    ours = encode_chat(messages, tokenizer)
    theirs = reference(tokenizer, [UserMessage(content="hi"), SystemMessage(content="S")])
    assert_same(ours, theirs)
    assert ours.token_ids[-1] == END_INST


BAD_CONVERSATIONS = [
    ([], "empty"),
    ({"role": "user", "content": "hi"}, "list"),
    ([{"role": "user", "content": "hi"}, "hello"], "message 1"),
    ([{"role": "robot", "content": "hi"}], "message 0 has role 'robot'"),
    ([{"role": "tool", "content": "hi"}], "message 0 (tool) needs a tool call id"),
    ([{"role": "user"}], "message 0 (user) has no 'content'"),
    ([{"role": "user", "content": 5}], "message 0 (user) content must be"),
    ([{"role": "user", "content": None}], "message 0 (user) content must be"),
    ([{"role": "user", "content": ["hi"]}], "message 0 (user) part 0"),
    (
        [
            {"role": "user", "content": "hi"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "audio"}]},
        ],
        "message 1 (user) part 1 has type 'audio'",
    ),
    ([{"role": "user", "content": [{"type": "text"}]}], "message 0 (user) part 0 is a text part"),
    (
        [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}],
        "message 0 (user) part 0 needs",
    ),
    ([{"role": "user", "content": [{"type": "image"}]}], "message 0 (user) part 0 needs 'image'"),
    (
        [
            {
                "role": "user",
                "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}],
            }
        ],
        "message 0 (user) part 0: the data: URL",
    ),
    (
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "image", "image": Image.new("RGB", (4, 4))}]},
            {"role": "user", "content": "hi"},
        ],
        "message 1 (assistant) part 0 is an image: images are only allowed in user messages",
    ),
    (
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure"}],
        "message 1 is from the assistant",
    ),
    (
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "x"},
            {"role": "system", "content": "s"},
        ],
        "message 1 is from the assistant",
    ),
    (
        [{"role": "assistant", "content": "x"}, {"role": "assistant", "content": "y"}],
        "message 1 is from the assistant",
    ),
]


@pytest.mark.parametrize(("messages", "message"), BAD_CONVERSATIONS, ids=lambda v: str(v)[:40])
def test_bad_conversations_raise_input_error_naming_the_culprit(tokenizer, messages, message):
    with pytest.raises(InputError, match=re.escape(message)):
        encode_chat(messages, tokenizer)


def test_remote_image_without_fetcher_is_refused(tokenizer):
    with pytest.raises(InputError, match="message 0 .user. part 0: remote image URLs are disabled"):
        encode_chat([{"role": "user", "content": [image_part("https://example.com/a.png")]}], tokenizer)


def test_structure_is_checked_before_any_image_is_fetched(tokenizer):
    def fetch(url: str) -> bytes:
        raise AssertionError(f"fetched {url} for a conversation that was going to be refused")

    messages = [
        {"role": "user", "content": [image_part("https://example.com/a.png")]},
        {"role": "assistant", "content": "Sure"},
    ]
    with pytest.raises(InputError, match="message 1 is from the assistant"):
        encode_chat(messages, tokenizer, media=MediaPolicy(fetch_remote=fetch))


def test_unreadable_image_error_names_message_and_part(tokenizer, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image\n")
    messages = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": [{"type": "text", "text": "Look:"}, image_part(str(notes))]},
    ]
    with pytest.raises(InputError) as refused:
        encode_chat(messages, tokenizer)
    message = str(refused.value)
    assert message.startswith("message 2 (user) part 1: the image file") and "notes.txt" in message
    assert "BytesIO" not in message and " at 0x" not in message


def test_a_policy_refusal_keeps_its_reason_and_names_the_part(tokenizer, tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(path)
    messages = [{"role": "user", "content": [{"type": "text", "text": "hi"}, image_part(str(path))]}]
    assert encode_chat(messages, tokenizer).images  # the default (the CLI's) policy reads local files
    with pytest.raises(MediaRefused, match="message 0 .user. part 1: local image files are disabled") as e:
        encode_chat(messages, tokenizer, media=MediaPolicy(local_roots=()))
    assert e.value.reason == "local_media_disabled"
