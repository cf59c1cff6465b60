"""Magistral's [THINK] ... [/THINK] blocks: the engine streams their text as `reasoning` (the API's
reasoning_content), the rest as the answer; both equal mistral-common's decode of their ids."""

from __future__ import annotations

import json
import queue
from dataclasses import dataclass, field

import pytest

from pixtral.checkpoint.loader import save_model
from pixtral.config import with_text
from pixtral.engine.engine import Engine
from pixtral.engine.sampling import SamplingParams
from pixtral.engine.scheduler import Finished
from tests.factories import MISTRAL3_CONFIG, random_model
from tests.prompt.family_tekken import VOCAB, write_family_tekken


@dataclass
class ScriptedRequest:
    """What the scheduler hands the engine: generated ids, then Finished."""

    ids: list[int]
    events: queue.Queue = field(default_factory=queue.Queue)

    def __post_init__(self) -> None:
        for i in self.ids:
            self.events.put(i)
        self.events.put(Finished("stop"))


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    folder = tmp_path_factory.mktemp("magistral")
    save_model(random_model(with_text(MISTRAL3_CONFIG, vocab_size=VOCAB)), folder, "native")
    write_family_tekken(folder, "v13", 14, 280, 2)
    engine = Engine.load(folder)
    yield engine
    engine.close()


def run(engine, ids, stop=()):
    events = list(engine._stream_text(ScriptedRequest(ids), SamplingParams(stop=list(stop)), 0))
    return (
        "".join(e.reasoning for e in events),
        "".join(e.text for e in events),
        [i for e in events for i in e.token_ids],
    )


def test_think_block_goes_to_reasoning(engine):
    inner = engine.tokenizer.instruct_tokenizer.tokenizer
    begin, end = engine.think_ids
    thought = inner.encode("Let me see: 2 + 2 = 4.", bos=False, eos=False)
    answer = inner.encode("The answer is 4.", bos=False, eos=False)
    reasoning, text, ids = run(engine, [begin, *thought, end, *answer])
    assert reasoning == inner.decode(thought) and text == inner.decode(answer)
    assert ids == [begin, *thought, end, *answer]  # every id reported once
    # a stop string inside the reasoning does not end the answer
    reasoning, text, _ = run(engine, [begin, *thought, end, *answer], stop=["2 + 2"])
    assert reasoning == inner.decode(thought) and text == inner.decode(answer)


def test_without_think_tokens_everything_is_the_answer(engine):
    inner = engine.tokenizer.instruct_tokenizer.tokenizer
    answer = inner.encode("Plain answer.", bos=False, eos=False)
    assert run(engine, answer)[:2] == ("", inner.decode(answer))


@pytest.mark.parametrize("show", [False, True])
def test_cli_generate_hides_thinking_unless_asked(monkeypatch, capsys, show):
    from pixtral import cli
    from pixtral.engine.engine import Completion, StreamEvent

    class Scripted:
        model_name, untrained = "magistral", True

        def stream(self, messages, params, tools=None):
            yield StreamEvent("", [34, 1001, 35], None, 5, reasoning="Let me think.")
            yield StreamEvent("Four.", [1002], "stop", 5)

        def generate(self, messages, params, tools=None):
            return Completion("Four.", [34, 1001, 35, 1002], 5, "stop", "Let me think.")

    monkeypatch.setattr(cli, "_load_engine", lambda args: Scripted())
    flags = ["--show-thinking"] if show else []
    assert cli.main(["generate", "--prompt", "2+2?", *flags]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "Four." and (("Let me think." in err) == show)
    assert cli.main(["generate", "--prompt", "2+2?", "--json", *flags]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["text"] == "Four." and body.get("reasoning") == ("Let me think." if show else None)
