"""`pixtral generate` / `pixtral chat` take the engine's sampling controls, logprobs and tools (the same as the
server's, docs/api.md), on the bundled demo model."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from pixtral.cli import TerminalChat, build_parser, main
from pixtral.prompt.chat import encode_chat
from pixtral.prompt.tokenizer import packaged_tokenizer
from pixtral.prompt.tool_calls import tool_calls_token

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def generate_json(capsys, *args: str) -> dict:
    assert main(["generate", "--prompt", "Name the colour.", "--json", "--max-tokens", "4", *args]) == 0
    return json.loads(capsys.readouterr().out)


def test_every_sampling_control_reaches_the_engines_params():
    args = build_parser().parse_args(
        ["generate", "--prompt", "x", "--min-p", "0.1", "--presence-penalty", "0.5", "--frequency-penalty",
         "-1", "--repetition-penalty", "1.3", "--min-tokens", "2", "--ignore-eos", "--stop-token-id", "7",
         "--stop-token-id", "9", "--logit-bias", "1500=-100", "--logit-bias", "42=3.5"]
    )  # fmt: skip
    from pixtral.cli import _sampling_params

    p = _sampling_params(args, 5)
    assert (p.min_p, p.presence_penalty, p.frequency_penalty, p.repetition_penalty) == (0.1, 0.5, -1.0, 1.3)
    assert (p.min_tokens, p.ignore_eos, p.stop_token_ids, p.logprobs) == (2, True, [7, 9], 5)
    assert p.logit_bias == {1500: -100.0, 42: 3.5}


def test_logit_bias_and_stop_token_ids_steer_the_bundled_model(capsys):
    forced = generate_json(capsys, "--logit-bias", "1050=100")
    assert forced["token_ids"] == [1050] * 4 and forced["finish_reason"] == "length"
    stopped = generate_json(capsys, "--logit-bias", "1050=100", "--stop-token-id", "1050")
    assert stopped["token_ids"] == [] and stopped["finish_reason"] == "stop"


def test_logprobs_with_json_are_one_per_token_from_a_distribution(capsys):
    out = generate_json(capsys, "--logprobs", "3")
    assert len(out["logprobs"]) == len(out["token_ids"]) == out["completion_tokens"]
    for entry, token in zip(out["logprobs"], out["token_ids"], strict=True):
        assert entry["token_id"] == token and entry["logprob"] <= 0
        top = [lp for _, lp in entry["top"]]
        assert len(top) == 3 and top == sorted(top, reverse=True)
        assert math.isclose(top[0], max(top)) and entry["logprob"] <= top[0] + 1e-6  # greedy: the top one
        assert entry["top"][0][0] == token


def test_wrong_sampling_and_tools_inputs_are_one_error_line(tmp_path, capsys):
    assert main(["generate", "--prompt", "x", "--logit-bias", "nope"]) == 2
    assert "--logit-bias takes ID=BIAS" in capsys.readouterr().err
    assert main(["generate", "--prompt", "x", "--logprobs", "3"]) == 2
    assert "add --json" in capsys.readouterr().err
    bad = tmp_path / "tools.json"
    bad.write_text(json.dumps([{"type": "function", "function": {"name": "has space"}}]))
    assert main(["generate", "--prompt", "x", "--tools", str(bad)]) == 2
    assert f"--tools {bad}: 0.function.name" in capsys.readouterr().err
    assert main(["generate", "--prompt", "x", "--tools", str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err


def test_generate_puts_the_tools_in_the_prompt_as_mistral_common_does(tmp_path, capsys):
    tools_file = tmp_path / "tools.json"
    tools_file.write_text(json.dumps(TOOLS))
    out = generate_json(capsys, "--tools", str(tools_file))
    plain = generate_json(capsys)

    from mistral_common.protocol.instruct.messages import UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest
    from mistral_common.protocol.instruct.tool_calls import Function, Tool

    from pixtral.default_model import default_model_path
    from pixtral.prompt.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(default_model_path())  # the demo model's own (small) vocabulary
    request = ChatCompletionRequest(
        messages=[UserMessage(content="Name the colour.")],
        tools=[Tool(function=Function(**TOOLS[0]["function"]))],
    )
    assert (
        out["prompt_tokens"] == len(tokenizer.encode_chat_completion(request).tokens) > plain["prompt_tokens"]
    )
    assert out["tool_calls"] == []  # the demo model calls nothing


class ScriptedEngine:
    """Answers the first message with a call of get_weather (the ids mistral-common's tokenizer gives it),
    and anything after with plain text; records what it was sent."""

    def __init__(self) -> None:
        self.tokenizer = packaged_tokenizer()
        self.sent: list = []

    def stream(self, messages, params, tools=None):
        self.sent.append((list(messages), tools))
        tekken = self.tokenizer.instruct_tokenizer.tokenizer
        if len(self.sent) == 1:
            call = '[{"name": "get_weather", "arguments": {"city": "Paris"}}]'
            ids = [tool_calls_token(self.tokenizer), *tekken.encode(call, bos=False, eos=False)]
            yield SimpleNamespace(text=tekken.decode(ids), token_ids=ids, reasoning="")
        else:
            yield SimpleNamespace(text="It is sunny.", token_ids=[1100], reasoning="")


def test_chat_prints_a_tool_call_and_sends_the_result_back(capsys):
    engine = ScriptedEngine()
    chat = TerminalChat(engine, params=None, tools=TOOLS)
    assert chat.handle("What is the weather in Paris?")
    call = chat.history[-1]["tool_calls"][0]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert f"(tool call {call['id']}: " in capsys.readouterr().out
    assert chat.handle(f"/tool {call['id']} sunny, 22 C")
    messages, tools = engine.sent[-1]
    assert tools == TOOLS and messages[-1] == {
        "role": "tool",
        "tool_call_id": call["id"],
        "content": "sunny, 22 C",
    }
    assert chat.history[-1] == {"role": "assistant", "content": "It is sunny."}
    # the conversation the chat keeps is one mistral-common encodes (call, result, answer)
    next_turn = [*chat.history, {"role": "user", "content": "Thanks."}]
    assert encode_chat(next_turn, packaged_tokenizer(), tools=TOOLS).token_ids


@pytest.mark.parametrize("line", ["/tool", "/tool only-an-id"])
def test_chat_tool_without_tools_or_arguments_says_how(capsys, line):
    chat = TerminalChat(ScriptedEngine(), params=None, tools=None if line == "/tool" else TOOLS)
    assert chat.handle(line)
    assert "(usage: /tool CALL_ID RESULT" in capsys.readouterr().out and chat.history == []
