"""Command line: ``comfy-mcp`` serves MCP on stdio; ``comfy-mcp generate`` makes images and
``comfy-mcp result`` fetches a job that outlived its wait.

Only argument parsing lives here. Logs go to stderr: stdout is the MCP transport (and,
for ``generate``, the list of saved files).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import anyio

from comfy_mcp import __version__
from comfy_mcp.config import Settings
from comfy_mcp.errors import ComfyError, ConfigError

logger = logging.getLogger(__name__)

_GEN_OPTIONS: tuple[tuple[str, type], ...] = (
    ("negative_prompt", str), ("width", int), ("height", int), ("steps", int), ("cfg", float),
    ("seed", int), ("sampler", str), ("scheduler", str), ("checkpoint", str),
    ("batch_size", int),
)


def _parser() -> argparse.ArgumentParser:
    about = "Make images with ComfyUI from an AI assistant (MCP) or the command line."
    parser = argparse.ArgumentParser(prog="comfy-mcp", description=about)
    parser.add_argument("--version", action="version", version=f"comfy-mcp {__version__}")
    parser.add_argument("--log-level", default=os.environ.get("COMFY_MCP_LOG_LEVEL", "INFO"))
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="serve MCP on stdio (the default) or HTTP")
    serve.add_argument("--http", action="store_true",
                       help="serve streamable HTTP at http://HOST:PORT/mcp instead of stdio")
    serve.add_argument("--host", default=None,
                       help="address to listen on with --http (default 127.0.0.1); any "
                       "other address needs COMFY_MCP_HTTP_TOKEN")
    serve.add_argument("--port", type=_port, default=None,
                       help="port to listen on with --http (default 8765)")
    gen = commands.add_parser("generate", help="render one prompt and print the saved paths")
    gen.add_argument("prompt", nargs="?", default=None)
    gen.add_argument("--template", default="txt2img")
    gen.add_argument("--wait", type=float, default=None, help="seconds to wait at most")
    for name, kind in _GEN_OPTIONS:
        gen.add_argument("--" + name.replace("_", "-"), dest=name, type=kind)
    gen.add_argument("--image", help="an input image: a local file, uploaded first")
    gen.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                     help="another template parameter, or <node id>.<input>; VALUE is "
                     "JSON where it parses (2, 0.5, true), else text")
    result = commands.add_parser("result", help="fetch a job by prompt id; print the paths")
    result.add_argument("prompt_id")
    result.add_argument("--wait", type=float, default=0.0, help="seconds to wait at most")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise
    try:
        settings = Settings.from_env()
    except ComfyError as exc:
        sys.exit(f"comfy-mcp: {exc}")
    if args.command in ("generate", "result"):
        try:
            sys.exit(anyio.run(_generate if args.command == "generate" else _result,
                               settings, args))
        except KeyboardInterrupt:  # the job was cancelled on the way out
            sys.exit("comfy-mcp: cancelled")
    from comfy_mcp.server import build_server

    if args.command == "serve" and args.http:
        sys.exit(_serve_http(settings, args))
    if args.command == "serve" and (args.host or args.port is not None):
        sys.exit("comfy-mcp: --host and --port only apply with --http")
    build_server(settings).run()


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return port


def _serve_http(settings: Settings, args: argparse.Namespace) -> int | str:
    """Check the exposure first (nothing is bound without a required token), then serve."""
    from functools import partial

    from comfy_mcp import http_transport
    from comfy_mcp.server import build_server

    host = args.host or http_transport.DEFAULT_HOST
    port = http_transport.DEFAULT_PORT if args.port is None else args.port
    try:
        token = http_transport.check_exposure(host, os.environ)
        sock = http_transport.bind(host, port)
    except ComfyError as exc:
        return f"comfy-mcp: {exc}"
    except OSError as exc:
        return f"comfy-mcp: cannot listen on {host}:{port} ({exc.strerror or exc})"
    max_body = http_transport.body_limit(settings.upload_max_bytes)
    serve = partial(http_transport.serve_http, build_server(settings), host=host, port=port,
                    token=token, max_body_bytes=max_body, sock=sock)
    try:
        anyio.run(serve)
    except KeyboardInterrupt:  # uvicorn re-raises the Ctrl-C it handled, after shutting down
        pass
    return 0


async def _generate(settings: Settings, args: argparse.Namespace) -> int:
    from comfy_mcp.studio import Studio

    params: dict[str, Any] = {} if args.prompt is None else {"prompt": args.prompt}
    params.update({name: getattr(args, name) for name, _ in _GEN_OPTIONS
                   if getattr(args, name) is not None})
    try:
        params.update(_param(text) for text in args.param)
        async with Studio.open(settings) as studio:
            if args.image:
                params["image"] = await _upload(studio, settings, args.image)
            gen = await studio.generate(args.template, _plain(params),
                                        overrides=_dotted(params), on_progress=_progress,
                                        wait_limit=args.wait)
    except (ComfyError, ValueError) as exc:  # ValueError: a refused local file
        return _failed(exc)
    return _print(gen)


async def _result(settings: Settings, args: argparse.Namespace) -> int:
    from comfy_mcp.studio import Studio

    try:
        async with Studio.open(settings) as studio:
            gen = await studio.result(args.prompt_id, wait_limit=args.wait)
    except ComfyError as exc:
        return _failed(exc)
    return _print(gen)


async def _upload(studio: Any, settings: Settings, path: str) -> str:
    from comfy_mcp import outputs

    file = outputs.check_readable_file(path, settings.upload_roots(),
                                       max_bytes=settings.upload_max_bytes)
    reply = await studio.service.upload(file.read_bytes(), file.name)
    name, subfolder = reply.get("name", file.name), reply.get("subfolder") or ""
    return f"{subfolder}/{name}" if subfolder else name


def _param(text: str) -> tuple[str, Any]:
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise ConfigError(f"--param {text!r} must look like NAME=VALUE")
    try:
        return name, json.loads(raw)
    except ValueError:
        return name, raw


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if "." not in k}


def _dotted(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if "." in k}


async def _progress(fraction: float, message: str) -> None:
    print(f"[{fraction:4.0%}] {message}", file=sys.stderr)


def _failed(exc: Exception) -> int:
    from comfy_mcp.errors import JobStillRunning

    if isinstance(exc, JobStillRunning):
        print(f"comfy-mcp: the job is still {exc.state}; it goes on in ComfyUI. Fetch it "
              f"later with: comfy-mcp result {exc.prompt_id} --wait 600", file=sys.stderr)
        return 2
    print(f"comfy-mcp: {exc}", file=sys.stderr)
    return 1


def _print(gen: Any) -> int:
    from comfy_mcp.formatting import generation_text

    print(generation_text(gen), file=sys.stderr)
    for item in gen.files:
        if item.path:
            print(item.path)
    return 0
