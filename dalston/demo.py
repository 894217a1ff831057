"""The main job: start `dalston serve`, stream the bundled speech sample through it at real-time pace,
print the text as it appears, and stop the server again.

    python -m dalston.demo [--speed 1.0] [--port 8000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from dalston.web.client import wait_until_ready

SAMPLE = Path(__file__).resolve().parent / "data" / "sample.wav"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--file", type=Path, default=SAMPLE)
    args = parser.parse_args()
    log_path = Path(os.environ.get("DALSTON_DEMO_LOG", "dalston-serve.log"))
    print(f"Starting dalston serve on port {args.port} (server log: {log_path}) …", flush=True)
    with log_path.open("wb") as log:
        server = subprocess.Popen([sys.executable, "-m", "dalston.cli", "serve", "--port", str(args.port)],
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            asyncio.run(wait_until_ready(f"http://127.0.0.1:{args.port}/readyz", server))
            print(f"Streaming {args.file.name} at {args.speed:g}x real time:\n", flush=True)
            from dalston.cli import main as dalston

            url = f"ws://127.0.0.1:{args.port}/v1/audio/transcriptions/stream"
            return dalston(["--log-level", "warning", "stream", str(args.file), "--url", url,
                            "--speed", str(args.speed)])
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()


if __name__ == "__main__":
    sys.exit(main())
