"""Answers checked against the pixels, not against the generator's bookkeeping.

Text: no OCR engine is used (pytesseract/tesseract are not installed); instead every drawn string is redrawn
alone with Pillow's own font and must reproduce the image's pixels in its box, and the string in the target
box must be the question's label followed by the answer. Charts: bars are read from pixel columns of the bar
colour, line markers from connected components, and the axis label nearest to the bar top / marker must be
the answer. Shapes: counted as connected components of their exact colour, classified by how much of their
bounding box they fill.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from pixtral.synthetic.draw import COLOURS
from tests.synthetic.pixels import classify, components, mask, region, render_text, shapes_in


def _of(samples, *tasks):
    out = [s for s in samples if s.task in tasks]
    assert out
    return out


def _quoted(question: str) -> list[str]:
    return re.findall(r'"([^"]+)"', question)


def _text_matches(image, box: dict, background) -> bool:
    alone = render_text(image.size, background, box["text"], box["xy"], box["size"], box["fill"])
    return np.array_equal(region(image, box["box"]), region(alone, box["box"]))


# ------------------------------------------------------------------------------------------ text


def test_document_pixels_are_exactly_the_listed_lines_and_the_target_says_the_answer(samples):
    for s in _of(samples, "doc_number", "doc_word"):
        image, meta = s.images[0], s.meta
        redrawn = render_text(image.size, meta["background"], "", (0, 0), 8, (0, 0, 0))
        for line in meta["lines"]:  # the page is nothing but these strings
            layer = render_text(
                image.size, meta["background"], line["text"], line["xy"], line["size"], line["fill"]
            )
            x0, y0, x1, y1 = line["box"]
            redrawn.paste(layer.crop((x0 - 1, y0 - 1, x1 + 1, y1 + 1)), (x0 - 1, y0 - 1))
        assert np.array_equal(np.asarray(redrawn), np.asarray(image)), s.id
        target = meta["target"]
        label, value = target["text"].split(": ", 1)
        assert value == s.answer
        assert f"{label}:" in s.question or f"the {label} " in s.question
        assert sum(line["text"].startswith(f"{label}:") for line in meta["lines"]) == 1  # unambiguous
        ink = region(image, target["box"], pad=0) != np.array(meta["background"], dtype=np.uint8)
        assert ink.any(axis=-1).sum() >= 4  # the text changes pixels inside its stated box
        boxes = [line["box"] for line in meta["lines"]]
        for i, a in enumerate(boxes):  # lines never overlap
            for b in boxes[i + 1 :]:
                assert a[3] <= b[1] or b[3] <= a[1]
        if s.task == "doc_number":
            assert s.answer.isdigit()
        else:
            assert s.answer.isalpha()


def test_text_sizes_range_from_tiny_to_large(samples_1024, samples_256):
    sizes = [s.meta["text_size"] for s in samples_1024 + samples_256 if s.task in ("doc_number", "doc_word")]
    assert min(sizes) <= 10 and max(sizes) >= 30


def test_table_cell_is_in_the_asked_row_and_column(samples):
    for s in _of(samples, "table_cell"):
        image, meta = s.images[0], s.meta
        row_name, col_name = (_quoted(s.question) if "row" in s.question.split('"')[0] else
                              _quoted(s.question)[::-1])  # fmt: skip
        texts = meta["texts"]
        header = min((t for t in texts if t["text"] == col_name), key=lambda t: t["xy"][1])
        row = min((t for t in texts if t["text"] == row_name), key=lambda t: t["xy"][0])
        cell = [t for t in texts if t["xy"][0] == header["xy"][0] and t["xy"][1] == row["xy"][1]]
        assert len(cell) == 1 and cell[0]["text"] == s.answer, s.id
        for t in (header, row, cell[0]):
            assert _text_matches(image, t, meta["background"]), (s.id, t["text"])


# ------------------------------------------------------------------------------------------ charts


def _bars_from_pixels(image, colour: str) -> list[tuple[int, int, int]]:
    """(x_first, x_last, top_y) of each bar: runs of pixel columns holding the bar colour."""
    m = mask(image, COLOURS[colour])
    cols = m.any(axis=0)
    bars, x = [], 0
    while x < len(cols):
        if cols[x]:
            start = x
            while x < len(cols) and cols[x]:
                x += 1
            top = int(np.nonzero(m[:, start:x].any(axis=1))[0].min())
            bars.append((start, x - 1, top))
        else:
            x += 1
    return bars


def _nearest(texts, key, value):
    return min(texts, key=lambda t: abs(key(t) - value))


def _centre(t, axis):
    return (t["box"][axis] + t["box"][axis + 2]) / 2


def test_bar_charts_read_from_pixels(samples):
    for s in _of(samples, "bar_value", "bar_highest", "followup_chart"):
        image, meta = s.images[0], s.meta
        bars = _bars_from_pixels(image, meta["colour"])
        assert len(bars) == len(meta["labels"]), s.id
        x0, y0, x1, y1 = meta["plot"]
        heights = [y1 - top for _, _, top in bars]
        below = [t for t in meta["texts"] if t["xy"][1] > y1]
        left = [t for t in meta["texts"] if t["box"][2] <= x0]
        # each category label is centred under its bar
        labels = [_nearest(below, lambda t: _centre(t, 0), (a + b) / 2)["text"] for a, b, _ in bars]
        assert labels == meta["labels"]
        for t in below + left:
            assert _text_matches(image, t, image.getpixel((1, 1))), (s.id, t["text"])
        highest = int(np.argmax(heights))
        assert heights.count(max(heights)) == 1
        asked = labels.index(_quoted(s.question)[0]) if s.task == "bar_value" else highest
        # the y-axis label at the asked bar's top is the value
        value = _nearest(left, lambda t: _centre(t, 1), bars[asked][2])["text"]
        if s.task == "bar_highest":
            assert s.answer == labels[highest]
        elif s.task == "followup_chart":
            assert s.messages[1]["content"] == labels[highest] and s.answer == value
        else:
            assert s.answer == value, s.id
        # and bar heights are proportional to the values the axis gives them
        values = [float(_nearest(left, lambda t: _centre(t, 1), top)["text"]) for _, _, top in bars]
        scale = max(heights) / max(values)
        assert all(abs(h - v * scale) <= 1.5 for h, v in zip(heights, values, strict=True))


def test_line_charts_read_from_pixels(samples):
    for s in _of(samples, "line_value"):
        image, meta = s.images[0], s.meta
        markers = sorted(components(mask(image, COLOURS[meta["marker"]])), key=lambda p: p[:, 1].mean())
        assert len(markers) == len(meta["labels"]), s.id
        assert all(classify(p) == "circle" or len(p) < 30 for p in markers)
        x0, y0, x1, y1 = meta["plot"]
        below = [t for t in meta["texts"] if t["xy"][1] > y1]
        left = [t for t in meta["texts"] if t["box"][2] <= x0]
        for t in below + left:
            assert _text_matches(image, t, image.getpixel((1, 1))), (s.id, t["text"])
        centres = [(p[:, 1].mean(), p[:, 0].mean()) for p in markers]
        asked_label = re.search(r"line at (\S+)\?|show for (\S+)\?", s.question)
        asked_label = asked_label.group(1) or asked_label.group(2)
        cx, cy = min(centres, key=lambda c: abs(c[0] - _centre(
            next(t for t in below if t["text"] == asked_label), 0)))  # fmt: skip
        assert _nearest(below, lambda t: _centre(t, 0), cx)["text"] == asked_label
        assert _nearest(left, lambda t: _centre(t, 1), cy)["text"] == s.answer, s.id


# ------------------------------------------------------------------------------------------ shapes


def test_shape_counts_are_connected_components_of_the_colour(samples):
    for s in _of(samples, "shape_count"):
        colour = re.search(r"(?:many|the) (\w+) shapes", s.question).group(1)
        assert len(components(mask(s.images[0], COLOURS[colour]))) == int(s.answer), s.id


def test_shape_colours_come_from_the_only_shape_of_that_kind(samples):
    for s in _of(samples, "shape_colour", "followup_shapes"):
        found = shapes_in(s.images[0], COLOURS)
        assert len(found) == len(s.meta["shapes"]), s.id
        kind = re.search(r"the (circle|square|triangle)", s.messages[0]["content"][-1]["text"]).group(1)
        of_kind = [colour for colour, k, _ in found if k == kind]
        assert len(of_kind) == 1, (s.id, found)
        if s.task == "shape_colour":
            assert s.answer == of_kind[0]
        else:
            assert s.messages[1]["content"] == of_kind[0]
            assert int(s.answer) == sum(colour == of_kind[0] for colour, _, _ in found)


def test_the_image_with_more_circles_is_the_answer(samples):
    for s in _of(samples, "compare_count"):
        circles = [sum(k == "circle" for _, k, _ in shapes_in(im, COLOURS)) for im in s.images]
        assert circles[0] != circles[1]
        assert s.answer == ("first" if circles[0] > circles[1] else "second"), s.id


# ------------------------------------------------------------------------------------------ warm-up


@pytest.fixture(scope="module")
def warmup():
    """Ten samples of each warm-up task, both a small and the full size limit."""
    from pixtral.synthetic import generate

    return [*generate("train", 30, seed=3, max_side=1024, tasks=["warmup"]),
            *generate("test", 30, seed=3, max_side=128, tasks=["warmup"])]  # fmt: skip


def test_warmup_answers_come_from_the_pixels(warmup):
    assert {s.task for s in warmup} == {"big_shape_colour", "big_shape_kind", "big_shape_total"}
    for s in warmup:
        image = s.images[0]
        assert max(image.size) <= 128  # small canvases, whatever max_side is
        found = shapes_in(image, COLOURS)
        if s.task == "big_shape_total":
            assert len(found) == int(s.answer) and 1 <= len(found) <= 4, s.id
        else:
            assert len(found) == 1, s.id
            colour, kind, _ = found[0]
            assert s.answer == (colour if s.task == "big_shape_colour" else kind), s.id
            # big: the shape's box spans at least a quarter of the short side (16 px at least)
            box = s.meta["shapes"][0]["box"]
            assert box[2] - box[0] + 1 >= max(16, min(image.size) // 4 - 2), s.id


def test_warmup_tasks_are_not_in_the_default_or_coarse_lists():
    from pixtral.synthetic.generate import resolve_tasks

    assert not any(t.startswith("big_") for t in resolve_tasks(None) + resolve_tasks(["coarse", "fine"]))
