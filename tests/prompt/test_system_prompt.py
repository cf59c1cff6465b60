"""The model folder's SYSTEM_PROMPT.txt: filled as the model cards' load_system_prompt does, used by the
engine for conversations without a system message, overridden by one (the CLI's --system)."""

from __future__ import annotations

import datetime as dt

from pixtral.prompt.system_prompt import fill_system_prompt, load_system_prompt, with_default_system

# The shape of Mistral-Small-3.1-24B-Instruct-2503's SYSTEM_PROMPT.txt (placeholders as published)
TEMPLATE = (
    "You are {name}, a Large Language Model (LLM) created by Mistral AI.\n"
    "The current date is {today}.\n"
    'When asked about "yesterday", use {yesterday}.'
)


def reference_fill(template: str, repo_id: str, today: dt.date) -> str:
    """The model cards' code: str.format with the repo's last part and ISO dates."""
    yesterday = today - dt.timedelta(days=1)
    return template.format(
        name=repo_id.split("/")[-1],
        today=today.strftime("%Y-%m-%d"),
        yesterday=yesterday.strftime("%Y-%m-%d"),
    )


def test_filled_like_the_model_cards():
    today = dt.date(2025, 3, 1)  # yesterday crosses a month (and, in 2024, a leap day)
    repo = "mistralai/Mistral-Small-3.1-24B-Instruct-2503"
    assert fill_system_prompt(TEMPLATE, repo.split("/")[-1], today) == reference_fill(TEMPLATE, repo, today)
    assert "2025-02-28" in fill_system_prompt(TEMPLATE, "m", today)


def test_folder_prompt_and_default_use(tmp_path):
    assert load_system_prompt(tmp_path, "m") is None
    (tmp_path / "SYSTEM_PROMPT.txt").write_text(TEMPLATE, encoding="utf-8")
    prompt = load_system_prompt(tmp_path, "Magistral-Small-2509", dt.date(2025, 9, 18))
    assert prompt.startswith("You are Magistral-Small-2509,") and "2025-09-17" in prompt
    user = [{"role": "user", "content": "hi"}]
    assert with_default_system(user, prompt) == [{"role": "system", "content": prompt}, *user]
    own = [{"role": "system", "content": "Be terse."}, *user]
    assert with_default_system(own, prompt) is own  # --system / a request's own system message wins
    assert with_default_system(user, None) is user


def test_engine_uses_the_folder_prompt_unless_the_chat_has_one(tmp_path):
    from pixtral.checkpoint.loader import save_model
    from pixtral.config import PRESETS
    from pixtral.engine.engine import Engine
    from pixtral.prompt.tokenizer import write_tokenizer_for
    from tests.factories import random_model

    config = PRESETS["tiny-mistral3"]
    folder = tmp_path / "Mistral-Small-3.1-24B-Instruct-2503"
    save_model(random_model(config), folder, "native")
    write_tokenizer_for(config, folder)
    (folder / "SYSTEM_PROMPT.txt").write_text(TEMPLATE, encoding="utf-8")
    engine = Engine.load(folder)
    try:
        user = [{"role": "user", "content": "hi"}]
        expected = reference_fill(TEMPLATE, folder.name, dt.date.today())
        assert (
            engine.encode(user).token_ids
            == engine.encode([{"role": "system", "content": expected}, *user]).token_ids
        )
        terse = [{"role": "system", "content": "Be terse."}, *user]
        assert engine.encode(terse).token_ids != engine.encode(user).token_ids
        decoded = engine.tokenizer.decode(engine.encode(user).token_ids)
        assert "You are Mistral-Small-3.1-24B-Instruct-2503" in decoded
    finally:
        engine.close()
