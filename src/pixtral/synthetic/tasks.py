"""The task generators: each turns a seeded random stream into images, a conversation and its exact answer.

Fine-grained tasks (small text, dense charts, tables) need detail a fixed low-resolution encoder loses;
coarse tasks (shapes, colours) do not. Questions state the expected answer format.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw

from pixtral.synthetic.core import image_part, pick_size, text_part, user
from pixtral.synthetic.draw import (
    AXIS,
    BACKGROUNDS,
    COLOURS,
    GRID,
    INK,
    MIN_FONT,
    RGB,
    SHAPES,
    TextBox,
    draw_shape,
    draw_text,
    fit_font,
    text_size,
)

NUMBER_LABELS = ("Code", "Room", "Order", "Ticket", "Seat", "Batch", "Lot", "Unit", "Page", "Gate", "Item",
                 "Case", "Invoice", "Account", "Serial", "Track")  # fmt: skip
WORD_LABELS = ("Name", "City", "Tag", "Key", "Team", "Site", "Mode", "Word", "Pet", "Fruit", "Animal", "Metal",
               "Planet", "Tool")  # fmt: skip
VALUE_WORDS = ("apple", "river", "stone", "cloud", "tiger", "maple", "piano", "lemon", "ocean", "falcon",
               "copper", "garden", "silver", "window", "rocket", "candle", "forest", "pepper", "marble",
               "harbor", "castle", "meadow", "bridge", "winter", "summer", "planet", "dragon", "velvet",
               "pencil", "basket", "mirror", "jungle", "island", "violin", "saddle", "walnut", "cactus",
               "anchor", "beacon", "cobalt", "desert", "ember", "fjord", "glacier", "hazel", "iris", "jade",
               "kettle", "lantern", "mango", "nectar", "orbit", "pebble", "quartz", "raven", "tulip")  # fmt: skip
FILLER_WORDS = ("the", "of", "and", "report", "total", "date", "for", "with", "office", "please", "note",
                "this", "document", "section", "amount", "received", "from", "to", "by", "copy", "form",
                "signed", "details", "below", "above", "reference", "service", "annual", "review", "due")  # fmt: skip
CATEGORY_WORDS = ("ant", "bee", "cat", "dog", "elk", "fox", "gnu", "hen", "owl", "yak", "emu", "ram", "cod",
                  "eel", "bat", "cow", "pig", "rat", "ape", "doe")  # fmt: skip
ROW_NAMES = ("apple", "pear", "plum", "fig", "kiwi", "lime", "date", "peach", "grape", "melon", "berry",
             "cherry", "mango", "olive")  # fmt: skip
HEADER_SETS = (
    ("Jan", "Feb", "Mar", "Apr", "May", "Jun"),
    ("Q1", "Q2", "Q3", "Q4"),
    ("Mon", "Tue", "Wed", "Thu", "Fri"),
    ("A", "B", "C", "D", "E", "F"),
    ("2019", "2020", "2021", "2022", "2023"),
    ("North", "South", "East", "West"),
)
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
STEPS = (1, 2, 5, 10, 20, 25, 50, 100, 200, 500)


@dataclass(frozen=True)
class Drawn:
    """What a task generator returns (the sample's id, split and task are added by the caller)."""

    messages: list[dict[str, Any]]
    answer: str
    images: list[Image.Image]
    meta: dict[str, Any]


TaskFn = Callable[[random.Random, str, int], Drawn]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    granularity: str  # "fine" | "coarse"
    fn: TaskFn
    description: str


def _log_uniform_int(rng: random.Random, lo: int, hi: int) -> int:
    if hi <= lo:
        return lo
    return min(hi, max(lo, round(math.exp(rng.uniform(math.log(lo), math.log(hi + 0.5))))))


def _single(image: Image.Image, question: str) -> list[dict[str, Any]]:
    return [user(image_part(image), text_part(question))]


# ------------------------------------------------------------------------------------------ documents


def _document(rng: random.Random, split: str, max_side: int, kind: str) -> Drawn:
    w, h = pick_size(rng, split, max_side, 80, 40)
    bg, ink = rng.choice(BACKGROUNDS), rng.choice(INK)
    grey: RGB = (100, 100, 100)
    image = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(image)
    margin = max(2, min(w, h) // 24)
    avail_w, avail_h = w - 2 * margin, h - 2 * margin

    labels = list(rng.sample(NUMBER_LABELS if kind == "number" else WORD_LABELS, rng.randint(1, 6)))
    target_label = labels[0]

    def value() -> str:
        if kind == "number":
            digits = rng.randint(2, 6)
            return str(rng.randint(10 ** (digits - 1), 10**digits - 1))
        return rng.choice(VALUE_WORDS)

    answer = value()
    target_text = f"{target_label}: {answer}"
    cap = max(MIN_FONT + 1, min(72, avail_h - 2))
    size = _log_uniform_int(rng, 7, cap)
    size = fit_font(target_text, avail_w, size) or MIN_FONT
    while size > MIN_FONT and text_size(target_text, size)[1] > avail_h:
        size -= 1
    # the lines of the page, in reading order: the target field, other fields and filler sentences
    lines: list[tuple[str, int, RGB, bool]] = [(target_text, size, ink, True)]
    small_cap = max(7, min(28, cap))
    for label in labels[1:]:
        lines.append((f"{label}: {value()}", _log_uniform_int(rng, 7, small_cap), ink, False))
    for _ in range(rng.randint(0, 8)):
        words = " ".join(rng.choice(FILLER_WORDS) for _ in range(rng.randint(2, 9)))
        lines.append((words, _log_uniform_int(rng, 7, small_cap), rng.choice((ink, grey)), False))
    rng.shuffle(lines)

    target_h = text_size(target_text, size)[1]
    boxes: list[TextBox] = []
    y = margin
    target_box: TextBox | None = None
    for text, line_size, fill, is_target in lines:
        if not is_target:
            fitted = fit_font(text, avail_w, line_size)
            while fitted is None and " " in text:
                text = text.rsplit(" ", 1)[0]
                fitted = fit_font(text, avail_w, line_size)
            if fitted is None:
                continue
            line_size = fitted
        tw, th = text_size(text, line_size)
        gap = rng.randint(2, max(2, th // 2))
        # a line before the target must leave room for the target below it (so the target always fits)
        needed = th if target_box is not None or is_target else th + gap + target_h
        if y + needed > h - margin:
            if not is_target:
                continue
            y = max(0, h - margin - th)  # unreachable unless the page is shorter than the target line
        x = margin + rng.randint(0, max(0, avail_w - tw))
        box = draw_text(draw, (x, y), text, line_size, fill)
        boxes.append(box)
        if is_target:
            target_box = box
        y += th + gap
    assert target_box is not None
    fmt = "number" if kind == "number" else "word"
    if kind == "number":
        question = rng.choice(
            (
                f"What is the {target_label} number on this page? Answer with the number only.",
                f'Which number is written after "{target_label}:"? Answer with the number only.',
            )
        )
    else:
        question = rng.choice(
            (
                f'Which word is written after "{target_label}:" on this page? Answer with the word only.',
                f"What is the {target_label} given on this page? Answer with the {fmt} only.",
            )
        )
    meta = {"text_size": target_box.size, "target": target_box.as_dict(), "lines": [b.as_dict() for b in boxes],
            "background": list(bg)}  # fmt: skip
    return Drawn(_single(image, question), answer, [image], meta)


def doc_number(rng: random.Random, split: str, max_side: int) -> Drawn:
    return _document(rng, split, max_side, "number")


def doc_word(rng: random.Random, split: str, max_side: int) -> Drawn:
    return _document(rng, split, max_side, "word")


# ------------------------------------------------------------------------------------------ tables


def table_cell(rng: random.Random, split: str, max_side: int) -> Drawn:
    w, h = pick_size(rng, split, max_side, 96, 64, max_aspect=3.0)
    bg, ink = rng.choice(BACKGROUNDS), rng.choice(INK)
    image = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(image)
    margin = max(2, min(w, h) // 24)
    headers_all = rng.choice(HEADER_SETS)
    n_cols = rng.randint(2, len(headers_all))
    n_rows = rng.randint(2, 6)
    start = rng.randint(0, len(headers_all) - n_cols)
    headers = list(headers_all[start : start + n_cols])
    row_names = list(rng.sample(ROW_NAMES, n_rows))
    digits = rng.randint(1, 4)
    cells = [[str(rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)) for _ in headers]
             for _ in row_names]  # fmt: skip
    size = _log_uniform_int(rng, 7, max(7, min(28, h // 6)))

    def layout(size: int, n_rows: int, n_cols: int) -> tuple[int, list[int], int] | None:
        pad = max(2, size // 4)
        grid = [["", *headers[:n_cols]]] + [[row_names[r], *cells[r][:n_cols]] for r in range(n_rows)]
        col_w = [max(text_size(grid[r][c], size)[0] for r in range(n_rows + 1)) + 2 * pad + 1
                 for c in range(n_cols + 1)]  # fmt: skip
        row_h = max(text_size(t, size)[1] for row in grid for t in row if t) + 2 * pad + 1
        if sum(col_w) + 1 <= w - 2 * margin and row_h * (n_rows + 1) + 1 <= h - 2 * margin:
            return pad, col_w, row_h
        return None

    fitted = None
    while fitted is None:
        fitted = layout(size, n_rows, n_cols)
        if fitted is None:
            if size > MIN_FONT:
                size -= 1
            elif n_cols > 1 and n_cols >= n_rows:
                n_cols -= 1
            elif n_rows > 1:
                n_rows -= 1
            else:
                raise RuntimeError(f"table does not fit a {w}x{h} image")
    pad, col_w, row_h = fitted
    headers, row_names = headers[:n_cols], row_names[:n_rows]
    cells = [row[:n_cols] for row in cells[:n_rows]]
    table_w, table_h = sum(col_w) + 1, row_h * (n_rows + 1) + 1
    x0 = margin + rng.randint(0, w - 2 * margin - table_w)
    y0 = margin + rng.randint(0, h - 2 * margin - table_h)
    xs = [x0]
    for cw in col_w:
        xs.append(xs[-1] + cw)
    ys = [y0 + i * row_h for i in range(n_rows + 2)]
    for x in xs:
        draw.line([(x, y0), (x, ys[-1])], fill=GRID)
    for y in ys:
        draw.line([(x0, y), (xs[-1], y)], fill=GRID)
    boxes: dict[tuple[int, int], TextBox] = {}
    grid = [["", *headers]] + [[row_names[r], *cells[r]] for r in range(n_rows)]
    for r, row in enumerate(grid):
        for c, t in enumerate(row):
            if t:
                boxes[(r, c)] = draw_text(draw, (xs[c] + pad + 1, ys[r] + pad + 1), t, size, ink)
    tr, tc = rng.randrange(n_rows), rng.randrange(n_cols)
    answer = cells[tr][tc]
    question = rng.choice(
        (
            f'What is the value in row "{row_names[tr]}", column "{headers[tc]}" of the table? '
            "Answer with the number only.",
            f'In the table, which number is in the "{headers[tc]}" column of the "{row_names[tr]}" row? '
            "Answer with the number only.",
        )
    )
    cell_box = (xs[tc + 1], ys[tr + 1], xs[tc + 2], ys[tr + 2])
    meta = {"text_size": size, "target": boxes[(tr + 1, tc + 1)].as_dict(), "cell_box": list(cell_box),
            "headers": headers, "rows": row_names, "cells": cells, "background": list(bg),
            "texts": [b.as_dict() for b in boxes.values()]}  # fmt: skip
    return Drawn(_single(image, question), answer, [image], meta)


# ------------------------------------------------------------------------------------------ charts


def _axes(
    rng: random.Random,
    w: int,
    h: int,
    x_labels_fn: Callable[[int], list[str]],
    max_points: int,
    label_gap: int = 3,
) -> dict[str, Any]:
    """Choose fonts, ticks and the plot box of a chart whose x positions carry labels ``label_gap`` px below
    the x axis."""
    fs = max(MIN_FONT, min(20, round(min(w, h) / rng.uniform(12, 22))))
    want_ticks = rng.randint(3, 8)
    step = rng.choice(STEPS)
    while True:  # tick labels one above the other must not touch: shrink the font, then drop ticks
        label_h = text_size("0123456789Ag", fs)[1]
        top, bottom = max(fs // 2 + 3, 7), label_h + label_gap + 3
        spacing = label_h + 2
        ticks = min(want_ticks, (h - bottom - top) // spacing)
        if ticks >= 2 or fs == MIN_FONT:
            ticks = max(ticks, 2)
            break
        fs -= 1
    tick_labels = [str(k * step) for k in range(ticks + 1)]
    left = max(text_size(t, fs)[0] for t in tick_labels) + 6
    x0, x1, y0, y1 = left, w - 4, top, h - bottom
    n = rng.randint(3, max_points)
    while True:
        labels = x_labels_fn(n)
        slot = (x1 - x0 - 2) / n
        widest = max(text_size(t, fs)[0] for t in labels)
        if (widest + 3 <= slot and slot >= 6) or n <= 2:
            break
        n -= 1
    return {"fs": fs, "ticks": ticks, "step": step, "vmax": ticks * step, "tick_labels": tick_labels,
            "plot": (x0, y0, x1, y1), "labels": labels, "slot": slot, "label_gap": label_gap}  # fmt: skip


def _draw_axes(draw: ImageDraw.ImageDraw, ax: dict[str, Any], ink: RGB) -> list[TextBox]:
    x0, y0, x1, y1 = ax["plot"]
    boxes = []
    for k, t in enumerate(ax["tick_labels"]):
        y = _y_of(ax, k * ax["step"])
        if k:
            draw.line([(x0 + 1, y), (x1, y)], fill=GRID)
        tw, th = text_size(t, ax["fs"])
        boxes.append(draw_text(draw, (x0 - 4 - tw, y - th // 2 - 1), t, ax["fs"], ink))
    draw.line([(x0, y0), (x0, y1)], fill=AXIS)
    draw.line([(x0, y1), (x1, y1)], fill=AXIS)
    return boxes


def _y_of(ax: dict[str, Any], value: float) -> int:
    x0, y0, x1, y1 = ax["plot"]
    return y1 - round(value / ax["vmax"] * (y1 - y0))


def _x_label(draw: ImageDraw.ImageDraw, ax: dict[str, Any], cx: float, text: str, ink: RGB) -> TextBox:
    tw, _ = text_size(text, ax["fs"])
    return draw_text(draw, (round(cx - tw / 2), ax["plot"][3] + ax["label_gap"]), text, ax["fs"], ink)


def _bar_chart(rng: random.Random, split: str, max_side: int) -> tuple[Image.Image, dict[str, Any]]:
    w, h = pick_size(rng, split, max_side, 96, 72, max_aspect=3.0)
    bg, ink = rng.choice(BACKGROUNDS), rng.choice(INK)
    colour_name = rng.choice(list(COLOURS))
    words = rng.random() < 0.6

    def labels_fn(n: int) -> list[str]:
        return list(rng.sample(CATEGORY_WORDS, n)) if words else [chr(ord("A") + i) for i in range(n)]

    ax = _axes(rng, w, h, labels_fn, 12)
    n = len(ax["labels"])
    values = [rng.randint(1, ax["ticks"]) for _ in range(n)]
    top = max(values)
    winners = [i for i, v in enumerate(values) if v == top]
    keep = rng.choice(winners)
    for i in winners:  # a unique highest bar
        if i != keep:
            values[i] -= 1 if top > 1 else 0
    if values.count(max(values)) > 1:  # all were 1: lift the kept one
        values[keep] += 1
    values = [v * ax["step"] for v in values]
    image = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(image)
    boxes = _draw_axes(draw, ax, ink)
    x0, y0, x1, y1 = ax["plot"]
    slot = ax["slot"]
    bw = max(2, int(slot * rng.uniform(0.45, 0.8)))
    bars = []
    for i, (label, v) in enumerate(zip(ax["labels"], values, strict=True)):
        bx = x0 + 2 + int(i * slot + (slot - bw) / 2)
        by = _y_of(ax, v)
        draw.rectangle([bx, by, bx + bw - 1, y1 - 1], fill=COLOURS[colour_name])
        bars.append([bx, by, bx + bw - 1, y1 - 1])
        boxes.append(_x_label(draw, ax, bx + bw / 2, label, ink))
    meta = {"labels": ax["labels"], "values": values, "bars": bars, "colour": colour_name, "plot": list(ax["plot"]),
            "step": ax["step"], "vmax": ax["vmax"], "text_size": ax["fs"],
            "texts": [b.as_dict() for b in boxes]}  # fmt: skip
    return image, meta


def bar_value(rng: random.Random, split: str, max_side: int) -> Drawn:
    image, meta = _bar_chart(rng, split, max_side)
    i = rng.randrange(len(meta["labels"]))
    question = rng.choice(
        (
            f'What is the value of the bar labelled "{meta["labels"][i]}"? Answer with a number.',
            f'In this bar chart, how high is the "{meta["labels"][i]}" bar? Answer with a number.',
        )
    )
    meta["asked"] = i
    return Drawn(_single(image, question), str(meta["values"][i]), [image], meta)


def bar_highest(rng: random.Random, split: str, max_side: int) -> Drawn:
    image, meta = _bar_chart(rng, split, max_side)
    best = max(range(len(meta["values"])), key=lambda i: meta["values"][i])
    question = rng.choice(
        (
            "Which bar is the highest? Answer with its label.",
            "Which category has the largest value in this chart? Answer with its label.",
        )
    )
    meta["asked"] = best
    return Drawn(_single(image, question), meta["labels"][best], [image], meta)


def followup_chart(rng: random.Random, split: str, max_side: int) -> Drawn:
    image, meta = _bar_chart(rng, split, max_side)
    best = max(range(len(meta["values"])), key=lambda i: meta["values"][i])
    messages = [
        user(image_part(image), text_part("Which bar is the highest? Answer with its label.")),
        {"role": "assistant", "content": meta["labels"][best]},
        user(text_part("What is the value of that bar? Answer with a number.")),
    ]
    meta["asked"] = best
    return Drawn(messages, str(meta["values"][best]), [image], meta)


def line_value(rng: random.Random, split: str, max_side: int) -> Drawn:
    w, h = pick_size(rng, split, max_side, 112, 72, max_aspect=3.0)
    bg, ink = rng.choice(BACKGROUNDS), rng.choice(INK)
    line_name, marker_name = rng.sample(list(COLOURS), 2)
    kind = rng.choice(("years", "months", "letters"))
    first_year = rng.randint(1990, 2020)
    first_month = rng.randrange(12)

    def labels_fn(n: int) -> list[str]:
        if kind == "years":
            return [str(first_year + i) for i in range(n)]
        if kind == "months":
            return [MONTHS[(first_month + i) % 12] for i in range(n)]
        return [chr(ord("A") + i) for i in range(n)]

    ax = _axes(rng, w, h, labels_fn, 12, label_gap=8)  # markers on the x axis reach 5 px below it
    n = len(ax["labels"])
    values = [rng.randint(0, ax["ticks"]) * ax["step"] for _ in range(n)]
    radius = max(2, min(int(ax["slot"] // 3), ax["fs"] // 3, 5))
    image = Image.new("RGB", (w, h), bg)
    draw = ImageDraw.Draw(image)
    boxes = _draw_axes(draw, ax, ink)
    x0, y0, x1, y1 = ax["plot"]
    points = [(x0 + 2 + round(ax["slot"] * (i + 0.5)), _y_of(ax, v)) for i, v in enumerate(values)]
    draw.line(points, fill=COLOURS[line_name], width=rng.choice((1, 2)))
    for (px, py), label in zip(points, ax["labels"], strict=True):
        draw.ellipse([px - radius, py - radius, px + radius, py + radius], fill=COLOURS[marker_name])
        boxes.append(_x_label(draw, ax, px, label, ink))
    i = rng.randrange(n)
    question = rng.choice(
        (
            f"What is the value of the line at {ax['labels'][i]}? Answer with a number.",
            f"Read the line chart: what value does it show for {ax['labels'][i]}? Answer with a number.",
        )
    )
    meta = {"labels": ax["labels"], "values": values, "points": [list(p) for p in points], "asked": i,
            "marker": marker_name, "line": line_name, "plot": list(ax["plot"]), "step": ax["step"],
            "vmax": ax["vmax"], "text_size": ax["fs"], "texts": [b.as_dict() for b in boxes]}  # fmt: skip
    return Drawn(_single(image, question), str(values[i]), [image], meta)


# ------------------------------------------------------------------------------------------ shapes


def _shape_scene(
    rng: random.Random,
    split: str,
    max_side: int,
    plan: list[tuple[str, str]],
    required: int,
    owned: bool = True,
    big: int = 0,
) -> tuple[Image.Image, list[dict[str, Any]]]:
    """Draw ``plan`` (kind, colour) shapes without overlap (3 px apart); the first ``required`` must all fit
    (else a new size is drawn), later ones are dropped when there is no room. ``big`` = k > 0 draws shapes
    of 1/(2k) to 1/k of the image's short side (at least 16 px) instead of 8 to 64 px."""
    for _ in range(100):
        w, h = pick_size(rng, split, max_side, 32, 32, owned=owned)
        smax = max(8, min(64, min(w, h) // 4))
        placed: list[dict[str, Any]] = []
        ok = True
        for k, (kind, colour) in enumerate(plan):
            if big:
                top = max(16, min(w, h) // big - 4)
                s = rng.randint(max(16, top // 2), top)
            else:
                s = rng.randint(8, smax)
            for _ in range(60):
                x, y = rng.randint(1, w - s - 1), rng.randint(1, h - s - 1)
                box = (x, y, x + s - 1, y + s - 1)
                if all(box[0] > p["box"][2] + 3 or box[2] < p["box"][0] - 3 or box[1] > p["box"][3] + 3
                       or box[3] < p["box"][1] - 3 for p in placed):  # fmt: skip
                    placed.append({"kind": kind, "colour": colour, "box": box})
                    break
            else:
                if k < required:
                    ok = False
                    break
        if ok:
            bg = rng.choice(BACKGROUNDS)
            image = Image.new("RGB", (w, h), bg)
            draw = ImageDraw.Draw(image)
            for p in placed:
                draw_shape(draw, p["kind"], p["box"], COLOURS[p["colour"]])
            return image, [{**p, "box": list(p["box"])} for p in placed]
    raise RuntimeError("could not place the shapes")


def shape_count(rng: random.Random, split: str, max_side: int) -> Drawn:
    colour = rng.choice(list(COLOURS))
    others = [c for c in COLOURS if c != colour]
    n = rng.randint(0, 6) if rng.random() < 0.1 else rng.randint(1, 6)
    plan = [(rng.choice(SHAPES), colour) for _ in range(n)]
    plan += [(rng.choice(SHAPES), rng.choice(others)) for _ in range(rng.randint(0, 5))]
    image, shapes = _shape_scene(rng, split, max_side, plan, required=n)
    question = rng.choice(
        (
            f"How many {colour} shapes are there? Answer with a number.",
            f"Count the {colour} shapes in the image. Answer with a number.",
        )
    )
    answer = sum(1 for s in shapes if s["colour"] == colour)
    return Drawn(_single(image, question), str(answer), [image], {"shapes": shapes, "colour": colour})


def _one_of_kind(rng: random.Random, split: str, max_side: int) -> tuple[Image.Image, list[dict], str, str]:
    kind = rng.choice(SHAPES)
    colour = rng.choice(list(COLOURS))
    other_kinds = [k for k in SHAPES if k != kind]
    plan = [(kind, colour)] + [
        (rng.choice(other_kinds), rng.choice(list(COLOURS))) for _ in range(rng.randint(0, 5))
    ]
    image, shapes = _shape_scene(rng, split, max_side, plan, required=1)
    return image, shapes, kind, colour


def shape_colour(rng: random.Random, split: str, max_side: int) -> Drawn:
    image, shapes, kind, colour = _one_of_kind(rng, split, max_side)
    question = rng.choice(
        (
            f"What colour is the {kind}? Answer with one word.",
            f"Name the colour of the {kind} in the image. Answer with one word.",
        )
    )
    return Drawn(_single(image, question), colour, [image], {"shapes": shapes, "kind": kind})


def followup_shapes(rng: random.Random, split: str, max_side: int) -> Drawn:
    image, shapes, kind, colour = _one_of_kind(rng, split, max_side)
    messages = [
        user(image_part(image), text_part(f"What colour is the {kind}? Answer with one word.")),
        {"role": "assistant", "content": colour},
        user(text_part("How many shapes of that colour are there in total? Answer with a number.")),
    ]
    answer = sum(1 for s in shapes if s["colour"] == colour)
    return Drawn(messages, str(answer), [image], {"shapes": shapes, "kind": kind, "colour": colour})


def compare_count(rng: random.Random, split: str, max_side: int) -> Drawn:
    a, b = rng.sample(range(1, 8), 2)
    images, scenes = [], []
    for i, n in enumerate((a, b)):
        colour = rng.choice(list(COLOURS))
        plan = [("circle", colour if rng.random() < 0.5 else rng.choice(list(COLOURS))) for _ in range(n)]
        plan += [
            (rng.choice(("square", "triangle")), rng.choice(list(COLOURS))) for _ in range(rng.randint(0, 4))
        ]
        image, shapes = _shape_scene(rng, split, max_side, plan, required=n, owned=i == 0)
        images.append(image)
        scenes.append(shapes)
    question = rng.choice(
        (
            "Which image has more circles, the first or the second? Answer with first or second.",
            "Count the circles in both images. Which one has more? Answer with first or second.",
        )
    )
    messages = [user(image_part(images[0]), image_part(images[1]), text_part(question))]
    return Drawn(messages, "first" if a > b else "second", images, {"scenes": scenes, "circles": [a, b]})


# ------------------------------------------------------------------------------------------ warm-up
# Big shapes on small canvases: the easiest questions that still need the image. Not part of the default
# task list nor of fine/coarse (the held-out sets stay as they were); `--tasks warmup` mixes them into a
# from-scratch model's training data, as a curriculum towards the coarse tasks.

WARMUP_MAX_SIDE = 128


def big_shape_colour(rng: random.Random, split: str, max_side: int) -> Drawn:
    kind, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
    image, shapes = _shape_scene(rng, split, min(max_side, WARMUP_MAX_SIDE), [(kind, colour)], 1, big=2)
    question = "What colour is the shape? Answer with one word."
    return Drawn(_single(image, question), colour, [image], {"shapes": shapes})


def big_shape_kind(rng: random.Random, split: str, max_side: int) -> Drawn:
    kind, colour = rng.choice(SHAPES), rng.choice(list(COLOURS))
    image, shapes = _shape_scene(rng, split, min(max_side, WARMUP_MAX_SIDE), [(kind, colour)], 1, big=2)
    question = "Which shape is in the image: circle, square or triangle? Answer with one word."
    return Drawn(_single(image, question), kind, [image], {"shapes": shapes})


def big_shape_total(rng: random.Random, split: str, max_side: int) -> Drawn:
    n = rng.randint(1, 4)
    plan = [(rng.choice(SHAPES), rng.choice(list(COLOURS))) for _ in range(n)]
    image, shapes = _shape_scene(rng, split, min(max_side, WARMUP_MAX_SIDE), plan, n, big=4)
    question = "How many shapes are there in the image? Answer with a number."
    return Drawn(_single(image, question), str(len(shapes)), [image], {"shapes": shapes})


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("doc_number", "fine", doc_number, "read a number of a given size from a document page"),
        TaskSpec("doc_word", "fine", doc_word, "read a word of a given size from a document page"),
        TaskSpec("table_cell", "fine", table_cell, "read a cell of a table by row and column"),
        TaskSpec("bar_value", "fine", bar_value, "read a bar's value off a chart's labelled y axis"),
        TaskSpec("bar_highest", "fine", bar_highest, "name the highest bar of a bar chart"),
        TaskSpec("line_value", "fine", line_value, "read a line chart's value at a labelled x"),
        TaskSpec("followup_chart", "fine", followup_chart, "two turns: highest bar, then its value"),
        TaskSpec("shape_count", "coarse", shape_count, "count the shapes of a colour"),
        TaskSpec(
            "shape_colour", "coarse", shape_colour, "name the colour of the only circle/square/triangle"
        ),
        TaskSpec("compare_count", "coarse", compare_count, "two images: which has more circles"),
        TaskSpec("followup_shapes", "coarse", followup_shapes, "two turns: a shape's colour, then its count"),
        TaskSpec("big_shape_colour", "warmup", big_shape_colour, "the colour of one big shape"),
        TaskSpec("big_shape_kind", "warmup", big_shape_kind, "circle, square or triangle: one big shape"),
        TaskSpec("big_shape_total", "warmup", big_shape_total, "count 1-4 big shapes"),
    )
}
