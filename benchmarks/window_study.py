"""Which encoder window is safe: "fit" (cut to the utterance + margin, guarded) against "full" (Whisper's 30 s).

    .venv/bin/python benchmarks/window_study.py [--voices slt,awb,rms,kal16] [--beams 1,5] [--no-8k]

Speech sets: the LibriVox clips of tests/data/librivox (read speech, 16 kHz), flite voices reading the varied
sentences below (if `flite` is installed: `apt-get install flite`), and 8 kHz versions of both (down to 8 kHz
and back, as a telephone call arrives). Each utterance is decoded as a final by tiny.en (int8, one thread) under
every window policy and beam size:

- `full`: the 30 s window (what faster-whisper's transcribe() does);
- `fit`: the window cut to the utterance + margin and rounded up to a bucket, degenerate output decoded again
  with the full window (what `encoder_window = "fit"` does);
- `fit_unguarded`: the cut window with no second decode, to show what the guards catch.

Reported per set x policy x beam: word error against the references, word error against the full-window
decode with the same beam, the fallback rate (finals decoded again), and decode time (mean, median, p95).
Results go to benchmarks/results/window_study.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from dalston.actors.speech.audio import read_wav
from dalston.actors.speech.decoder import DecodeResult, WhisperDecoder
from dalston.actors.speech.encoder_window import WindowPolicy
from dalston.actors.speech.models import ModelCatalogue
from dalston.supervisor.cluster.router import percentile
from dalston.wer import corpus_word_error_rate

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RATE = 16000
sys.path.insert(0, str(ROOT / "tests"))  # the sentences the word-error tests use
from speech_synthesis import VARIED_SENTENCES  # noqa: E402


@dataclass(frozen=True)
class Utterance:
    set_name: str
    name: str
    audio: np.ndarray  # float32, 16 kHz
    text: str


def librivox() -> list[Utterance]:
    utterances = []
    for wav in sorted((ROOT / "tests" / "data" / "librivox").glob("*.wav")):
        pcm, rate = read_wav(wav)
        assert rate == RATE
        utterances.append(Utterance("librivox", wav.stem[-4:], pcm.astype(np.float32) / 32768,
                                    wav.with_suffix(".txt").read_text().strip()))
    return utterances


def flite_voice(voice: str, folder: Path) -> list[Utterance]:
    utterances = []
    for i, sentence in enumerate(VARIED_SENTENCES):
        path = folder / f"{voice}-{i}.wav"
        subprocess.run(["flite", "-voice", voice, "-t", sentence, "-o", str(path)], check=True)
        pcm, rate = read_wav(path)
        audio = pcm.astype(np.float32) / 32768
        if rate != RATE:
            audio = soxr.resample(audio, rate, RATE, quality="HQ").astype(np.float32)
        utterances.append(Utterance(f"flite-{voice}", str(i), audio, sentence))
    return utterances


def telephone(utterances: list[Utterance]) -> list[Utterance]:
    """The same speech through an 8 kHz channel (band-limited to 4 kHz), back at 16 kHz for the model."""
    return [Utterance(f"{u.set_name}@8k", u.name,
                      soxr.resample(soxr.resample(u.audio, RATE, 8000, quality="HQ"), 8000, RATE,
                                    quality="HQ").astype(np.float32), u.text) for u in utterances]


def decode(decoder: WhisperDecoder, audio: np.ndarray, beam: int) -> tuple[DecodeResult, float]:
    started = time.perf_counter()
    result = decoder.decode(audio, final=True, word_timestamps=False, language="en", offset_s=0.0,
                            beam_size=beam)
    return result, time.perf_counter() - started


def summarise(cell: list[dict], full_texts: dict[tuple[str, str], str]) -> dict:
    times = [row["decode_s"] for row in cell]
    return {
        "utterances": len(cell),
        "wer_vs_reference": round(corpus_word_error_rate([(r["reference"], r["text"]) for r in cell]), 4),
        "wer_vs_full": round(corpus_word_error_rate([(full_texts[(r["set"], r["name"])], r["text"])
                                                     for r in cell]), 4),
        "fallback_rate": round(sum(r["redone"] for r in cell) / len(cell), 4),
        "degenerate_first_pass": round(sum(r["degenerate"] is not None for r in cell) / len(cell), 4),
        "degenerate_reasons": {reason: sum(r["degenerate"] == reason for r in cell)
                               for reason in sorted({r["degenerate"] for r in cell if r["degenerate"]})},
        "decode_s_mean": round(statistics.fmean(times), 4),
        "decode_s_median": round(statistics.median(times), 4),
        "decode_s_p95": round(percentile(sorted(times), 0.95), 4),
    }


def run_study(utterances: list[Utterance], beams: list[int]) -> dict:
    resolved = ModelCatalogue.default().resolve("fast")
    decoders = {"full": WhisperDecoder(resolved, policy=WindowPolicy("full")),
                "fit": WhisperDecoder(resolved, policy=WindowPolicy("fit"))}
    unguarded = WhisperDecoder(resolved, policy=WindowPolicy("fit"))
    unguarded._direct.fallback_to_full = False  # the study's control: the cut window with no second decode
    decoders["fit_unguarded"] = unguarded
    for decoder in decoders.values():
        decoder.warm_up()
    rows = []
    for beam in beams:
        for u in utterances:
            for policy, decoder in decoders.items():
                result, seconds = decode(decoder, u.audio, beam)
                rows.append({"set": u.set_name, "name": u.name, "policy": policy, "beam": beam,
                             "duration_s": round(u.audio.size / RATE, 2), "reference": u.text, "text": result.text,
                             "decode_s": round(seconds, 4), "window_frames": result.window_frames,
                             "degenerate": result.degenerate, "redone": result.redone})
        print(f"beam {beam} done", file=sys.stderr, flush=True)
    return {"rows": rows, "summary": summary_table(rows)}


def summary_table(rows: list[dict]) -> list[dict]:
    table = []
    sets = [*sorted({r["set"] for r in rows}), "all"]
    for beam in sorted({r["beam"] for r in rows}):
        full_texts = {(r["set"], r["name"]): r["text"] for r in rows if r["beam"] == beam and r["policy"] == "full"}
        for set_name in sets:
            for policy in ("full", "fit", "fit_unguarded"):
                cell = [r for r in rows if r["beam"] == beam and r["policy"] == policy
                        and set_name in ("all", r["set"])]
                if cell:
                    table.append({"set": set_name, "policy": policy, "beam": beam, **summarise(cell, full_texts)})
    return table


def print_table(table: list[dict]) -> None:
    print(f"{'set':22} {'policy':14} beam  n   WER/ref  WER/full  fallback  degen1  mean_s  median_s  p95_s")
    for row in table:
        print(f"{row['set']:22} {row['policy']:14} {row['beam']:>4} {row['utterances']:>3}  "
              f"{row['wer_vs_reference']:7.2%}  {row['wer_vs_full']:7.2%}  {row['fallback_rate']:7.1%}  "
              f"{row['degenerate_first_pass']:6.1%}  {row['decode_s_mean']:6.3f}  {row['decode_s_median']:8.3f}  "
              f"{row['decode_s_p95']:5.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--voices", default="slt,awb,rms,kal16")
    parser.add_argument("--beams", default="1,5")
    parser.add_argument("--no-8k", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "window_study.json")
    args = parser.parse_args()
    utterances = librivox()
    voices = [v for v in args.voices.split(",") if v]
    with tempfile.TemporaryDirectory() as folder:
        if voices and shutil.which("flite") is None:
            print("flite is not installed: LibriVox only (apt-get install flite)", file=sys.stderr)
        elif voices:
            for voice in voices:
                utterances += flite_voice(voice, Path(folder))
    if not args.no_8k:
        utterances += telephone(utterances)
    started = time.perf_counter()
    study = run_study(utterances, [int(b) for b in args.beams.split(",")])
    study["wall_s"] = round(time.perf_counter() - started, 1)
    study["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     cwd=ROOT).stdout.strip()
    print_table(study["summary"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(study, indent=1))
    print(f"{len(utterances)} utterances, {study['wall_s']} s; written to {args.out}")


if __name__ == "__main__":
    main()
