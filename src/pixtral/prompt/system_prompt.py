"""A model folder's default system prompt (SYSTEM_PROMPT.txt: Mistral Small 3.1+, Magistral, Ministral 3).

Filled as the model cards' `load_system_prompt` does: `{name}` is the model's name (the last part of the
repo id or folder path), `{today}` and `{yesterday}` are ISO dates (YYYY-MM-DD). Only those three
placeholders are replaced (the cards use str.format, which would also turn `{{` into `{`; the published
prompts have no other braces). The prompt is used when a conversation has no system message of its own.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pixtral.checkpoint.formats import SYSTEM_PROMPT_FILE
from pixtral.errors import ConfigError


def fill_system_prompt(template: str, name: str, today: dt.date) -> str:
    yesterday = today - dt.timedelta(days=1)
    for key, value in (("name", name), ("today", today.isoformat()), ("yesterday", yesterday.isoformat())):
        template = template.replace("{" + key + "}", value)
    return template


def load_system_prompt(folder: Path, name: str, today: dt.date | None = None) -> str | None:
    """The folder's SYSTEM_PROMPT.txt, filled; None when the folder has none."""
    path = Path(folder) / SYSTEM_PROMPT_FILE
    if not path.is_file():
        return None
    try:
        template = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot be read as UTF-8 text ({e})") from None
    return fill_system_prompt(template, name, today or dt.date.today())


def with_default_system(
    messages: Sequence[Mapping[str, Any]], system: str | None
) -> Sequence[Mapping[str, Any]]:
    """messages, led by the default system prompt when none of them is a system message."""
    if system is None or not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        return messages
    if any(isinstance(m, Mapping) and m.get("role") == "system" for m in messages):
        return messages
    return [{"role": "system", "content": system}, *messages]
