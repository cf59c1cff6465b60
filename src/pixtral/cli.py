"""The `pixtral` command: thin argument parsing over the engine, the checkpoint layer and the other tools."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
from dataclasses import asdict
from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from pixtral import __version__
from pixtral.benchmark import add_bench_parser
from pixtral.config import PRESETS, STREAMED_PRESETS, family_member, preset
from pixtral.default_model import UNTRAINED_MARKER
from pixtral.errors import InputError, PixtralError
from pixtral.evals.cli import add_eval_parser
from pixtral.model_options import add_load_options, add_model_option, load_engine
from pixtral.prompt.images import load_image
from pixtral.prompt.tool_calls import split_tool_calls
from pixtral.scheduler_options import add_scheduler_options
from pixtral.serve.cli import add_serve_parser
from pixtral.synthetic.cli import add_synthetic_parser
from pixtral.train.cli import add_train_parser

EXAMPLES = """examples:
  pixtral generate --image examples/sample.png --prompt "Describe the image."
  pixtral generate --model mistralai/Pixtral-12B-2409 --image a.png --image b.jpg --prompt "Compare them." --dtype bfloat16
  pixtral chat --model ./my-model
  pixtral init --out ./tiny --preset tiny
  pixtral convert ./tiny ./tiny-hf --to hf
  pixtral convert ./tiny ./tiny.gguf --to gguf --gguf-type q8_0
  pixtral init --out ./pixtral-12b-random --preset 12b
  pixtral generate --model ./pixtral-12b-random --quantize int8 --dtype bfloat16 --prompt "Hi"
  pixtral info ./tiny-hf
  pixtral serve --model ./my-model --port 8000
  pixtral eval --task chartqa --endpoint http://127.0.0.1:8000/v1 --output-dir runs/chartqa
  pixtral train --config examples/train/config.toml
  pixtral bench --preset small
  pixtral synth --out data/synth --split train --n 1000 --max-side 256

--model accepts a local folder in Mistral native format (params.json + consolidated.safetensors) or Hugging Face
format (config.json + model*.safetensors), or a hub id; omitted, the bundled default model is used.
"""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args) or 0
    except PixtralError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # permission denied, not a directory, disk full...: the user's file system
        print(f"error: {describe_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def describe_os_error(e: OSError) -> str:
    """'PATH: Permission denied' (the path first, as the user named it), not '[Errno 13] ...'."""
    if e.filename is None:
        return e.strerror or str(e)
    path = str(e.filename) if e.filename2 is None else f"{e.filename} -> {e.filename2}"
    return f"{path}: {e.strerror or e}"


def package_version() -> str:
    """The installed distribution's version (what pip sees), else the source tree's."""
    try:
        return importlib.metadata.version("pixtral")
    except importlib.metadata.PackageNotFoundError:
        return __version__


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _subparser(sub, name: str, examples: str, **kwargs) -> argparse.ArgumentParser:
    """A sub-command whose --help ends with its examples (descriptions keep their line breaks)."""
    return sub.add_parser(
        name, epilog=examples, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixtral",
        description="Run, serve, evaluate and train Pixtral vision-language models.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_generate(sub)
    _add_chat(sub)
    _add_init(sub)
    _add_convert(sub)
    _add_info(sub)
    add_serve_parser(sub)
    add_eval_parser(sub)
    add_train_parser(sub)
    add_bench_parser(sub)
    add_synthetic_parser(sub)
    return parser


# ---- shared options -----------------------------------------------------------------------------


def _model_options(p: argparse.ArgumentParser) -> None:
    add_model_option(p)
    add_load_options(
        p, "CPU threads for torch (default: torch's choice; on a busy machine fewer is often faster)"
    )
    add_scheduler_options(p)


def _sampling_options(p: argparse.ArgumentParser, temperature: float) -> None:
    p.add_argument("--max-tokens", type=int, default=256, help="most tokens to generate (default 256)")
    p.add_argument(
        "--temperature",
        type=float,
        default=temperature,
        help=f"0 = greedy (default {temperature}); Mistral suggests 0.35 for chat",
    )
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0 = off)")
    p.add_argument(
        "--top-k", type=int, default=0, help="sample among the k most likely tokens (default 0 = off)"
    )
    p.add_argument("--seed", type=int, help="random seed: the same seed gives the same tokens")
    p.add_argument(
        "--stop", action="append", default=[], metavar="TEXT", help="stop before this text (repeatable)"
    )
    g = p.add_argument_group("more sampling controls (as vLLM's; docs/api.md has their formulas)")
    g.add_argument(
        "--min-p", type=float, default=0.0, help="drop tokens below min_p x the top one's probability"
    )
    g.add_argument("--presence-penalty", type=float, default=0.0, help="-2..2, on tokens generated at all")
    g.add_argument(
        "--frequency-penalty", type=float, default=0.0, help="-2..2, per time a token was generated"
    )
    g.add_argument(
        "--repetition-penalty", type=float, default=1.0, help="> 0, on prompt and generated tokens (1 = off)"
    )
    g.add_argument("--min-tokens", type=int, default=0, help="no end of generation before this many tokens")
    g.add_argument("--ignore-eos", action="store_true", help="go on past the end-of-sequence token")
    g.add_argument(
        "--stop-token-id", type=int, action="append", default=[], metavar="ID", help="end at this token id"
    )
    g.add_argument(
        "--logit-bias",
        action="append",
        default=[],
        metavar="ID=BIAS",
        help="add BIAS (-100..100) to token ID's logit (repeatable)",
    )


def _logit_bias(pairs: list[str]) -> dict[int, float]:
    bias = {}
    for pair in pairs:
        token, _, value = pair.partition("=")
        try:
            bias[int(token)] = float(value)
        except ValueError:
            raise InputError(f"--logit-bias takes ID=BIAS (e.g. 1500=-100), got {pair!r}") from None
    return bias


def _sampling_params(args: argparse.Namespace, logprobs: int | None = None):
    from pixtral.engine import SamplingParams  # lazy: imports torch, which --help does not need

    return SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        stop=args.stop,
        min_p=args.min_p,
        presence_penalty=args.presence_penalty,
        frequency_penalty=args.frequency_penalty,
        repetition_penalty=args.repetition_penalty,
        min_tokens=args.min_tokens,
        ignore_eos=args.ignore_eos,
        stop_token_ids=args.stop_token_id,
        logit_bias=_logit_bias(args.logit_bias),
        logprobs=logprobs,
    )


def _tools_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tools",
        type=Path,
        metavar="FILE",
        help="a JSON file of OpenAI-shaped tools the model may call ([{type: function, function: {...}}])",
    )


def _read_tools(path: Path | None) -> list[dict] | None:
    """The --tools file: a JSON list of OpenAI tool definitions, checked the way the server checks them."""
    if path is None:
        return None
    from pixtral.serve.protocol import ToolDefinition  # lazy: pixtral.serve imports fastapi and torch

    try:
        tools = TypeAdapter(list[ToolDefinition]).validate_json(path.read_bytes())
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise InputError(f"--tools {path}: {where or 'the file'}: {first['msg']}") from None
    return [t.model_dump(exclude_none=True) for t in tools]


def _load_engine(args: argparse.Namespace):
    engine = load_engine(args)
    if engine.untrained:
        print(
            f"note: model '{engine.model_name}' has random (untrained) weights: its output is noise.",
            file=sys.stderr,
        )
    return engine


# ---- generate -----------------------------------------------------------------------------------


def _add_generate(sub) -> None:
    p = _subparser(
        sub,
        "generate",
        _examples(
            'pixtral generate --prompt "Hello"                       # the bundled demo model',
            'pixtral generate --image examples/sample.png --prompt "Describe the image."',
            'pixtral generate --model ./pixtral-12b --image a.png --image b.jpg --prompt "Compare them." \\',
            "    --dtype bfloat16 --max-tokens 512",
            'pixtral generate --model ./pixtral-12b --quantize int8 --threads 2 --prompt "Hi" --json',
        ),
        help="answer one prompt (with images) and exit",
        description="One user message: the images in the given order, then the prompt text.",
    )
    _model_options(p)
    p.add_argument(
        "--image",
        action="append",
        default=[],
        metavar="IMG",
        help="image file, data: URL or http(s) URL (repeatable, in order)",
    )
    p.add_argument("--prompt", required=True, help="the user's text")
    p.add_argument("--system", help="system prompt")
    _show_thinking_option(p)
    _tools_option(p)
    _sampling_options(p, temperature=0.0)
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: text, token_ids, prompt_tokens, completion_tokens, finish_reason "
        "(and tool_calls, logprobs when asked for)",
    )
    p.add_argument(
        "--logprobs",
        type=int,
        metavar="K",
        help="with --json: each token's log-probability and the K (0..20) most likely (raw logits)",
    )
    p.set_defaults(handler=_generate)


def _show_thinking_option(p) -> None:
    p.add_argument(
        "--show-thinking",
        action="store_true",
        help="reasoning models (Magistral): print the [THINK] text to stderr (hidden by default)",
    )


def user_message(text: str, images: list[str]) -> dict:
    parts = [{"type": "image_url", "image_url": {"url": img}} for img in images]
    return {"role": "user", "content": [*parts, {"type": "text", "text": text}]}


def _generate(args: argparse.Namespace) -> int:
    if args.logprobs is not None and not args.json:
        raise InputError("--logprobs is printed with --json: add --json")
    params = _sampling_params(args, args.logprobs)
    tools = _read_tools(args.tools)
    engine = _load_engine(args)
    messages = ([{"role": "system", "content": args.system}] if args.system else []) + [
        user_message(args.prompt, args.image)
    ]
    if args.json or tools:
        c = engine.generate(messages, params, tools)
        text, calls = _split_calls(engine, c) if tools else (c.text, None)
        if not args.json:  # the answer, then one line per call the model made
            print(text)
            for call in calls or []:
                print(json.dumps(call, ensure_ascii=False))
            return 0
        out = {
            "text": text,
            "token_ids": c.token_ids,
            "prompt_tokens": c.prompt_tokens,
            "completion_tokens": len(c.token_ids),
            "finish_reason": "tool_calls" if calls else c.finish_reason,
            "model": engine.model_name,
            "untrained": engine.untrained,
        }
        if args.show_thinking:
            out["reasoning"] = c.reasoning
        if tools:
            out["tool_calls"] = calls or []
        if c.logprobs is not None:
            out["logprobs"] = [
                {"token_id": t.token_id, "logprob": t.logprob, "top": [list(x) for x in t.top]}
                for t in c.logprobs
            ]
        print(json.dumps(out, ensure_ascii=False))
        return 0
    for event in engine.stream(messages, params):
        if args.show_thinking and event.reasoning:
            print(event.reasoning, end="", file=sys.stderr, flush=True)
        print(event.text, end="", flush=True)
    print()
    return 0


def _split_calls(engine, completion) -> tuple[str, list[dict] | None]:
    """The answer's text and the OpenAI-shaped tool calls the model made ([TOOL_CALLS] ...), if any."""
    text, calls = split_tool_calls(completion.token_ids, engine.tokenizer)
    return (completion.text, None) if calls is None else (text, calls)


# ---- chat ---------------------------------------------------------------------------------------


CHAT_HELP = """commands:
  /image PATH   attach an image to your next message (it is checked now)
  /tool ID TEXT  (with --tools) answer the model's tool call ID with TEXT; the model goes on
  /reset        forget the conversation and start over
  /help         this list
  /quit         leave (also /exit, quit, exit, or Ctrl-D)
A line that starts with // is sent as a message starting with /."""


def _add_chat(sub) -> None:
    p = _subparser(
        sub,
        "chat",
        _examples(
            "pixtral chat                                  # the bundled demo model",
            'pixtral chat --model ./pixtral-12b --dtype bfloat16 --system "Answer briefly."',
            "echo 'What is 2+2?' | pixtral chat --temperature 0   # one message from a pipe",
        ),
        help="interactive multi-turn chat in the terminal",
        description="Type a message and press Enter.\n" + CHAT_HELP,
    )
    _model_options(p)
    p.add_argument("--system", help="system prompt")
    _show_thinking_option(p)
    _tools_option(p)
    _sampling_options(p, temperature=0.35)
    p.set_defaults(handler=_chat)


def _chat(args: argparse.Namespace) -> int:
    params = _sampling_params(args)  # a bad sampling value is refused before the model loads
    tools = _read_tools(args.tools)
    chat = TerminalChat(_load_engine(args), params, args.system, args.show_thinking, tools)
    interactive = sys.stdin.isatty()
    if interactive:
        print("(type /help for the commands)")
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            print()
            return 0
        if not chat.handle(line.strip()):
            return 0


class TerminalChat:
    """The state of `pixtral chat`: the conversation so far and the images waiting for the next message.

    A message the engine refuses is not added to the conversation, and its images are dropped, so one bad
    message never breaks the ones after it."""

    QUIT = ("/quit", "/exit", "quit", "exit")

    def __init__(
        self,
        engine,
        params,
        system: str | None = None,
        show_thinking: bool = False,
        tools: list[dict] | None = None,
    ) -> None:
        self.engine, self.params, self.show_thinking, self.tools = engine, params, show_thinking, tools
        self.system = [{"role": "system", "content": system}] if system else []
        self.history: list[dict] = []
        self.images: list = []  # decoded PIL images for the next user message

    def handle(self, line: str) -> bool:
        """Act on one input line; False when the user leaves."""
        if line in self.QUIT:
            return False
        if line.startswith("/") and not line.startswith("//"):
            self._command(*line.partition(" ")[::2])
        elif line:
            self._send(line.removeprefix("/"))
        return True

    def _command(self, name: str, arg: str) -> None:
        if name == "/image":
            self._attach(arg.strip())
        elif name == "/tool":
            self._tool_result(*arg.strip().partition(" ")[::2])
        elif name == "/reset":
            self.history, self.images = [], []
            print("(conversation cleared)")
        elif name == "/help":
            print(CHAT_HELP)
        else:
            print(f"(unknown command {name}: nothing was sent; /help lists the commands)")

    def _attach(self, path: str) -> None:
        if not path:
            print("(usage: /image PATH)")
            return
        try:
            image = load_image(str(Path(path).expanduser()), self.engine.media)
        except InputError as e:
            print(f"(not attached: {e})")
            return
        self.images.append(image)
        print(f"(image attached to your next message: {path})")

    def _send(self, text: str) -> None:
        parts = [{"type": "image", "image": image} for image in self.images]
        message = {"role": "user", "content": [*parts, {"type": "text", "text": text}] if parts else text}
        self.images = []  # sent, or dropped with a refused message
        if not self._reply(message) and parts:
            print(f"(its {len(parts)} image(s) were dropped)")

    def _tool_result(self, call_id: str, text: str) -> None:
        if not self.tools or not call_id or not text:
            print("(usage: /tool CALL_ID RESULT, after the model called a tool; start with --tools FILE)")
            return
        self._reply({"role": "tool", "tool_call_id": call_id, "content": text})

    def _reply(self, message: dict) -> bool:
        """Stream the model's answer to the conversation plus `message`; both join the conversation only when
        the engine takes them. Tool calls the model makes are printed, one JSON line each."""
        print("pixtral> ", end="", flush=True)
        answer, ids = [], []
        try:
            for event in self.engine.stream(self.system + self.history + [message], self.params, self.tools):
                if self.show_thinking and event.reasoning:
                    print(event.reasoning, end="", file=sys.stderr, flush=True)
                print(event.text, end="", flush=True)
                answer.append(event.text)
                ids += event.token_ids
        except PixtralError as e:
            print(f"\n(error: {e}. The message was not sent: the conversation goes on without it)")
            return False
        print()
        reply: dict = {"role": "assistant", "content": "".join(answer)}
        if self.tools:
            content, calls = split_tool_calls(ids, self.engine.tokenizer)
            if calls:
                reply = {"role": "assistant", "content": content or None, "tool_calls": calls}
                for call in calls:
                    print(f"(tool call {call['id']}: {json.dumps(call['function'], ensure_ascii=False)})")
        self.history += [message, reply]
        return True


# ---- init / convert / info -----------------------------------------------------------------------


def _add_init(sub) -> None:
    p = _subparser(
        sub,
        "init",
        _examples(
            "pixtral init --out ./tiny                     # the tiny preset, seconds",
            "pixtral init --out ./small --preset small --format hf",
            "pixtral init --out ./pixtral-12b-random --preset 12b   # ~25 GB of bfloat16 noise",
        ),
        help="write a model of random weights in a named shape",
        description="tiny: for tests and demos (real tokenizer, tiny layers)\n"
        "small: about 1.1 B parameters, for benchmarks\n"
        "12b: the exact Pixtral-12B shapes, streamed to disk (about 25 GB in bfloat16, never held in memory)\n"
        "mistral-small-3.1 (also 3.2 and Magistral Small), ministral-3-3b, ministral-3-8b, ministral-3-14b:\n"
        "those models' shapes, streamed\n"
        "tiny-mistral3, tiny-ministral3, tiny-pixtral-large: tiny versions of each family shape, with a\n"
        "matching tokenizer file",
    )
    p.add_argument("--out", required=True, type=Path, help="folder to create (must not exist or be empty)")
    p.add_argument("--preset", choices=list(PRESETS), default="tiny", help="the shape (default tiny)")
    p.add_argument(
        "--format",
        choices=["native", "hf"],
        default="native",
        help="Mistral native or Hugging Face (default native)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed of the weights (default 0)")
    p.add_argument(
        "--dtype", choices=["float32", "bfloat16"], help="stored dtype (default float32; bfloat16 for 12b)"
    )
    p.set_defaults(handler=_init)


def _init(args: argparse.Namespace) -> int:
    # lazy: these import torch, which --help does not need
    from pixtral.checkpoint.loader import DTYPES
    from pixtral.checkpoint.random_init import create_random_checkpoint
    from pixtral.prompt.tokenizer import write_tokenizer_for

    config = preset(args.preset)
    if args.preset in STREAMED_PRESETS:
        from pixtral.checkpoint.streaming_init import write_random_checkpoint_streaming  # lazy: torch

        dtype = DTYPES[args.dtype or "bfloat16"]
        write_random_checkpoint_streaming(args.out, config, dtype, seed=args.seed, fmt=args.format)
    else:
        create_random_checkpoint(
            args.out, config, fmt=args.format, seed=args.seed, dtype=DTYPES[args.dtype or "float32"]
        )
    write_tokenizer_for(config, args.out)  # a tokenizer with the preset's image settings (family shapes)
    n = config.num_parameters()["total"]
    print(
        f"wrote {args.out} ({args.preset}, {n / 1e6:.1f} M parameters, {args.format} format, random weights)"
    )
    return 0


def _add_convert(sub) -> None:
    p = _subparser(
        sub,
        "convert",
        _examples(
            "pixtral convert ./tiny ./tiny-hf --to hf",
            "pixtral convert mistralai/Pixtral-12B-2409 ./pixtral-12b-native --to native",
            "pixtral convert ./tiny ./tiny.gguf --to gguf --gguf-type q8_0   # needs pip install 'pixtral[gguf]'",
            "pixtral convert ./tiny ./tiny-tuned --to native --merge-lora runs/lora/final",
        ),
        help="rewrite a checkpoint in another format (bit-exact)",
        description="Converts between the Mistral native and Hugging Face layouts, renaming tensors\n"
        "and permuting q/k rows for the RoPE convention.\nDtypes are kept as stored.",
    )
    p.add_argument("src", help="source model folder or hub id")
    p.add_argument("dst", type=Path, help="destination folder (must not exist or be empty)")
    p.add_argument("--to", choices=["native", "hf", "gguf"], required=True, help="target format")
    p.add_argument(
        "--gguf-type",
        choices=["f32", "f16", "q8_0"],
        default="f16",
        help="gguf tensor type of the 2-D weights (default f16; norms stay f32)",
    )
    p.add_argument("--no-mmproj", action="store_true", help="gguf: skip the vision projector (mmproj) file")
    p.add_argument(
        "--merge-lora",
        metavar="ADAPTER_DIR",
        type=Path,
        help="merge the LoRA adapters of this folder (written by `pixtral train`) into SRC before writing DST",
    )
    p.set_defaults(handler=_convert)


def _convert(args: argparse.Namespace) -> int:
    from pixtral.checkpoint.loader import convert  # lazy: imports torch, which --help does not need

    if args.merge_lora is not None:
        if args.to == "gguf":
            raise InputError("--merge-lora writes native or hf: merge first, then convert the result to gguf")
        from pixtral.train.lora import merge_lora_checkpoint  # lazy: torch

        merge_lora_checkpoint(args.src, args.merge_lora, args.dst, fmt=args.to)
        print(
            f"wrote {args.dst} ({args.to} format, {args.src} with the adapters of {args.merge_lora} merged)"
        )
        return 0

    if args.to == "gguf":
        from pixtral.checkpoint.gguf_export import export_gguf  # lazy: torch (and the optional gguf)

        dst = (
            args.dst
            if args.dst.suffix == ".gguf"
            else args.dst / f"{Path(args.src).name}-{args.gguf_type}.gguf"
        )
        result = export_gguf(args.src, dst, args.gguf_type, mmproj=not args.no_mmproj)
        print(f"wrote {result.model_path} (llama architecture, {result.tensors} tensors, {args.gguf_type})")
        if result.mmproj_path:
            print(f"wrote {result.mmproj_path} (vision projector for llama.cpp's mtmd)")
        for note in result.notes:
            print(f"note: {note}", file=sys.stderr)
        return 0

    ckpt = convert(args.src, args.dst, args.to)
    print(f"wrote {args.dst} ({args.to} format, {len(ckpt.sources)} tensors, from {ckpt.format} format)")
    return 0


def _add_info(sub) -> None:
    p = _subparser(
        sub,
        "info",
        _examples("pixtral info ./tiny-hf", "pixtral info mistralai/Pixtral-12B-2409 --json"),
        help="print a checkpoint's config, parameter counts and format",
    )
    p.add_argument("model", help="model folder or hub id")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=_info)


def _info(args: argparse.Namespace) -> int:
    # lazy: both import torch, which --help does not need
    from pixtral.checkpoint.loader import open_checkpoint
    from pixtral.engine.cpu_kernels import describe as describe_kernels

    ckpt = open_checkpoint(args.model)
    counts = ckpt.config.num_parameters()
    info = {
        "folder": str(ckpt.folder),
        "format": ckpt.format,
        "dtype": str(ckpt.stored_dtype).removeprefix("torch."),
        "tensors": len(ckpt.sources),
        "parameters": counts,
        "untrained": (ckpt.folder / UNTRAINED_MARKER).exists(),
        "family": family_member(ckpt.config),
        "config": asdict(ckpt.config),
        "cpu_kernels": describe_kernels(),  # what this machine's CPU would run it with (engine/cpu_kernels.py)
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    t, v = ckpt.config.text, ckpt.config.vision
    print(
        f"{info['folder']}\n  format {info['format']}, dtype {info['dtype']}, {info['tensors']} tensors"
        + (", UNTRAINED (random weights)" if info["untrained"] else "")
    )
    print("  parameters: " + ", ".join(f"{k} {n / 1e6:,.1f} M" for k, n in counts.items()))
    print(
        f"  decoder: dim {t.dim}, {t.n_layers} layers, {t.n_heads} heads / {t.n_kv_heads} kv heads × head_dim "
        f"{t.head_dim}, ffn {t.hidden_dim}, vocab {t.vocab_size}, rope θ {t.rope_theta:g}, context {t.max_seq_len}"
    )
    print(
        f"  vision:  dim {v.hidden_size}, {v.num_hidden_layers} layers, {v.num_attention_heads} heads, ffn "
        f"{v.intermediate_size}, patch {v.patch_size}, max image {v.image_size}px, rope θ {v.rope_theta:g}"
    )
    print(
        f"  tokens:  [IMG] {v.image_token_id}, [IMG_BREAK] {v.image_break_token_id}, [IMG_END] {v.image_end_token_id}"
    )
    print(f"  family:  {family_member(ckpt.config)}")
    print(f"  CPU kernels on this machine: {info['cpu_kernels']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
