"""Synchronous Whisper decoding of one utterance, with guards against made-up text (DESIGN §5).

`WhisperDecoder.decode` blocks; the TranscriberActor calls it from its thread pool. One loaded model is shared
by every thread: CTranslate2 queues concurrent calls on its own workers.

The guards are pure functions over plain segments, so they are tested without a model:
- audio quieter than a floor is not decoded at all;
- a segment Whisper itself thinks is no speech (high no-speech probability) and that is either unlikely (low
  average log-probability) or repetitive (high compression ratio) is dropped, as are the well-known
  "thank you" style fillers when the no-speech probability is raised;
- a phrase repeated `min_repeats` times in a row is kept once (words, and whole segments).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np

from dalston.actors.speech.direct_decode import DirectWhisper, Job, JobOutput, RawSegment, Thresholds
from dalston.actors.speech.encoder_window import FULL_WINDOW_FRAMES, WindowPolicy, window_frames
from dalston.actors.speech.models import ResolvedModel
from dalston.wer import normalize_words, word_key

SAMPLE_RATE = 16_000

# Said by Whisper over near-silence because its training subtitles end that way. Kept deliberately short.
FILLER_PHRASES = frozenset({"you", "thank you", "thanks for watching", "thank you for watching", "bye"})


@dataclass(frozen=True)
class Word:
    word: str
    start_s: float
    end_s: float
    confidence: float


@dataclass(frozen=True)
class DecodedSegment:
    start_s: float
    end_s: float
    text: str
    avg_logprob: float
    no_speech_prob: float
    words: tuple[Word, ...] | None
    compression_ratio: float = 1.0


@dataclass(frozen=True)
class DecodeResult:
    text: str
    segments: tuple[DecodedSegment, ...]
    language: str
    duration_s: float
    decode_s: float  # of the whole call (a batch's members share it)
    window_frames: int = 0  # encoder input length of the output kept; 0: not decoded (too quiet)
    degenerate: str | None = None  # what was wrong with the first output, if anything
    redone: bool = False  # decoded again with the full 30 s window because of it
    needs_full_window: bool = False  # degenerate; the caller deferred the second decode (decode_batch)


@dataclass(frozen=True)
class GuardOptions:
    no_speech_threshold: float = 0.6
    log_prob_threshold: float = -1.0
    compression_ratio_threshold: float = 2.4
    filler_no_speech_prob: float = 0.3
    min_repeats: int = 3
    max_phrase_words: int = 8


@dataclass(frozen=True)
class DecoderOptions:
    min_rms: float = 0.002  # about -54 dBFS: below it nothing is said, whatever the VAD thought
    # Whisper's fallback to sampling on a failed greedy/beam pass; bounded to keep the worst final fast.
    final_temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6)
    # Token budget per decode, from the audio length: a loop over a tone ("beep beep ...") otherwise runs to
    # Whisper's 448-token limit and costs seconds. Speech needs well under 10 tokens/s.
    max_tokens_per_s: float = 16.0
    min_max_tokens: int = 24
    guards: GuardOptions = field(default_factory=GuardOptions)


class Utterance(Protocol):
    """What `decode_batch` needs of one request (the transcriber's DecodeRequest has it)."""

    @property
    def audio(self) -> np.ndarray: ...
    @property
    def final(self) -> bool: ...
    @property
    def word_timestamps(self) -> bool: ...
    @property
    def language(self) -> str | None: ...
    @property
    def offset_s(self) -> float: ...


@dataclass(frozen=True, eq=False)
class _Single:
    audio: np.ndarray
    final: bool
    word_timestamps: bool
    language: str | None
    offset_s: float
    prompt: str | None = None


# ---------------------------------------------------------------- pure guards


def rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0


def is_made_up(segment: DecodedSegment, options: GuardOptions) -> bool:
    """Whisper's own no-speech test, widened to catch confident loops over non-speech (a tone: "beep beep")."""
    if segment.no_speech_prob <= options.no_speech_threshold:
        return False
    return (segment.avg_logprob < options.log_prob_threshold
            or segment.compression_ratio > options.compression_ratio_threshold)


def is_filler(segment: DecodedSegment, options: GuardOptions) -> bool:
    phrase = " ".join(normalize_words(segment.text))
    return phrase in FILLER_PHRASES and segment.no_speech_prob >= options.filler_no_speech_prob


def repeat_kept_indices(keys: Sequence[str], min_repeats: int = 3, max_phrase_len: int = 8) -> list[int]:
    """Indices to keep so that no phrase of up to `max_phrase_len` keys occurs `min_repeats`+ times in a row.

    Collapsing runs to a fixpoint, so applying it to its own output changes nothing.
    """
    kept = list(range(len(keys)))
    while (step := _collapse_first_run([keys[i] for i in kept], min_repeats, max_phrase_len)) is not None:
        kept = [kept[i] for i in step]
    return kept


def _collapse_first_run(keys: list[str], min_repeats: int, max_phrase_len: int) -> list[int] | None:
    for start in range(len(keys)):
        for length in range(1, max_phrase_len + 1):
            if start + length * min_repeats > len(keys):
                break
            phrase = keys[start:start + length]
            count = 1
            while keys[start + count * length:start + (count + 1) * length] == phrase:
                count += 1
            if count >= min_repeats:
                removed = range(start + length, start + count * length)
                return [i for i in range(len(keys)) if i not in removed]
    return None


def collapse_repeats(text: str, min_repeats: int = 3, max_phrase_words: int = 8) -> str:
    """Keep once a phrase said `min_repeats`+ times in a row (case and punctuation do not count)."""
    tokens = text.split()
    kept = repeat_kept_indices([word_key(token) for token in tokens], min_repeats, max_phrase_words)
    return " ".join(tokens[i] for i in kept)


def collapse_segment(segment: DecodedSegment, options: GuardOptions) -> DecodedSegment:
    if segment.words is None:
        return replace(segment, text=collapse_repeats(segment.text, options.min_repeats,
                                                      options.max_phrase_words))
    keys = [word_key(word.word) for word in segment.words]
    kept = repeat_kept_indices(keys, options.min_repeats, options.max_phrase_words)
    if len(kept) == len(keys):
        return segment
    words = tuple(segment.words[i] for i in kept)
    return replace(segment, words=words, text=" ".join(word.word for word in words))


def apply_guards(segments: Sequence[DecodedSegment], options: GuardOptions) -> list[DecodedSegment]:
    """Drop made-up segments, collapse repeated phrases inside and across segments, drop empty ones."""
    kept = [collapse_segment(segment, options) for segment in segments
            if not is_made_up(segment, options) and not is_filler(segment, options)]
    kept = [segment for segment in kept if normalize_words(segment.text)]
    keys = [" ".join(normalize_words(segment.text)) for segment in kept]
    return [kept[i] for i in repeat_kept_indices(keys, options.min_repeats, options.max_phrase_words)]


def clamp_segments(segments: Sequence[DecodedSegment], duration_s: float) -> list[DecodedSegment]:
    """Order segments and words in time, inside [0, duration_s], each word inside its segment."""
    clamped: list[DecodedSegment] = []
    floor_s = 0.0
    for segment in sorted(segments, key=lambda s: s.start_s):
        start_s = min(max(segment.start_s, floor_s), duration_s)
        end_s = min(max(segment.end_s, start_s), duration_s)
        words = None if segment.words is None else _clamp_words(segment.words, start_s, end_s)
        clamped.append(replace(segment, start_s=start_s, end_s=end_s, words=words))
        floor_s = end_s
    return clamped


def _clamp_words(words: Sequence[Word], start_s: float, end_s: float) -> tuple[Word, ...]:
    result: list[Word] = []
    floor_s = start_s
    for word in words:
        word_start_s = min(max(word.start_s, floor_s), end_s)
        word_end_s = min(max(word.end_s, word_start_s), end_s)
        result.append(replace(word, start_s=word_start_s, end_s=word_end_s))
        floor_s = word_end_s
    return tuple(result)


def shift_segment(segment: DecodedSegment, offset_s: float) -> DecodedSegment:
    words = None if segment.words is None else tuple(
        replace(word, start_s=word.start_s + offset_s, end_s=word.end_s + offset_s) for word in segment.words)
    return replace(segment, start_s=segment.start_s + offset_s, end_s=segment.end_s + offset_s, words=words)


def join_text(segments: Sequence[DecodedSegment]) -> str:
    return " ".join(segment.text for segment in segments if segment.text)


# ---------------------------------------------------------------- the model


class WhisperDecoder:
    """One loaded faster-whisper model; `decode` and `decode_batch` may be called from many threads at once."""

    def __init__(self, resolved: ResolvedModel, options: DecoderOptions | None = None, *, num_workers: int = 1,
                 policy: WindowPolicy | None = None) -> None:
        from faster_whisper import WhisperModel  # heavy import, paid only by processes that decode

        spec = resolved.spec
        self.spec = spec
        self.options = options or DecoderOptions()
        self.policy = policy or WindowPolicy(spec.encoder_window, spec.window_margin_s, spec.window_buckets_s)
        self.max_batch = spec.max_batch
        started = time.perf_counter()
        # A folder path, never a hub name: WhisperModel only downloads when given something else.
        self._model = WhisperModel(str(resolved.path), device=spec.device, compute_type=spec.compute_type,
                                   cpu_threads=spec.cpu_threads, num_workers=num_workers,
                                   local_files_only=True)
        guards = self.options.guards
        self._direct = DirectWhisper(
            self._model, self.policy, temperatures=self.options.final_temperatures, token_budget=self._token_budget,
            thresholds=Thresholds(guards.no_speech_threshold, guards.log_prob_threshold,
                                  guards.compression_ratio_threshold))
        self.load_s = time.perf_counter() - started
        self._lock = threading.Lock()
        self._counts = {"decodes": 0, "skipped_quiet": 0, "batches": 0, "finals_redone": 0,
                        "degenerate": 0}
        self._decode_s_total = 0.0

    @property
    def multilingual(self) -> bool:
        return bool(self._model.model.is_multilingual)

    def batch_limit(self, key: int) -> int:
        """How many requests of one batch key (a window length in frames) may share one call."""
        return max(1, min(self.max_batch, self.spec.max_batch_frames // max(1, key)))

    def batch_key(self, samples: int) -> int:
        """Requests with equal keys may share one `decode_batch`: their encoder windows are the same length, so
        each result is the one it would get alone."""
        return window_frames(self._direct.content_frames(samples), self.policy)

    def decode(self, audio_f32_16k: np.ndarray, *, final: bool, word_timestamps: bool,
               language: str | None, offset_s: float, prompt: str | None = None,
               beam_size: int | None = None) -> DecodeResult:
        """Decode one utterance (16 kHz mono float32); times in the result are `offset_s` + audio time.

        Finals use the spec's beam size unless `beam_size` says otherwise (and word timestamps when asked);
        partials are greedy, no words.
        """
        audio = np.ascontiguousarray(audio_f32_16k, dtype=np.float32).reshape(-1)
        return self.decode_batch([_Single(audio, final, word_timestamps, language, offset_s, prompt)],
                                 beam_size=beam_size)[0]

    def decode_batch(self, requests: Sequence[Utterance], *, beam_size: int | None = None,
                     defer_redo: bool = False) -> list[DecodeResult]:
        """Decode several utterances of one kind (all finals or all partials) in one encoder and one generate
        call. Each request may carry `stable_prefix` (its utterance's stable partial), `prompt` and
        `full_window`. With `defer_redo`, a degenerate final comes back marked `needs_full_window` (its text not
        to be used) instead of holding up the whole batch while it is decoded again."""
        started = time.perf_counter()
        results: list[DecodeResult | None] = [None] * len(requests)
        jobs: dict[int, Job] = {}
        for i, request in enumerate(requests):
            audio = np.ascontiguousarray(request.audio, dtype=np.float32).reshape(-1)
            language = request.language if request.language not in (None, "", "auto") else self.spec.language
            if rms(audio) < self.options.min_rms:
                results[i] = DecodeResult("", (), language or "", audio.size / SAMPLE_RATE, 0.0)
                continue
            beam = beam_size or (self.spec.beam_size if request.final else 1)
            jobs[i] = Job(audio, request.final, request.final and request.word_timestamps, language,
                          getattr(request, "prompt", None), beam, getattr(request, "stable_prefix", "") or "",
                          timestamps=request.final or self.policy.mode == "fit",
                          full_window=bool(getattr(request, "full_window", False)))
        long = [i for i, job in jobs.items() if self._direct.content_frames(job.audio.size) > FULL_WINDOW_FRAMES]
        for i in long:  # beyond one window (the VAD cuts before that): faster-whisper's sequential windows
            results[i] = self._decode_long(jobs.pop(i), requests[i].offset_s)
        # CTranslate2 wants <|startoftranscript|> at one position in a batch: one call per prompt.
        outputs: list[JobOutput] = []
        for prompt in dict.fromkeys(job.prompt for job in jobs.values()):
            group = {i: job for i, job in jobs.items() if job.prompt == prompt}
            outputs += self._direct.run(list(group.values()), redo=not defer_redo)
            for (i, job), output in zip(group.items(), outputs[-len(group):], strict=True):
                results[i] = self._finish(job, output, requests[i].offset_s)
        decode_s = time.perf_counter() - started
        self._count(results, outputs, decode_s)
        return [replace(result, decode_s=decode_s) for result in results if result is not None]

    def _finish(self, job: Job, output: JobOutput, offset_s: float) -> DecodeResult:
        duration_s = job.audio.size / SAMPLE_RATE
        raw = [_from_raw(segment) for segment in output.segments]
        guarded = clamp_segments(apply_guards(raw, self.options.guards), duration_s)
        segments = tuple(shift_segment(segment, offset_s) for segment in guarded)
        return DecodeResult(join_text(segments), segments, output.language, duration_s, 0.0,
                            window_frames=output.window_frames, degenerate=output.degenerate,
                            redone=output.redone, needs_full_window=output.needs_full_window)

    def _decode_long(self, job: Job, offset_s: float) -> DecodeResult:
        duration_s = job.audio.size / SAMPLE_RATE
        raw, detected = self._transcribe(job.audio, final=job.final, word_timestamps=job.word_timestamps,
                                         language=job.language, prompt=job.prompt, beam_size=job.beam_size)
        guarded = clamp_segments(apply_guards(raw, self.options.guards), duration_s)
        segments = tuple(shift_segment(segment, offset_s) for segment in guarded)
        return DecodeResult(join_text(segments), segments, detected, duration_s, 0.0,
                            window_frames=FULL_WINDOW_FRAMES)

    def warm_up(self) -> float:
        """Decode one second of noise (the energy floor would skip silence) so the first request pays no setup."""
        started = time.perf_counter()
        noise = np.random.default_rng(0).normal(0, 0.05, SAMPLE_RATE).astype(np.float32)
        self.decode(noise, final=True, word_timestamps=True, language=self.spec.language, offset_s=0.0)
        return time.perf_counter() - started

    def statistics(self) -> dict[str, float | int | str]:
        with self._lock:
            return {"alias": self.spec.alias, **self._counts, "encoder_window": self.policy.mode,
                    "decode_s_total": round(self._decode_s_total, 3), "load_s": round(self.load_s, 3)}

    def _count(self, results: Sequence[DecodeResult | None], outputs: Sequence[JobOutput], decode_s: float) -> None:
        with self._lock:
            self._counts["decodes"] += len(results)
            self._counts["batches"] += 1
            self._counts["skipped_quiet"] += sum(1 for r in results if r is not None and r.window_frames == 0)
            self._counts["finals_redone"] += sum(1 for o in outputs if o.redone)
            self._counts["degenerate"] += sum(1 for o in outputs if o.degenerate)
            self._decode_s_total += decode_s

    def _token_budget(self, duration_s: float) -> int:
        # Half the 448-token context is left for the prompt, which faster-whisper trims to 223 tokens.
        wanted = self.options.min_max_tokens + self.options.max_tokens_per_s * min(duration_s, 30.0)
        return min(int(wanted), 220)

    def _transcribe(self, audio: np.ndarray, *, final: bool, word_timestamps: bool, language: str | None,
                    prompt: str | None, beam_size: int = 1) -> tuple[list[DecodedSegment], str]:
        guards = self.options.guards
        segments, info = self._model.transcribe(
            audio, language=language, beam_size=beam_size,
            temperature=self.options.final_temperatures if final else 0.0,
            word_timestamps=word_timestamps, without_timestamps=not final,
            vad_filter=False,  # our VAD already cut the utterance
            condition_on_previous_text=False, initial_prompt=prompt or None,
            # Whisper's own skip uses the same test as is_made_up's first half, and spares a useless fallback.
            no_speech_threshold=guards.no_speech_threshold, log_prob_threshold=guards.log_prob_threshold,
            compression_ratio_threshold=guards.compression_ratio_threshold,
            max_new_tokens=self._token_budget(audio.size / SAMPLE_RATE))
        converted = [_convert(segment) for segment in segments]  # the generator runs the decode
        return converted, info.language


def _from_raw(segment: RawSegment) -> DecodedSegment:
    words = None if segment.words is None else tuple(
        Word(word, start_s, end_s, probability) for word, start_s, end_s, probability in segment.words)
    return DecodedSegment(segment.start_s, segment.end_s, segment.text, segment.avg_logprob,
                          segment.no_speech_prob, words, segment.compression_ratio)


def _convert(segment: Any) -> DecodedSegment:
    raw_words = getattr(segment, "words", None)
    words = None if raw_words is None else tuple(
        Word(w.word.strip(), float(w.start), float(w.end), float(w.probability))
        for w in raw_words if w.word.strip())
    return DecodedSegment(
        start_s=float(segment.start), end_s=float(segment.end), text=segment.text.strip(),
        avg_logprob=float(segment.avg_logprob), no_speech_prob=float(segment.no_speech_prob),
        words=words, compression_ratio=float(segment.compression_ratio))
