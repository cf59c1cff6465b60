"""Data: the loss mask covers exactly the assistant tokens; truncation never cuts an image block, so the
[IMG] count always equals the patch count; readable errors for bad data."""

from __future__ import annotations

import json

import pytest
import torch

from pixtral.model.pixtral import Pixtral
from pixtral.prompt.chat import encode_chat
from pixtral.prompt.tokenizer import packaged_tokenizer
from pixtral.train.data import (
    DataError,
    SpecialIds,
    encode_conversation,
    fit_to_context,
    image_blocks,
    load_dataset,
    read_records,
)
from pixtral.train.packing import IGNORE, collate
from tests.train.train_helpers import image, write_image


@pytest.fixture(scope="module")
def tok():
    return packaged_tokenizer()


@pytest.fixture(scope="module")
def sp(tok):
    return SpecialIds.of(tok)


def multi_turn(folder):
    a = write_image(folder / "images", "a", (48, 32), (200, 30, 30))
    b = write_image(folder / "images", "b", (16, 64), (30, 30, 200))
    c = write_image(folder / "images", "c", (32, 32), (30, 200, 30))
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Compare"},
                image(a),
                {"type": "text", "text": "and"},
                image(b),
            ],
        },
        {"role": "assistant", "content": "The first is red, the second blue. "},
        {"role": "user", "content": [image(c), {"type": "text", "text": "And this one?"}]},
        {"role": "assistant", "content": "Green."},
        {"role": "user", "content": "Thanks!"},
        {"role": "assistant", "content": [{"type": "text", "text": "You are welcome."}]},
    ]


def test_loss_mask_is_exactly_the_assistant_tokens_of_a_multi_turn_multi_image_sample(tmp_path, tok, sp):
    messages = multi_turn(tmp_path)
    from pixtral.train.data import Record

    sample, images = encode_conversation(Record(messages, "t", tmp_path), tok)
    assert len(images) == 3 and sample.n_images == 3
    ids, mask = sample.token_ids, sample.loss_mask
    # Oracle: mistral-common (serving mode, through pixtral.prompt) encodes each prefix that ends with a user
    # turn; the assistant's tokens start right after it. No system prompt here, so prefixes are prefixes.
    expected = [False] * len(ids)
    resolved = [
        {
            **m,
            "content": [
                {**p, "image_url": {"url": str(tmp_path / p["image_url"]["url"])}}
                if p["type"] == "image_url"
                else p
                for p in m["content"]
            ],
        }
        if isinstance(m["content"], list) and m["role"] == "user"
        else m
        for m in messages
    ]
    for k, m in enumerate(resolved):
        if m["role"] != "assistant":
            continue
        start = len(encode_chat(resolved[:k], tok).token_ids)
        text = m["content"] if isinstance(m["content"], str) else m["content"][0]["text"]
        answer = tok.instruct_tokenizer.tokenizer.encode(text.rstrip(" "), bos=False, eos=False) + [sp.eos]
        assert ids[start : start + len(answer)] == answer
        for t in range(start, start + len(answer)):
            expected[t] = True
    assert mask == expected
    assert sum(mask) == sum(expected) > 10
    # Nothing inside image blocks, user turns or control tokens other than </s> is learned.
    assert not any(
        mask[t]
        for t, i in enumerate(ids)
        if i in (sp.image, sp.image_break, sp.image_end, sp.end_inst, sp.bos)
    )
    # The labels a batch trains on are the masked tokens, shifted by one.
    from types import SimpleNamespace

    ds = SimpleNamespace(samples=[sample], images=lambda i: images, special=sp)
    batch = collate([[0]], ds, 11, 16, packed=False)
    labels = batch.labels[0].tolist()
    assert [labels[t - 1] for t in range(1, len(ids)) if mask[t]] == [
        i for i, m in zip(ids, mask, strict=True) if m
    ]
    assert sum(1 for x in labels if x != IGNORE) == sum(mask)


def test_weight_zero_and_system_prompt(tmp_path, tok, sp):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!", "weight": 0},
        {"role": "user", "content": "Bye"},
        {"role": "assistant", "content": "Bye!"},
    ]
    sample, _ = encode_conversation(messages, tok)
    learned = [i for i, m in zip(sample.token_ids, sample.loss_mask, strict=True) if m]
    assert learned == tok.instruct_tokenizer.tokenizer.encode("Bye!", bos=False, eos=False) + [sp.eos]
    text = tok.instruct_tokenizer.tokenizer.decode(sample.token_ids)
    assert (
        "Be brief." in text
    )  # the system prompt is there (on the last user turn, as mistral-common puts it)


def test_truncation_never_cuts_an_image_block(tmp_path, tok, sp):
    from pixtral.train.data import Record

    sample, images = encode_conversation(Record(multi_turn(tmp_path), "t", tmp_path), tok)
    blocks = image_blocks(sample.token_ids, sp)
    assert len(blocks) == 3
    model = Pixtral(__import__("pixtral.config", fromlist=["preset"]).preset("tiny")).eval()
    from types import SimpleNamespace

    outcomes = set()
    for seq_len in range(1, len(sample) + 1):
        fitted, what = fit_to_context(sample, seq_len, sp, "truncate")
        outcomes.add(what)
        if fitted is None:
            continue
        n = len(fitted)
        assert n <= seq_len and fitted.token_ids == sample.token_ids[:n]
        assert all(end <= n or start >= n for start, end in blocks), f"seq_len={seq_len} cut a block"
        assert fitted.n_images == sum(1 for _, end in blocks if end <= n)
        ds = SimpleNamespace(samples=[fitted], images=lambda i, f=fitted: images[: f.n_images], special=sp)
        batch = collate([[0]], ds, 11, 16, packed=False)  # raises if [IMG] count != patches
        if seq_len in (blocks[1][0] + 3, blocks[2][1] - 1):  # cuts that fall inside blocks 2 and 3
            with torch.no_grad():
                model(batch.token_ids, batch.images)  # no ImageTokenMismatch
    assert outcomes == {"truncated", "no_loss_tokens", "ok"}
    assert fit_to_context(sample, len(sample) - 1, sp, "drop") == (None, "too_long")


def test_collate_refuses_a_batch_whose_images_do_not_match(tmp_path, tok, sp):
    from types import SimpleNamespace

    from pixtral.train.data import Record

    sample, images = encode_conversation(Record(multi_turn(tmp_path), "t", tmp_path), tok)
    ds = SimpleNamespace(samples=[sample], images=lambda i: images[:2], special=sp)
    with pytest.raises(RuntimeError, match="IMG"):
        collate([[0]], ds, 11, 16, packed=False)


def test_dataset_counts_truncated_and_dropped_samples(tmp_path, tok, caplog):
    long = {"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]}
    short = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello " * 3}]}
    mid = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "word " * 100}]}
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (long, short, mid)) + "\n")
    with caplog.at_level("WARNING", logger="pixtral.train"):
        ds = load_dataset(path, tok, seq_len=40, overflow="truncate")
    assert len(ds) == 2 and ds.stats.truncated == 1 and ds.stats.dropped_no_loss_tokens == 1
    assert "cut at a text boundary" in caplog.text
    ds = load_dataset(path, tok, seq_len=40, overflow="drop")
    assert len(ds) == 1 and ds.stats.dropped_too_long == 2


def test_bad_data_errors_name_the_line_and_the_fix(tmp_path, tok):
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]}\n{oops\n'
    )
    with pytest.raises(DataError, match="d.jsonl:2: not valid JSON"):
        read_records(path)
    path.write_text(
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": [image("images/missing.png")]},
                    {"role": "assistant", "content": "x"},
                ]
            }
        )
        + "\n"
    )
    with pytest.raises(DataError, match="d.jsonl:1.*missing.png"):
        load_dataset(path, tok, 64)
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    with pytest.raises(DataError, match="end with an assistant message"):
        load_dataset(path, tok, 64)
    with pytest.raises(DataError, match="does not exist"):
        read_records(tmp_path / "nope.jsonl")


def test_bundled_example_data_loads(tok):
    from tests.train.train_helpers import EXAMPLES

    ds = load_dataset(EXAMPLES / "data.jsonl", tok, 128)
    assert len(ds) == 6 and ds.stats.images == 8 and ds.stats.truncated == 0


def test_a_saved_hugging_face_dataset_with_an_images_column(tmp_path, tok, sp):
    import datasets
    from PIL import Image

    rows = []
    for colour in ("red", "blue"):
        rows.append(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "text": None}, {"type": "text", "text": "Colour?"}],
                    },
                    {"role": "assistant", "content": [{"type": "text", "text": colour}]},
                ],
                "images": [Image.new("RGB", (32, 16), colour)],
            }
        )
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    ds = load_dataset(tmp_path / "ds", tok, 64)
    assert len(ds) == 2 and ds.stats.images == 2
    learned = [i for i, m in zip(ds.samples[1].token_ids, ds.samples[1].loss_mask, strict=True) if m]
    assert learned == tok.instruct_tokenizer.tokenizer.encode("blue", bos=False, eos=False) + [sp.eos]
    assert ds.images(0)[0].shape == (3, 16, 32)
