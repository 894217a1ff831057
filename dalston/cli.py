"""The `dalston` command (DESIGN §8)."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from dalston.actors.speech.protocol import ENCODINGS
from dalston.config import Config, ConfigError, load_config
from dalston.logs import configure_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dalston", description="Real-time speech transcription on asyncio actors")
    parser.add_argument("--log-level", default="info")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="gateway + one worker node + in-process registry, in one process")
    _server_flags(serve, default_port=8000)
    serve.add_argument("--capacity", type=int)

    gateway = commands.add_parser("gateway", help="the client endpoint, placing sessions on workers via Redis")
    gateway.add_argument("--redis-url", required=True)
    _server_flags(gateway, default_port=8000)

    worker = commands.add_parser("worker", help="a worker node that registers in Redis")
    worker.add_argument("--redis-url", required=True)
    worker.add_argument("--host")
    worker.add_argument("--port", type=int)
    worker.add_argument("--config", type=Path)
    worker.add_argument("--worker-id")
    worker.add_argument("--capacity", type=int)
    worker.add_argument("--models", help="comma-separated model aliases, e.g. fast,accurate")

    tree = commands.add_parser("tree", help="the live actor trees of every node (or of one worker)")
    _inspect_flags(tree)
    tree.add_argument("--json", action="store_true")

    workers = commands.add_parser("workers", help="the registered worker nodes")
    _inspect_flags(workers)
    workers.add_argument("--json", action="store_true")

    drain = commands.add_parser("drain", help="drain a worker: no new sessions, running ones move to other workers")
    drain.add_argument("worker_id")
    drain.add_argument("--redis-url", required=True)
    drain.add_argument("--config", type=Path, help="for node.link_token (or set DALSTON_NODE_LINK_TOKEN)")

    stream = commands.add_parser("stream", help="stream a WAV file and print the transcript as it appears")
    stream.add_argument("file", type=Path)
    stream.add_argument("--url", default="ws://127.0.0.1:8000/v1/audio/transcriptions/stream")
    stream.add_argument("--json", action="store_true", help="print the raw events")
    stream.add_argument("--speed", type=float, default=1.0, help="x real time; 0 sends as fast as possible")
    stream.add_argument("--model", default="fast")
    stream.add_argument("--language", default="auto")
    stream.add_argument("--word-timestamps", action="store_true")
    stream.add_argument("--api-key")
    stream.add_argument("--encoding", default="pcm_s16le", choices=ENCODINGS,
                        help="what to send: the WAV is transcoded (G.711 at 8 kHz unless --sample-rate says)")
    stream.add_argument("--sample-rate", type=int, help="resample the WAV to this rate before sending")
    stream.add_argument("--channels", type=int, default=1, choices=range(1, 9),
                        help="send this many channels of the WAV, each transcribed on its own (1: a mono mix)")
    stream.add_argument("--keyterms", help="comma-separated names and terms the model should expect")
    stream.add_argument("--prompt", help="free text that steers the model (context, spelling)")
    stream.add_argument("--min-silence-ms", type=int, help="endpointing: the silence that ends an utterance")
    return parser


def _server_flags(parser: argparse.ArgumentParser, default_port: int) -> None:
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--config", type=Path)


def _inspect_flags(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help="a gateway (default http://127.0.0.1:8000, what `serve` listens on) or a worker")
    where.add_argument("--redis-url", help="read the registry and every live worker directly")
    parser.add_argument("--api-key", default=os.environ.get("DALSTON_API_KEY"),
                        help="the gateway's API key when it has keys (default: $DALSTON_API_KEY)")


def _config(args: argparse.Namespace) -> Config:
    config = load_config(getattr(args, "config", None))
    if getattr(args, "redis_url", None):
        config = config.replace("registry", redis_url=args.redis_url)
    server = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    if args.command in ("serve", "gateway") and server:
        config = config.replace("server", **server)
    node: dict[str, object] = {}
    if args.command == "worker":
        node = {k: v for k, v in (("host", args.host), ("port", args.port), ("worker_id", args.worker_id))
                if v is not None}
        if args.models:
            node["models"] = tuple(m.strip() for m in args.models.split(",") if m.strip())
    if getattr(args, "capacity", None):
        node["capacity"] = args.capacity
    return config.replace("node", **node) if node else config


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.log_level)
    try:
        return asyncio.run(_run(args))
    except ConfigError as error:
        print(f"dalston: configuration error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


async def _run(args: argparse.Namespace) -> int:
    from dalston import commands  # imported late: `dalston stream` should not pay for loading the server

    if args.command in ("serve", "gateway", "worker"):
        return await commands.run_server(args.command, _config(args))
    if args.command == "stream":
        return await commands.stream(args)
    if args.command == "tree":
        return await commands.tree(args)
    if args.command == "drain":
        return await commands.drain(args)
    return await commands.workers(args)


if __name__ == "__main__":
    sys.exit(main())
