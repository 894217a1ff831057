"""What a batch buys: B utterances of one encoder window decoded one by one against in one `decode_batch` call.

    .venv/bin/python benchmarks/batch_bench.py [--batches 1,2,4,8] [--beams 1,5] [--window fit] [--device cpu]
        [--clips NAME.wav,...] [--words] [--out PATH]

The utterances are the two LibriVox clips of 3-3.3 s (one 5 s bucket with "fit"), or --clips, repeated to fill
the batch (`--clips sense_and_sensibility_01_austen_64kb-0870.wav --words` is the 7.1 s final that ends the
stream benchmark's first utterance, as sixteen streams ending together send it).
Each cell is the median of --repeats calls. Reported: seconds per call, seconds per utterance, and the speed-up
of the batch over decoding the same utterances one by one on the same thread. On a CPU the encoder and decoder
already use the cores well, so a batch mostly saves per-call overhead; on a GPU it is the main lever (set
`--device cuda --compute-type float16`). Written to benchmarks/results/batch_bench.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from dalston.actors.speech.audio import read_wav
from dalston.actors.speech.decoder import WhisperDecoder
from dalston.actors.speech.encoder_window import WindowPolicy
from dalston.actors.speech.models import ModelCatalogue

ROOT = Path(__file__).resolve().parent.parent
CLIPS = ["sense_and_sensibility_01_austen_64kb-0880.wav", "sense_and_sensibility_01_austen_64kb-0930.wav"]


@dataclass(frozen=True, eq=False)
class Request:
    audio: np.ndarray
    final: bool = True
    word_timestamps: bool = False
    language: str | None = "en"
    offset_s: float = 0.0


def timed(call, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--beams", default="1,5")
    parser.add_argument("--window", default="fit", choices=("fit", "full"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compute-type", default="int8")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--clips", default=",".join(CLIPS),
                        help="LibriVox clips (file names in tests/data/librivox), repeated to fill each batch")
    parser.add_argument("--words", action="store_true", help="word timestamps on, as a streamed final asks")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "batch_bench.json")
    args = parser.parse_args()
    spec = ModelCatalogue.default().resolve("fast")
    resolved = replace(spec, spec=replace(spec.spec, device=args.device, compute_type=args.compute_type))
    decoder = WhisperDecoder(resolved, policy=WindowPolicy(args.window))
    decoder.warm_up()
    clips = [read_wav(ROOT / "tests" / "data" / "librivox" / name)[0].astype(np.float32) / 32768
             for name in args.clips.split(",")]
    rows = []
    for beam in (int(b) for b in args.beams.split(",")):
        for size in (int(b) for b in args.batches.split(",")):
            requests = [Request(clips[i % len(clips)], word_timestamps=args.words) for i in range(size)]
            alone = timed(lambda rs=requests, b=beam: [decoder.decode_batch([r], beam_size=b) for r in rs],
                          args.repeats)
            together = timed(lambda rs=requests, b=beam: decoder.decode_batch(rs, beam_size=b), args.repeats)
            row = {"beam": beam, "batch": size, "one_by_one_s": round(alone, 4), "batch_s": round(together, 4),
                   "per_utterance_s": round(together / size, 4), "speedup": round(alone / together, 2)}
            print(row, flush=True)
            rows.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"window": args.window, "device": args.device, "clips": args.clips,
                                    "word_timestamps": args.words, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
