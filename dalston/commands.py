"""What the `dalston` subcommands do (argument parsing lives in `cli.py`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import aiohttp
import numpy as np
import soxr

from dalston.actors.speech.audio import read_wav_channels
from dalston.config import Config
from dalston.web.client import StreamClient


async def run_server(command: str, config: Config) -> int:
    from dalston.supervisor.cluster.registry import WorkerIdTaken
    from dalston.web.server import NodeFailed, UnsafeBind, run_gateway, run_worker, serve

    runner = {"serve": serve, "gateway": run_gateway, "worker": run_worker}[command]
    try:
        await runner(config)
    except UnsafeBind as error:
        print(f"dalston: {error}", file=sys.stderr)
        return 2
    except NodeFailed as error:  # non-zero, so that systemd or Kubernetes restarts the process
        print(f"dalston: {error}", file=sys.stderr)
        return 1
    except WorkerIdTaken as error:
        print(f"dalston: {error}; give this worker another --worker-id", file=sys.stderr)
        return 2
    return 0


async def stream(args: argparse.Namespace) -> int:
    try:
        samples, rate = _client_audio(args)
    except ValueError as error:
        print(f"dalston: {error}", file=sys.stderr)
        return 2
    params: dict[str, Any] = {"sample_rate": rate, "model": args.model, "language": args.language,
                              "word_timestamps": args.word_timestamps, "encoding": args.encoding,
                              "channels": args.channels}
    for name in ("keyterms", "prompt", "min_silence_ms"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    printer = _JsonPrinter() if args.json else _LivePrinter()
    try:
        async with StreamClient(args.url, api_key=args.api_key, **params) as client:
            sender = asyncio.create_task(client.send_pcm(samples, speed=args.speed))
            async for event in client.events():
                printer.show(event)
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
    except aiohttp.ClientError as error:
        print(f"dalston: cannot stream to {args.url}: {error}", file=sys.stderr)
        return 1
    return printer.finish()


def _client_audio(args: argparse.Namespace) -> tuple[np.ndarray, int]:
    """The WAV as the client will send it: `--channels` of it (a mono mix for 1), and for G.711 at 8 kHz as a
    phone line carries it (transcoded here, so a WAV file makes a realistic telephony test)."""
    samples, rate = read_wav_channels(args.file)
    if args.channels == 1:
        samples = samples.mean(axis=1, keepdims=True).astype(np.int16)
    elif samples.shape[1] != args.channels:
        raise ValueError(f"{args.file} has {samples.shape[1]} channel(s); --channels {args.channels} needs as many")
    target = args.sample_rate or (8000 if args.encoding in ("pcm_mulaw", "pcm_alaw") else rate)
    if target != rate:
        audio = soxr.resample(samples.astype(np.float32) / 32768.0, rate, target, quality="HQ")
        samples = np.clip(np.round(audio * 32768.0), -32768, 32767).astype(np.int16).reshape(-1, args.channels)
    return (samples[:, 0] if args.channels == 1 else samples), target


class _JsonPrinter:
    def __init__(self) -> None:
        self.failed = False

    def show(self, event: dict[str, Any]) -> None:
        print(json.dumps(event), flush=True)
        self.failed = self.failed or (event.get("type") == "error" and event.get("code") != "invalid_message")

    def finish(self) -> int:
        return 1 if self.failed else 0


class _LivePrinter:
    """Partials rewrite one line in place; finals are printed for good; the transcript comes at the end."""

    def __init__(self) -> None:
        self.failed = False
        self._partial_shown = False
        self._started = time.monotonic()
        self._tty = sys.stdout.isatty()

    def show(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "transcript.partial" and self._tty:
            self._clear()
            text = event["text"][-100:]
            sys.stdout.write(f"\x1b[2m… {text}\x1b[0m")
            self._partial_shown = True
        elif kind == "transcript.final":
            self._clear()
            channel = f" ch{event['channel']}" if "channel" in event else ""
            print(f"[{event['start']:7.2f} - {event['end']:7.2f}{channel}] {event['text']}")
        elif kind == "session.end":
            self._clear()
            print(f"\nTranscript ({event['total_duration']:.1f} s of audio):\n{event['transcript']}")
        elif kind == "error":
            self._clear()
            print(f"error {event['code']}: {event['message']}", file=sys.stderr)
            self.failed = self.failed or event.get("code") != "invalid_message"
        sys.stdout.flush()

    def _clear(self) -> None:
        if self._partial_shown:
            sys.stdout.write("\r\x1b[2K")
            self._partial_shown = False

    def finish(self) -> int:
        return 1 if self.failed else 0


async def tree(args: argparse.Namespace) -> int:
    from dalston.inspect import show_trees

    return await show_trees(url=args.url, redis_url=args.redis_url, as_json=args.json, api_key=args.api_key)


async def workers(args: argparse.Namespace) -> int:
    from dalston.inspect import show_workers

    return await show_workers(redis_url=args.redis_url, as_json=args.json, url=args.url, api_key=args.api_key)


async def drain(args: argparse.Namespace) -> int:
    from dalston.config import load_config
    from dalston.drain import drain_worker

    return await drain_worker(args.worker_id, args.redis_url, load_config(args.config).node.link_token)
