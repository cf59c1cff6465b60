"""Regenerate the bundled sample data: tiny PNGs and JSONL conversations (python make_samples.py)."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).parent
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (40, 70, 220), "yellow": (240, 210, 20)}
SHAPES = ("square", "circle")


def draw(colour: str, shape: str, size: int = 32) -> Image.Image:
    image = Image.new("RGB", (size, size), "white")
    d = ImageDraw.Draw(image)
    box = (4, 4, size - 5, size - 5)
    (d.rectangle if shape == "square" else d.ellipse)(box, fill=COLOURS[colour])
    return image


def image_part(name: str) -> dict:
    return {"type": "image_url", "image_url": {"url": f"images/{name}.png"}}


def main() -> None:
    (HERE / "images").mkdir(exist_ok=True)
    for colour in COLOURS:
        for shape in SHAPES:
            draw(colour, shape).save(HERE / "images" / f"{colour}_{shape}.png")
    train, val = [], []
    for colour in COLOURS:
        for shape in SHAPES:
            conv = {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            image_part(f"{colour}_{shape}"),
                            {"type": "text", "text": "What colour is the shape?"},
                        ],
                    },
                    {"role": "assistant", "content": colour.capitalize() + "."},
                ]
            }
            (val if shape == "circle" else train).append(conv)
    # multi-turn, multi-image conversations; the system prompt and the first answer weigh nothing
    train.append(
        {
            "messages": [
                {"role": "system", "content": "Answer in one word."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Compare"},
                        image_part("red_square"),
                        {"type": "text", "text": "and"},
                        image_part("blue_circle"),
                    ],
                },
                {"role": "assistant", "content": "Different.", "weight": 0},
                {
                    "role": "user",
                    "content": [image_part("blue_circle"), {"type": "text", "text": "Which shape is this?"}],
                },
                {"role": "assistant", "content": "Circle."},
            ]
        }
    )
    train.append(
        {
            "messages": [
                {"role": "user", "content": "Say hello."},
                {"role": "assistant", "content": "Hello!"},
                {
                    "role": "user",
                    "content": [image_part("green_square"), {"type": "text", "text": "Which shape is this?"}],
                },
                {"role": "assistant", "content": "Square."},
            ]
        }
    )
    for name, rows in (("data.jsonl", train), ("val.jsonl", val)):
        (HERE / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
