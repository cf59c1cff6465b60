"""Fixture datasets for the six tasks, in each task's real column schema, written as parquet.

Images are rendered with PIL (PNG and JPEG, so the tests can check that the original bytes travel unchanged).
Every question carries a ``[q:ID]`` marker; ``oracle`` maps ID → the fake model's answer, and ``expect`` maps
item id → the metric values that answer was designed to get (fixed scoring), for end-to-end assertions.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw


def render(text: str, fmt: str = "PNG", size: tuple[int, int] = (96, 48)) -> bytes:
    img = Image.new("RGB", size, (250, 250, 245))
    draw = ImageDraw.Draw(img)
    draw.rectangle([4, 30, 24, 44], fill=(200, 60, 60))
    draw.text((4, 4), text[:14], fill=(0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format=fmt, quality=90) if fmt == "JPEG" else img.save(buf, format=fmt)
    return buf.getvalue()


def cell(data: bytes | None) -> dict[str, Any] | None:
    return None if data is None else {"bytes": data, "path": None}


@dataclass
class Fixtures:
    root: Path
    oracle: dict[str, str] = field(default_factory=dict)
    # item_id -> metric -> the value its answer was designed to get, in fixed and in mistral-compat mode
    expect: dict[str, dict[str, float]] = field(default_factory=dict)
    expect_compat: dict[str, dict[str, float]] = field(default_factory=dict)
    images: dict[str, bytes] = field(default_factory=dict)  # item_id (row level) -> first image bytes
    questions: dict[str, list[str]] = field(
        default_factory=dict
    )  # mm_mt_bench item_id -> user questions so far


def _write(root: Path, task: str, filename: str, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
    path = root / task / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)


IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

# (answer text, fixed-mode exact, flex2, flex3) for the CoT tasks; references below.
COT_CASES = [
    ("The bars show values.\nFinal Answer: {ref}", 1, 1, 1),
    ("Reasoning...\n**Final Answer:** {ref}\n\nHope this helps!", 0, 1, 1),
    ("I believe the value is {ref}.", 0, 0, 1),
    ("Final Answer: {wrong}", 0, 0, 0),
]


def build_fixtures(root: Path, copies: int = 1) -> Fixtures:
    """Write all six datasets under ``root/{task}/``; ``copies`` repeats the single-turn rows (bigger runs)."""
    fx = Fixtures(root)
    _chartqa(fx, copies)
    _vqav2(fx, copies)
    _docvqa(fx, copies)
    _mathvista(fx)
    _mmmu(fx)
    _mm_mt_bench(fx)
    return fx


def _chartqa(fx: Fixtures, copies: int) -> None:
    refs = [("42", "17"), ("Yes", "No"), ("12.5%", "3"), ("Paris", "Rome")]
    rows = []
    for _ in range(copies):
        for i, (case, (ref, wrong)) in enumerate(zip(COT_CASES, refs, strict=True)):
            idx = len(rows)
            qid = f"chartqa-{idx}"
            answer, exact, flex2, flex3 = case
            fx.oracle[qid] = answer.format(ref=ref, wrong=wrong)
            fx.expect[f"chartqa:test:{idx}"] = {"exact": exact, "flex2": flex2, "flex3": flex3}
            img = render(f"chart {idx}", "PNG" if i % 2 else "JPEG")
            fx.images[f"chartqa:test:{idx}"] = img
            rows.append({"type": "human_test" if i % 2 else "augmented_test", "question": f"What is shown? [q:{qid}]",
                         "answer": ref, "image": cell(img)})  # fmt: skip
    schema = pa.schema(
        [("type", pa.string()), ("question", pa.string()), ("answer", pa.string()), ("image", IMAGE)]
    )
    _write(fx.root, "chartqa", "test-00000-of-00001.parquet", rows, schema)


def _vqav2(fx: Fixtures, copies: int) -> None:
    # (model answer, ten human answers, fixed-mode vqa_match)
    cases = [  # (answer, ten human answers, fixed, mistral-compat)
        ("Yes", ["yes"] * 10, 1.0, 0.0),  # B5: case-sensitive in compat
        ("2.", ["2"] * 10, 1.0, 0.0),  # B5: punctuation-sensitive
        ("two", ["2"] * 3 + ["3"] * 7, 0.9, 0.0),  # 10-choose-9 averaging; no number words in compat
        ("2", ["2"] * 3 + ["3"] * 7, 0.9, 1.0),  # compat: min(1, 3/3)
    ]
    rows = []
    for _ in range(copies):
        for ans, humans, score, compat in cases:
            idx = len(rows)
            qid = f"vqav2-{idx}"
            fx.oracle[qid] = ans
            fx.expect[f"vqav2:validation:{idx}"] = {"vqa_match": score}
            fx.expect_compat[f"vqav2:validation:{idx}"] = {"vqa_match": compat}
            rows.append({
                "question_type": "what", "multiple_choice_answer": humans[0],
                "answers": [{"answer": h, "answer_confidence": "yes", "answer_id": k + 1} for k, h in enumerate(humans)],
                "image_id": 1000 + idx, "answer_type": "yes/no" if humans[0] == "yes" else "number",
                "question_id": 5000 + idx, "question": f"How many? [q:{qid}]", "image": cell(render(f"vqa {idx}")),
            })  # fmt: skip
    schema = pa.schema([
        ("question_type", pa.string()), ("multiple_choice_answer", pa.string()),
        ("answers", pa.list_(pa.struct([("answer", pa.string()), ("answer_confidence", pa.string()), ("answer_id", pa.int64())]))),
        ("image_id", pa.int64()), ("answer_type", pa.string()), ("question_id", pa.int64()), ("question", pa.string()),
        ("image", IMAGE),
    ])  # fmt: skip
    _write(fx.root, "vqav2", "validation-00000-of-00001.parquet", rows, schema)


def _docvqa(fx: Fixtures, copies: int) -> None:
    cases = [("42", ["42"], 1.0, 1.0), ("The answer is 42", ["42"], 0.0, 0.125),
             ("ITC Limited.", ["itc limited"], 1.0, 1.0), ("abcdef", ["abcxyz123"], 0.0, 1 / 3)]  # fmt: skip
    rows = []
    for _ in range(copies):
        for ans, refs, score, compat in cases:
            idx = len(rows)
            qid = f"docvqa-{idx}"
            fx.oracle[qid] = ans
            fx.expect[f"docvqa:validation:{idx}"] = {"anls": score}
            fx.expect_compat[f"docvqa:validation:{idx}"] = {"anls": compat}
            rows.append({"questionId": str(idx), "question": f"What is written? [q:{qid}]", "question_types": ["form"],
                         "image": cell(render(f"doc {idx}", "JPEG")), "docId": idx, "ucsf_document_id": "x",
                         "ucsf_document_page_no": "1", "answers": refs, "data_split": "val"})  # fmt: skip
    schema = pa.schema([
        ("questionId", pa.string()), ("question", pa.string()), ("question_types", pa.list_(pa.string())),
        ("image", IMAGE), ("docId", pa.int64()), ("ucsf_document_id", pa.string()),
        ("ucsf_document_page_no", pa.string()), ("answers", pa.list_(pa.string())), ("data_split", pa.string()),
    ])  # fmt: skip
    _write(fx.root, "docvqa", "DocVQA/validation-00000-of-00001.parquet", rows, schema)


def _mathvista(fx: Fixtures) -> None:
    rows = []
    specs = [  # (choices, answer, model answer, exact, flex2, flex3)
        (["3", "5", "7"], "5", "Counting gives five.\nFinal Answer: B", 1, 1, 1),
        (None, "96", "**Answer:** 100", 0, 1, 1),  # 5% relative tolerance: 100 vs 96 is 4.2%
        (
            ["red", "blue"],
            "blue",
            "Final Answer: Blue",
            0,
            0,
            0,
        ),  # letter ref B: "Blue" is not B in fixed mode
        (None, "1.5", "The result is 1.5, I think", 0, 0, 1),
    ]
    for idx, (choices, answer, model, exact, flex2, flex3) in enumerate(specs):
        qid = f"mathvista-{idx}"
        fx.oracle[qid] = model
        fx.expect[f"mathvista:testmini:{idx}"] = {"exact": exact, "flex2": flex2, "flex3": flex3}
        if choices == [
            "red",
            "blue",
        ]:  # "Blue" for option B: right by its first letter in mistral-compat only
            fx.expect_compat[f"mathvista:testmini:{idx}"] = {"exact": 1, "flex2": 1, "flex3": 1}
        query = f"Hint: Please answer the question.\nQuestion: What value? [q:{qid}]"
        if choices:
            query += "\nChoices:\n" + "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(choices))
        rows.append({"pid": str(idx + 1), "question": "What value?", "image": f"images/{idx + 1}.jpg",
                     "decoded_image": cell(render(f"math {idx}")), "choices": choices,
                     "unit": None, "precision": None, "answer": answer,
                     "question_type": "multi_choice" if choices else "free_form",
                     "answer_type": "text" if choices else "float", "query": query,
                     "metadata": {"category": "math-targeted-vqa", "task": "figure question answering" if idx % 2 else "math word problem",
                                  "source": "fixture", "grade": "", "img_height": 48, "img_width": 96,
                                  "language": "english", "skills": ["arithmetic reasoning"], "context": "bar chart", "split": "testmini"}})  # fmt: skip
    meta = pa.struct([("category", pa.string()), ("task", pa.string()), ("source", pa.string()), ("grade", pa.string()),
                      ("img_height", pa.int64()), ("img_width", pa.int64()), ("language", pa.string()),
                      ("skills", pa.list_(pa.string())), ("context", pa.string()), ("split", pa.string())])  # fmt: skip
    schema = pa.schema([
        ("pid", pa.string()), ("question", pa.string()), ("image", pa.string()), ("decoded_image", IMAGE),
        ("choices", pa.list_(pa.string())), ("unit", pa.string()), ("precision", pa.float64()), ("answer", pa.string()),
        ("question_type", pa.string()), ("answer_type", pa.string()), ("query", pa.string()), ("metadata", meta),
    ])  # fmt: skip
    _write(fx.root, "mathvista", "testmini-00000-of-00001.parquet", rows, schema)


def _mmmu(fx: Fixtures) -> None:
    img1, img2 = render("mmmu one", "JPEG"), render("mmmu two")
    specs = [  # (question, options, type, answer, images, model answer, exact, flex2)
        ("Which shape is in <image 1>? [q:mmmu-0]", ["circle", "square"], "multiple-choice", "B", (img1, None),
         "The image shows a square.\nFinal Answer: B", 1, 1),
        ("Compare the two pictures. [q:mmmu-1]", ["<image 1> is larger", "<image 2> is larger"], "multiple-choice",
         "A", (img1, img2), "Answer: (A)", 0, 1),
        ("How many sides? [q:mmmu-2] <image 1>", [], "open", "['4', 'four']", (img1, None),
         "It has four sides.\nFinal Answer: 4", 1, 1),
        ("Name the colour. <image 1> [q:mmmu-3]", [], "open", "red", (img2, None), "Final Answer: blue", 0, 0),
    ]  # fmt: skip
    rows = []
    for idx, (q, options, qtype, answer, (a, b), model, exact, flex2) in enumerate(specs):
        fx.oracle[f"mmmu-{idx}"] = model
        fx.expect[f"mmmu:validation:{idx}"] = {"exact": exact, "flex2": flex2}
        row = {"id": f"validation_Art_Theory_{idx + 1}", "question": q, "options": str(options),
               "explanation": "", "image_1": cell(a), "image_2": cell(b), "img_type": "['Photographs']",
               "answer": answer, "topic_difficulty": "Easy", "question_type": qtype, "subfield": "Art"}  # fmt: skip
        for k in range(3, 8):
            row[f"image_{k}"] = None
        rows.append(row)
    fields = [
        ("id", pa.string()),
        ("question", pa.string()),
        ("options", pa.string()),
        ("explanation", pa.string()),
    ]
    fields += [(f"image_{k}", IMAGE) for k in range(1, 8)]
    fields += [("img_type", pa.string()), ("answer", pa.string()), ("topic_difficulty", pa.string()),
               ("question_type", pa.string()), ("subfield", pa.string())]  # fmt: skip
    _write(fx.root, "mmmu", "validation-00000-of-00001.parquet", rows, pa.schema(fields))


MT_CONVERSATIONS = [  # (category, [(question, reference, model answer)])
    ("charts", [("Describe this chart. [q:mt-0-0]", "It is a bar chart of sales.", "A bar chart showing sales.")]),
    ("tables", [("What is in the first row? [q:mt-1-0]", "The first row lists 2019.", "2019 data."),
                ("And the total? [q:mt-1-1]", "The total is **42**.", "The total is 42.")]),
    ("charts", [("What trend do you see? [q:mt-2-0]", "Sales grow steadily.", "Growth."),
                ("Which year peaks? [q:mt-2-1]", "2021 peaks.", "UNRATEABLE 2021"),
                ("Why? [q:mt-2-2]", "Because of demand.", "Demand rose.")]),
]  # fmt: skip


def _mm_mt_bench(fx: Fixtures) -> None:
    rows = []
    for idx, (category, turns) in enumerate(MT_CONVERSATIONS):
        img = render(f"mt {idx}", "JPEG" if idx % 2 else "PNG")
        conv: list[dict[str, Any]] = []
        asked = []
        for t, (question, reference, model) in enumerate(turns):
            content: Any = [{"type": "image"}, {"type": "text", "text": question}] if t == 0 else question
            conv.append({"role": "user", "content": content})
            # current HF layout: reference content as a list of chunks (first conversation: plain string, older dump)
            conv.append(
                {
                    "role": "assistant",
                    "content": reference if idx == 0 else [{"type": "text", "text": reference}],
                }
            )
            fx.oracle[question.split("[q:")[1].rstrip("]")] = model
            asked.append(question)
            item_id = f"mm_mt_bench:eval:{idx}:t{t}"
            fx.questions[item_id] = list(asked)
            fx.images[item_id] = img
        rows.append({"category": category, "conversation": json.dumps(conv), "image": cell(img)})
    schema = pa.schema([("category", pa.string()), ("conversation", pa.string()), ("image", IMAGE)])
    _write(fx.root, "mm_mt_bench", "eval-00000-of-00001.parquet", rows, schema)
