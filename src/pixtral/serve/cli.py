"""`pixtral serve --model PATH ...`: parse flags, start listening, load the engine, serve until SIGTERM.

`pixtral.cli` calls `add_serve_parser(subparsers)`; `python -m pixtral.serve ...` works standalone.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from errno import EADDRINUSE
from pathlib import Path
from typing import Any

from pixtral.argtypes import (
    non_negative_float,
    non_negative_int,
    port,
    positive_float,
    positive_int,
)
from pixtral.errors import PixtralError
from pixtral.model_options import add_load_options, add_model_option, load_engine
from pixtral.scheduler_options import add_scheduler_options
from pixtral.serve.app import create_app
from pixtral.serve.settings import API_KEY_ENV, ServeSettings

log = logging.getLogger("pixtral.serve")
_D = ServeSettings.__dataclass_fields__


def _default(name: str) -> Any:
    return _D[name].default


EXAMPLES = """examples:
  pixtral serve                                   # the bundled demo model on http://127.0.0.1:8000
  pixtral serve --model ./pixtral-12b --dtype bfloat16 --port 8000 --threads 2
  pixtral serve --model mistralai/Pixtral-12B-2409 --quantize int8 --api-key SECRET
  pixtral serve --allowed-local-media-path ~/pictures --allow-remote-media --max-concurrency 4
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
      -d '{"messages": [{"role": "user", "content": "Hello"}]}'
"""


def _setting(
    group: Any, flag: str, field: str, kind: Callable[[str], Any], help: str, metavar: str = "N"
) -> None:
    """A flag for one ServeSettings field: its default comes from the dataclass and is shown once in the help."""
    default = _default(field)
    shown = f"{default:,}" if isinstance(default, int) else f"{default:g}"
    group.add_argument(flag, type=kind, default=default, metavar=metavar, help=f"{help} (default {shown})")


def add_serve_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `serve` sub-command; its handler is `args.handler(args) -> int`."""
    p = subparsers.add_parser(
        "serve",
        help="serve the model over an OpenAI-compatible HTTP API with a chat page at /",
        description="Serve a Pixtral model: POST /v1/chat/completions (OpenAI-compatible, images as\n"
        "image_url parts), GET /v1/models, /health, /metrics, and a chat page at /.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_serve_arguments(p)
    p.set_defaults(handler=run_serve)
    return p


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    """The flags, each with its default in its help text (no ArgumentDefaultsHelpFormatter: it doubles them)."""
    add_model_option(p)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; 0.0.0.0 exposes the server)",
    )
    p.add_argument("--port", type=port, default=8000, help="TCP port (default 8000; 0: any free port)")
    p.add_argument(
        "--api-key",
        default=None,
        metavar="KEY",
        help=f"require 'Authorization: Bearer KEY' on /v1/* (or set {API_KEY_ENV}; default: no key)",
    )
    p.add_argument(
        "--served-model-name",
        default=None,
        metavar="NAME",
        help="the model id clients send (default: the model folder's name, or the hub id)",
    )
    add_load_options(p, "CPU threads for torch (default: torch's choice; 1 is often best on 2 busy cores)")
    add_scheduler_options(p)

    g = p.add_argument_group("limits (a request over one gets a 4xx that names it)")
    _setting(g, "--max-body-bytes", "max_body_bytes", positive_int, "largest request body")
    _setting(g, "--max-images-per-request", "max_images_per_request", positive_int, "images in one request")
    _setting(g, "--max-image-bytes", "max_image_bytes", positive_int, "encoded size of one image")
    _setting(g, "--max-image-pixels", "max_image_pixels", positive_int,
             "width*height from the header, checked before decoding")  # fmt: skip
    g.add_argument("--allowed-image-formats", default=",".join(_default("allowed_image_formats")),
                   metavar="LIST", help=f"comma-separated (default {','.join(_default('allowed_image_formats'))})")  # fmt: skip
    g.add_argument("--max-prompt-tokens", type=positive_int, default=None, metavar="N",
                   help="prompt tokens of one request (default: the model's context)")  # fmt: skip
    _setting(
        g, "--max-tokens-limit", "max_tokens_limit", positive_int, "largest max_tokens a request may ask for"
    )
    _setting(
        g,
        "--default-max-tokens",
        "default_max_tokens",
        positive_int,
        "max_tokens of a request that sends none",
    )
    _setting(g, "--max-n", "max_n", positive_int, "largest n (choices per request)")
    _setting(g, "--max-concurrency", "max_concurrency", positive_int,
             "requests generating at once; the engine batches them (1 if the engine is not thread-safe)")  # fmt: skip
    _setting(
        g,
        "--max-queue",
        "max_queue",
        non_negative_int,
        "requests waiting beyond --max-concurrency; more get 429",
    )
    _setting(g, "--request-timeout", "request_timeout_s", positive_float, "seconds from arrival to the last token",
             metavar="SECONDS")  # fmt: skip

    m = p.add_argument_group("media sources (data: URLs are always accepted)")
    m.add_argument(
        "--allow-remote-media",
        action="store_true",
        help="fetch http(s) image URLs (public addresses only, checked after DNS and on redirects; default: off)",
    )
    m.add_argument(
        "--allowed-media-domains",
        default="",
        metavar="LIST",
        help="comma-separated domains remote images may come from, subdomains included (default: any)",
    )
    _setting(m, "--remote-timeout", "remote_timeout_s", positive_float, "seconds to fetch one remote image",
             metavar="SECONDS")  # fmt: skip
    m.add_argument(
        "--allowed-local-media-path",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="a directory whose files image_url may name (file:// or a path); repeatable (default: none)",
    )

    s = p.add_argument_group("lifecycle and logs")
    _setting(s, "--drain-timeout", "drain_timeout_s", non_negative_float,
             "seconds SIGTERM waits for in-flight requests", metavar="SECONDS")  # fmt: skip
    s.add_argument("--no-access-log", action="store_true", help="do not log one line per request")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                   help="default info")  # fmt: skip


def settings_from_args(args: argparse.Namespace) -> ServeSettings:
    return ServeSettings(
        served_model_name=args.served_model_name,
        api_key=args.api_key,
        max_body_bytes=args.max_body_bytes,
        max_images_per_request=args.max_images_per_request,
        max_image_bytes=args.max_image_bytes,
        max_image_pixels=args.max_image_pixels,
        allowed_image_formats=tuple(f.strip() for f in args.allowed_image_formats.split(",") if f.strip()),
        max_prompt_tokens=args.max_prompt_tokens,
        max_tokens_limit=args.max_tokens_limit,
        default_max_tokens=args.default_max_tokens,
        max_n=args.max_n,
        max_concurrency=args.max_concurrency,
        max_queue=args.max_queue,
        request_timeout_s=args.request_timeout,
        allow_remote_media=args.allow_remote_media,
        allowed_media_domains=tuple(d.strip() for d in args.allowed_media_domains.split(",") if d.strip()),
        remote_timeout_s=args.remote_timeout,
        allowed_local_media_paths=tuple(args.allowed_local_media_path),
        drain_timeout_s=args.drain_timeout,
        access_log=not args.no_access_log,
    )


def run_serve(args: argparse.Namespace) -> int:
    """Listen first, then load the engine in a thread while /health answers "loading". Any failure before
    serving (a bad flag, a port that cannot be bound, a load that raises, whatever its type) ends the process
    with one `error: ...` line (or one ERROR log line for the load) and a non-zero status, never a traceback."""
    import uvicorn  # lazy: only `pixtral serve` runs a server, not every command's start-up

    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        settings = settings_from_args(args)
        sock = _listen(args.host, args.port)
    except ValueError as e:  # a bad setting, port or address
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.port = sock.getsockname()[1]  # --port 0: the one the system chose
    log.info(
        "listening on http://%s:%d; /health says 'loading' until the model is loaded", args.host, args.port
    )
    if settings.served_model_name is None and args.model:
        # a local folder is served under its name ("pixtral-12b"), a hub id as it is
        local = Path(args.model).expanduser()
        settings.served_model_name = local.resolve().name if local.exists() else str(args.model)
    app = create_app(None, settings)  # listen at once; /health says "loading" until the engine is set
    failed: list[BaseException] = []
    server = _draining_server(
        uvicorn.Config(
            app,
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            access_log=False,
            log_config=None,
            timeout_graceful_shutdown=int(settings.drain_timeout_s) or None,
            timeout_keep_alive=5,
        )
    )

    def load() -> None:
        try:
            engine = load_engine(args)
        # Whatever the type (AssertionError from torch for a missing CUDA, ...): a failed load must stop the
        # server, never leave /health answering "loading".
        except Exception as e:
            failed.append(e)
            log.error("cannot load the model: %s", _describe(e))
            server.should_exit = True
            return
        app.state.server.set_engine(engine)
        log.info(
            "model %s loaded (context %s tokens); serving on http://%s:%d",
            app.state.server.model_name,
            engine.max_context,
            args.host,
            args.port,
        )

    loader = threading.Thread(target=load, name="pixtral-load", daemon=True)
    loader.start()
    try:
        server.run(sockets=[sock])
    except BaseException as e:  # Ctrl-C re-raised by uvicorn, or its own sys.exit on a startup failure
        if loader.is_alive():
            _exit_while_loading(130 if isinstance(e, KeyboardInterrupt) else 1)
        raise
    if loader.is_alive():  # a signal before the model was loaded
        # uvicorn re-raises a SIGINT once it has shut down, but the KeyboardInterrupt may come after this line:
        # the exit status is that of the signal received, not of when Python delivers it
        interrupted = getattr(server, "received_signal", None) == signal.SIGINT
        _exit_while_loading(130 if interrupted else 0)
    return 1 if failed else 0


def _describe(error: BaseException) -> str:
    """Our own errors and OS errors say what to fix; anything else is named by its type too."""
    if isinstance(error, (PixtralError, OSError)) or not str(error):
        return str(error) or type(error).__name__
    return f"{type(error).__name__}: {error}"


def _listen(host: str, port: int) -> socket.socket:
    """Bind host:port before the model loads (as uvicorn's Config.bind_socket does), so that a bad or busy port
    fails at once with a ValueError that says what to change, instead of uvicorn's sys.exit mid-load."""
    if not 0 <= port <= 65535:
        raise ValueError(f"--port must be between 0 (any free port) and 65535, got {port}")
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        hint = (
            " (another server is using it: stop it or choose another --port)" if e.errno == EADDRINUSE else ""
        )
        raise ValueError(f"cannot listen on {host}:{port}: {e.strerror or e}{hint}") from None
    sock.set_inheritable(True)
    return sock


def _exit_while_loading(code: int) -> None:
    """The server stopped (a signal) while the weights still load. The loading thread cannot be interrupted,
    and the interpreter's teardown under a thread inside torch aborts the process ("terminate called without
    an active exception", SIGABRT): leave without that teardown, after flushing what was written."""
    log.warning("stopped while the model was loading")
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _draining_server(config: Any) -> Any:
    """A uvicorn.Server whose SIGTERM ends in exit status 0 once the drain is done (uvicorn re-raises the
    signal after its graceful shutdown, which would report a clean drain as death by SIGTERM)."""
    import uvicorn  # lazy: only `pixtral serve` runs a server, not every command's start-up

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            self.received_signal = sig
            super().handle_exit(sig, frame)
            captured = getattr(self, "_captured_signals", None)
            if sig == signal.SIGTERM and isinstance(captured, list) and sig in captured:
                captured.remove(sig)
                log.info("SIGTERM: draining in-flight requests, then exiting")

    return Server(config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pixtral serve", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_serve_arguments(parser)
    return run_serve(parser.parse_args(argv))
