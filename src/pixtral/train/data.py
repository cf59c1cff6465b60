"""Training data: conversations -> token ids, a loss mask over assistant tokens, and images.

Conversations are OpenAI-shaped (`{"messages": [{"role": ..., "content": str | [parts]}, ...]}`), one per
line of a JSONL file (image paths and `file://` URLs relative to the file), or rows of a Hugging Face dataset
with a `messages` column (and optionally an `images` column that fills `{"type": "image"}` parts in order).
An assistant message may carry `"weight": 0` to keep it out of the loss (mistral-common finetuning format).

Everything is encoded by mistral-common itself, in its finetuning mode (the conversation ends with an
assistant turn): the template, image blocks and the pixels are the reference's. The loss mask is read off
mistral-common's output: the tokens between each `[/INST]` and the following `</s>` (both control tokens,
which text never produces) are the assistant's, the `</s>` included; each span is cross-checked against
mistral-common's own `encode_assistant_message`.

Samples longer than the context are dropped, or cut at a text boundary: never inside an
`[IMG]...[IMG_END]` block, and the images whose blocks fall after the cut are dropped with them, so the
number of `[IMG]` tokens always equals the number of patch features (docs/architecture.md, "Pitfalls").
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mistral_common.exceptions import MistralCommonException
from mistral_common.protocol.instruct.messages import AssistantMessage, FinetuningAssistantMessage
from mistral_common.protocol.instruct.normalize import get_normalizer
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.protocol.instruct.validator import ValidationMode, get_validator
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from pixtral.errors import InputError, PixtralError
from pixtral.prompt import chat as prompt_chat
from pixtral.prompt.images import LOCAL_MEDIA, MediaPolicy

log = logging.getLogger("pixtral.train")


class DataError(PixtralError):
    """Training data that cannot be read or encoded: the message names the file, line and what to fix."""


@dataclass(frozen=True)
class SpecialIds:
    bos: int
    eos: int
    end_inst: int
    image: int
    image_break: int
    image_end: int

    @classmethod
    def of(cls, tokenizer: MistralTokenizer) -> SpecialIds:
        inner = tokenizer.instruct_tokenizer.tokenizer
        image_encoder = tokenizer.instruct_tokenizer.image_encoder
        special = image_encoder.special_ids if image_encoder is not None else None
        return cls(
            bos=inner.bos_id,
            eos=inner.eos_id,
            end_inst=inner.get_special_token("[/INST]"),
            image=special.img if special else inner.get_special_token("[IMG]"),
            image_break=special.img_break if special else inner.get_special_token("[IMG_BREAK]"),
            image_end=special.img_end if special else inner.get_special_token("[IMG_END]"),
        )


@dataclass
class Sample:
    """One encoded conversation."""

    token_ids: list[int]
    loss_mask: list[bool]  # True at tokens the model is trained to predict (assistant tokens and their </s>)
    n_images: int  # images kept (all of them unless truncation dropped trailing ones)
    source: str  # "file.jsonl:12", for messages

    def __len__(self) -> int:
        return len(self.token_ids)


@dataclass
class DataStats:
    samples: int = 0
    truncated: int = 0
    dropped_too_long: int = 0
    dropped_no_loss_tokens: int = 0
    tokens: int = 0
    loss_tokens: int = 0
    images: int = 0

    def warn(self, name: str, seq_len: int) -> None:
        if self.truncated:
            log.warning(
                "%s: %d sample(s) longer than seq_len=%d were cut at a text boundary",
                name,
                self.truncated,
                seq_len,
            )
        if self.dropped_too_long:
            log.warning(
                "%s: %d sample(s) longer than seq_len=%d were dropped", name, self.dropped_too_long, seq_len
            )
        if self.dropped_no_loss_tokens:
            log.warning(
                "%s: %d sample(s) had no assistant tokens left to learn from and were dropped",
                name,
                self.dropped_no_loss_tokens,
            )


# ---- reading records ---------------------------------------------------------------------------------


@dataclass
class Record:
    messages: list[dict[str, Any]]
    source: str
    base_dir: Path | None = None  # relative image paths are resolved against it
    images: list[Any] = field(default_factory=list)  # for {"type": "image"} parts without data


def read_records(source: str | Path) -> list[Record]:
    """A JSONL file, `hf:NAME[:SPLIT]` (datasets.load_dataset) or a folder saved with datasets'
    save_to_disk."""
    text = str(source)
    if text.startswith("hf:"):
        name, _, split = text[3:].partition(":")
        return _hf_records(name, split or "train")
    path = Path(text)
    if path.is_dir():
        return _hf_records(str(path), "train", from_disk=True)
    if not path.is_file():
        raise DataError(
            f"training data {text!r} does not exist: give a JSONL file, hf:NAME or a dataset folder"
        )
    records = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path.name}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from e
            records.append(_record(row, where, path.parent))
    if not records:
        raise DataError(f"{path}: no conversations (expected one JSON object per line)")
    return records


def _record(row: Any, where: str, base_dir: Path | None) -> Record:
    if isinstance(row, Mapping) and "messages" in row:
        messages, images = row["messages"], list(row.get("images") or [])
    elif isinstance(row, list):
        messages, images = row, []
    else:
        raise DataError(f"{where}: expected {{'messages': [...]}} (OpenAI chat format)")
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list")
    return Record(messages=messages, source=where, base_dir=base_dir, images=images)


def _hf_records(name: str, split: str, from_disk: bool = False) -> list[Record]:
    try:
        import datasets  # here, not at the top: it takes seconds to import and only hub / disk datasets need it
    except ImportError as e:
        raise DataError("reading a Hugging Face dataset needs the datasets package") from e
    try:
        ds = datasets.load_from_disk(name) if from_disk else datasets.load_dataset(name, split=split)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[split]
    except Exception as e:  # network, missing split, bad folder: all user-fixable
        raise DataError(f"cannot load the dataset {name!r} (split {split!r}): {e}") from e
    if "messages" not in ds.column_names:
        raise DataError(f"dataset {name!r} has no 'messages' column (columns: {', '.join(ds.column_names)})")
    return [_record(dict(row), f"{name}[{i}]", None) for i, row in enumerate(ds)]


# ---- encoding ----------------------------------------------------------------------------------------


def _as_finetuning(tokenizer: MistralTokenizer) -> MistralTokenizer:
    """The same tokenizer with mistral-common's finetuning validation (ends with an assistant turn)."""
    if tokenizer.mode == ValidationMode.finetuning:
        return tokenizer
    cached = _FINETUNING.get(id(tokenizer))
    if cached is None or cached[0] is not tokenizer:
        inner = tokenizer.instruct_tokenizer.tokenizer
        normalizer = get_normalizer(tokenizer.version, getattr(inner, "model_settings_builder", None))
        validator = get_validator(tokenizer.version, ValidationMode.finetuning)
        cached = (tokenizer, MistralTokenizer(tokenizer.instruct_tokenizer, validator, normalizer))
        _FINETUNING[id(tokenizer)] = cached
    return cached[1]


_FINETUNING: dict[int, tuple[MistralTokenizer, MistralTokenizer]] = {}


def _resolve_images(record: Record) -> list[dict[str, Any]]:
    """Messages with relative image paths made absolute and bare {"type": "image"} parts filled."""
    pending = list(record.images)
    out = []
    for message in record.messages:
        if not isinstance(message, Mapping) or not isinstance(message.get("content"), list):
            out.append(message)
            continue
        parts = []
        for part in message["content"]:
            if isinstance(part, Mapping) and part.get("type") == "image_url" and record.base_dir is not None:
                url = part.get("image_url")
                url = url.get("url") if isinstance(url, Mapping) else url
                if isinstance(url, str) and _is_relative_path(url):
                    part = {"type": "image_url", "image_url": {"url": str(record.base_dir / url)}}
            elif isinstance(part, Mapping) and part.get("type") == "image" and part.get("image") is None:
                if not pending:
                    raise DataError(f"{record.source}: more image parts than entries in 'images'")
                image = pending.pop(0)
                if isinstance(image, str) and record.base_dir is not None and _is_relative_path(image):
                    image = str(record.base_dir / image)
                part = {"type": "image", "image": image}
            parts.append(part)
        out.append({**message, "content": parts})
    return out


def _is_relative_path(url: str) -> bool:
    return ":" not in url.split("/")[0] and not url.startswith("/")


def _to_mistral_messages(
    messages: list[dict[str, Any]], tokenizer: MistralTokenizer, media: MediaPolicy, source: str
) -> list[Any]:
    try:
        mistral = prompt_chat.to_mistral_messages(
            messages, tokenizer, media=media, allow_final_assistant=True
        )
    except InputError as e:
        raise DataError(f"{source}: {e}") from e
    converted = []
    for index, (message, mc) in enumerate(zip(messages, mistral, strict=True)):
        if isinstance(mc, AssistantMessage):
            weight = message.get("weight")
            if weight is not None and weight not in (0, 1):
                raise DataError(f"{source}: message {index}: 'weight' must be 0 or 1, got {weight!r}")
            mc = FinetuningAssistantMessage(content=mc.content, weight=weight)
        converted.append(mc)
    return converted


def encode_conversation(
    messages: Sequence[Mapping[str, Any]] | Record,
    tokenizer: MistralTokenizer,
    *,
    media: MediaPolicy = LOCAL_MEDIA,
    source: str = "conversation",
) -> tuple[Sample, list[np.ndarray]]:
    """Encode a conversation ending with an assistant turn -> (Sample, images as (3, H, W) float32)."""
    record = messages if isinstance(messages, Record) else Record(list(messages), source)
    resolved = _resolve_images(record)
    ft = _as_finetuning(tokenizer)
    mc_messages = _to_mistral_messages(resolved, ft, media, record.source)
    try:
        tokenized = ft.encode_chat_completion(ChatCompletionRequest(messages=mc_messages))
    except (MistralCommonException, ValueError, AssertionError) as e:
        raise DataError(
            f"{record.source}: cannot encode the conversation ({e}); it must alternate user / assistant "
            "turns and end with an assistant message"
        ) from e
    ids = list(tokenized.tokens)
    mask = assistant_mask(ids, mc_messages, ft, record.source)
    images = [np.ascontiguousarray(im, dtype=np.float32) for im in tokenized.images]
    return Sample(ids, mask, len(images), record.source), images


def assistant_mask(
    ids: list[int], mc_messages: list[Any], tokenizer: MistralTokenizer, source: str = "conversation"
) -> list[bool]:
    """True on every assistant token (and its </s>) of weight != 0, read off mistral-common's encoding."""
    sp = SpecialIds.of(tokenizer)
    # Consecutive assistant messages are merged by mistral-common into one turn.
    turns: list[list[Any]] = []
    previous = None
    for m in mc_messages:
        if m.role == "assistant":
            if previous == "assistant":
                turns[-1].append(m)
            else:
                turns.append([m])
        if m.role != "system":
            previous = m.role
    spans = []
    i = 0
    while i < len(ids):
        if ids[i] == sp.end_inst:
            end = i + 1
            while end < len(ids) and ids[end] != sp.eos:
                end += 1
            if end < len(ids):
                spans.append((i + 1, end + 1))  # the </s> is predicted too
            i = end
        i += 1
    if len(spans) != len(turns):
        raise DataError(f"{source}: found {len(spans)} assistant spans for {len(turns)} assistant turns")
    mask = [False] * len(ids)
    instruct = tokenizer.instruct_tokenizer
    for (start, end), turn in zip(spans, turns, strict=True):
        if len(turn) == 1 and isinstance(
            turn[0].content, str
        ):  # check against mistral-common: check the span against mistral-common's own encoding
            expected = instruct.encode_assistant_message(AssistantMessage(content=turn[0].content), False)
            if ids[start:end] != expected:
                raise DataError(f"{source}: assistant span does not match mistral-common's encoding")
        weights = [getattr(m, "weight", None) for m in turn]
        if all(w == 0 for w in weights):
            continue
        for t in range(start, end):
            mask[t] = True
    return mask


# ---- fitting into the context -------------------------------------------------------------------------


def image_blocks(ids: Sequence[int], sp: SpecialIds) -> list[tuple[int, int]]:
    """[start, end) of every [IMG]...[IMG_END] block, in order."""
    blocks, start = [], None
    for i, t in enumerate(ids):
        if t in (sp.image, sp.image_break):
            if start is None:
                start = i
        elif t == sp.image_end:
            blocks.append((i if start is None else start, i + 1))
            start = None
        else:
            start = None
    return blocks


def fit_to_context(sample: Sample, seq_len: int, sp: SpecialIds, overflow: str) -> tuple[Sample | None, str]:
    """-> (sample or None, what happened: "ok" | "truncated" | "too_long" | "no_loss_tokens").

    The model sees seq_len tokens; a row is cut at a text boundary (never inside an image block), and images
    whose blocks are cut off are dropped along with them."""
    if not any(sample.loss_mask):
        return None, "no_loss_tokens"
    if len(sample) <= seq_len:
        return sample, "ok"
    if overflow == "drop":
        return None, "too_long"
    cut = seq_len
    blocks = image_blocks(sample.token_ids, sp)
    for start, end in blocks:
        if start < cut < end:
            cut = start  # move the cut before the block it would split
    n_images = sum(1 for _, end in blocks if end <= cut)
    mask = sample.loss_mask[:cut]
    if not any(mask):
        return None, "no_loss_tokens"
    return Sample(sample.token_ids[:cut], mask, n_images, sample.source), "truncated"


# ---- the dataset -------------------------------------------------------------------------------------


class ConversationDataset:
    """Encoded samples in memory (ids and masks); images are re-encoded on demand (an LRU cache keeps the
    recent ones), so a large image dataset does not sit in memory as float32 pixels."""

    def __init__(
        self,
        records: list[Record],
        tokenizer: MistralTokenizer,
        seq_len: int,
        overflow: str = "truncate",
        media: MediaPolicy = LOCAL_MEDIA,
        name: str = "data",
        image_cache_size: int = 256,
    ) -> None:
        self.tokenizer, self.media, self.seq_len = tokenizer, media, seq_len
        self.special = SpecialIds.of(tokenizer)
        self.records: list[Record] = []
        self.samples: list[Sample] = []
        self.stats = DataStats()
        for record in records:
            sample, images = encode_conversation(record, tokenizer, media=media)
            fitted, what = fit_to_context(sample, seq_len, self.special, overflow)
            if what == "truncated":
                self.stats.truncated += 1
            elif what == "too_long":
                self.stats.dropped_too_long += 1
            elif what == "no_loss_tokens":
                self.stats.dropped_no_loss_tokens += 1
            if fitted is None:
                continue
            self.records.append(record)
            self.samples.append(fitted)
            self.stats.tokens += len(fitted)
            self.stats.loss_tokens += sum(fitted.loss_mask)
            self.stats.images += fitted.n_images
        self.stats.samples = len(self.samples)
        self.stats.warn(name, seq_len)
        if not self.samples:
            raise DataError(f"{name}: no usable samples (all were too long or had no assistant tokens)")
        self._images = functools.lru_cache(maxsize=image_cache_size)(self._encode_images)

    def __len__(self) -> int:
        return len(self.samples)

    def lengths(self) -> list[int]:
        return [len(s) for s in self.samples]

    def images(self, index: int) -> list[np.ndarray]:
        return self._images(index)

    def _encode_images(self, index: int) -> list[np.ndarray]:
        sample = self.samples[index]
        if sample.n_images == 0:
            return []
        again, images = encode_conversation(self.records[index], self.tokenizer, media=self.media)
        if again.token_ids[: len(sample)] != sample.token_ids:
            raise DataError(f"{sample.source}: encoding changed between two reads (an image file changed?)")
        return images[: sample.n_images]


def load_dataset(
    source: str | Path,
    tokenizer: MistralTokenizer,
    seq_len: int,
    overflow: str = "truncate",
    name: str | None = None,
) -> ConversationDataset:
    return ConversationDataset(read_records(source), tokenizer, seq_len, overflow, name=name or str(source))
