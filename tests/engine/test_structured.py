"""Structured output (xgrammar): every sampled token follows the grammar, so the answers parse and validate.
Oracles: `json` and `jsonschema` on the decoded text, `re.fullmatch` for regexes."""

from __future__ import annotations

import json
import re
import time

import jsonschema
import pytest

pytest.importorskip("xgrammar")

from pixtral.engine.sampling import SamplingParams  # noqa: E402
from pixtral.engine.scheduler import Finished, Scheduler  # noqa: E402
from pixtral.engine.structured import Grammars, StructuredOutput  # noqa: E402
from pixtral.errors import InputError  # noqa: E402
from pixtral.prompt.tokenizer import packaged_tokenizer  # noqa: E402
from tests.factories import TEST_CONFIG  # noqa: E402

EOS = TEST_CONFIG.eos_id
SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"enum": ["yes", "no", "maybe"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 999},
        "ok": {"type": "boolean"},
    },
    "required": ["answer", "count", "ok"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def grammars():
    # The test model's 1200 ids are tekken's 1000 control tokens and its first 200 byte tokens: every ASCII
    # character is one token, so any JSON can be written with them.
    return Grammars(packaged_tokenizer(), TEST_CONFIG.text.vocab_size, EOS)


def run(model, grammars, structured, seeds, max_tokens=60, temperature=1.0, bias=None):
    scheduler = Scheduler(model)
    tekken = packaged_tokenizer().instruct_tokenizer.tokenizer
    requests = []
    for seed in seeds:
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            seed=seed,
            logit_bias=bias or {},
            structured=grammars.compile(structured),
        )
        requests.append(scheduler.submit([1, 3, 1100, 1101, 4], [], params, frozenset({EOS})))
    out = []
    for request in requests:
        tokens, deadline = [], time.time() + 120
        while time.time() < deadline:
            item = request.events.get(timeout=120)
            if isinstance(item, Finished):
                break
            tokens.append(item)
        assert item.reason == "stop", (item, tekken.decode(tokens))
        out.append(tekken.decode(tokens))
    scheduler.close()
    return out


def test_json_schema_answers_validate_on_100_seeded_samples_at_temperature_1(test_model, grammars):
    texts = run(test_model, grammars, StructuredOutput.json_schema(SCHEMA), range(100))
    for text in texts:
        jsonschema.validate(json.loads(text), SCHEMA)
    assert len(set(texts)) > 10  # really sampled, not one forced answer


def test_the_grammar_masks_after_logit_bias_so_even_a_forced_token_cannot_break_the_json(
    test_model, grammars
):
    # 'x' at +100 is what the model says without the grammar; with it, '{' must come first, then the
    # closing brace (+50) beats every other allowed token.
    bias = {1000 + ord("x"): 100.0, 1000 + ord("}"): 50.0}

    def params(structured):
        return SamplingParams(max_tokens=8, temperature=1.0, seed=1, logit_bias=bias, structured=structured)

    scheduler = Scheduler(test_model)
    free = scheduler.submit([1, 3, 1100, 4], [], params(None), frozenset({EOS}))
    first = free.events.get(timeout=60)
    assert first == 1000 + ord("x")
    scheduler.close()
    texts = run(test_model, grammars, StructuredOutput("json_object"), range(3), bias=bias)
    assert texts == ["{}"] * 3


def test_regex_and_choice(test_model, grammars):
    for text in run(test_model, grammars, StructuredOutput("regex", r"[0-9]{3}-[a-c]{2}"), range(10)):
        assert re.fullmatch(r"[0-9]{3}-[a-c]{2}", text)
    options = ["red", "green (light)", "blue.sky"]
    texts = run(test_model, grammars, StructuredOutput.choice(options), range(20))
    assert set(texts) <= set(options) and len(set(texts)) > 1


def test_an_invalid_schema_or_regex_is_an_input_error(grammars):
    with pytest.raises(InputError, match="json schema"):
        grammars.compile(StructuredOutput("json_schema", '{"type": "object", "properties": 5}'))
    with pytest.raises(InputError, match="regex"):
        grammars.compile(StructuredOutput("regex", "(unclosed"))
    with pytest.raises(InputError, match="ignore_eos"):
        SamplingParams(structured=StructuredOutput("json_object"), ignore_eos=True)
