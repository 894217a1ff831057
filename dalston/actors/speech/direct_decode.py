"""Whisper through CTranslate2 directly: an encoder window that fits the utterance, batches, guarded fallback.

faster-whisper's `transcribe()` pads every call to 30 s and takes one audio at a time. Here the parts it is built
from are used directly: its feature extractor and tokenizer, CTranslate2's `encode`, `generate` (a batch of
utterances in one call) and `align` (word times, given each utterance's real frame count).

One `run(jobs)`:
1. log-mel features of each job, cut or padded to one window length (`encoder_window.batch_window_frames`);
2. one encoder pass and one greedy or beam `generate` over the batch, timestamp tokens on;
3. segments parsed from the timestamp tokens; text starting after the audio end dropped;
4. a final whose output looks degenerate (`output_guard.degenerate_reason`) is decoded again with the full 30 s
   window, and there, as Whisper does, with rising temperatures while it stays repetitive or unlikely; a partial
   that looks degenerate gives no text (the next partial or the final will do better);
5. word timestamps from `align`, kept inside the utterance by the caller's clamp.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from dalston.actors.speech.encoder_window import FULL_WINDOW_FRAMES, WindowPolicy, batch_window_frames, fit_features
from dalston.actors.speech.output_guard import (
    DegenerateLimits,
    TokenSegment,
    compression_ratio,
    cut_after_end,
    degenerate_reason,
    parse_segments,
)

SAMPLE_RATE = 16_000
MAX_INITIAL_TIMESTAMP_S = 1.0
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.\u3002,\uff0c!\uff01?\uff1f:\uff1a\u201d)]}\u3001"  # faster-whisper's, CJK included


@dataclass(frozen=True, eq=False)
class Job:
    audio: np.ndarray  # float32, 16 kHz mono
    final: bool
    word_timestamps: bool
    language: str | None  # None: detect
    prompt: str | None
    beam_size: int
    stable_prefix: str = ""  # the utterance's last stable partial text, when the caller knows it
    timestamps: bool = True  # timestamp tokens; off only for full-window partials (greedy reads better so)
    full_window: bool = False  # the 30 s window whatever the policy (a deferred second decode)


@dataclass(frozen=True)
class RawSegment:
    """A segment before the caller's guards; times relative to the start of the job's audio."""

    start_s: float
    end_s: float
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    words: tuple[tuple[str, float, float, float], ...] | None  # (word, start_s, end_s, probability)


@dataclass(frozen=True)
class JobOutput:
    segments: tuple[RawSegment, ...]
    language: str
    window_frames: int  # of the pass whose output this is
    degenerate: str | None  # what was wrong with the first pass's output, if anything
    redone: bool  # decoded again with the full window because of it (finals; a partial just loses its text)
    needs_full_window: bool = False  # degenerate, and the caller asked to run the second decode itself


@dataclass(frozen=True)
class Thresholds:
    """Whisper's own quality thresholds (DESIGN §5), shared with the guards."""

    no_speech: float = 0.6
    log_prob: float = -1.0
    compression_ratio: float = 2.4


@dataclass
class _Pass:
    """One job's output of one generate call, and where its encoder output lives (for `align`)."""

    segments: list[TokenSegment]
    text: str
    avg_logprob: float
    no_speech_prob: float
    window_frames: int
    encoded: Any
    batch_index: int

    @property
    def ratio(self) -> float:
        return compression_ratio(self.text)


class DirectWhisper:
    """Blocking; safe to call from several threads (CTranslate2 queues calls on its workers)."""

    def __init__(self, model: Any, policy: WindowPolicy, *, limits: DegenerateLimits | None = None,
                 thresholds: Thresholds | None = None, temperatures: Sequence[float] = (0.0,),
                 token_budget: Callable[[float], int] = lambda duration_s: 220) -> None:
        from faster_whisper.tokenizer import Tokenizer

        self._whisper = model  # a faster_whisper.WhisperModel: its extractor, tokenizer and ctranslate2 model
        self._ct2 = model.model
        self.policy = policy
        self.limits = limits or DegenerateLimits()
        self.thresholds = thresholds or Thresholds()
        self.temperatures = tuple(temperatures)
        self._token_budget = token_budget
        self._tokenizer_type = Tokenizer
        self._tokenizers: dict[str, Any] = {}
        self.fallback_to_full = True  # off only in benchmarks/window_study.py, to measure what the guards catch

    def content_frames(self, samples: int) -> int:
        """Mel frames of `samples` of audio, as the feature extractor computes them (less its padding frame)."""
        return samples // 160  # (samples + 160 of padding) // hop + 1 frames, the last of them padding

    def run(self, jobs: Sequence[Job], *, redo: bool = True) -> list[JobOutput]:
        """Decode `jobs` as one batch (same beam size for all: the first job's). With `redo` False a degenerate
        final is not decoded again here but marked `needs_full_window`, so that the rest of its batch need not
        wait for that second decode."""
        if not jobs:
            return []
        features = [self._whisper.feature_extractor(np.ascontiguousarray(job.audio, dtype=np.float32))
                    for job in jobs]
        frames = batch_window_frames([f.shape[-1] - 1 for f in features], self.policy)
        if any(job.full_window for job in jobs):
            frames = FULL_WINDOW_FRAMES
        passes, languages = self._decode_window(jobs, features, frames, detect=True)
        reasons = [self._reason(job, done) for job, done in zip(jobs, passes, strict=True)]
        wanted = [i for i, job in enumerate(jobs)
                  if job.final and reasons[i] and frames < FULL_WINDOW_FRAMES and self.fallback_to_full]
        redo = wanted if redo else []
        for i, job in enumerate(jobs):
            if not job.final and reasons[i] and frames < FULL_WINDOW_FRAMES:
                passes[i] = replace(passes[i], segments=[], text="")  # no text rather than wrong text
        if redo:
            again, _ = self._decode_window([jobs[i] for i in redo], [features[i] for i in redo],
                                           FULL_WINDOW_FRAMES, languages=[languages[i] for i in redo])
            for i, done in zip(redo, again, strict=True):
                passes[i] = done
        self._raise_temperature(jobs, features, passes, languages)
        words = self._words(jobs, passes, languages, features)
        return [JobOutput(self._segments(job, done, languages[i], words.get(i)), languages[i], done.window_frames,
                          reasons[i], i in redo, needs_full_window=i in wanted and i not in redo)
                for i, (job, done) in enumerate(zip(jobs, passes, strict=True))]

    # ------------------------------------------------------------------ passes

    def _decode_window(self, jobs: Sequence[Job], features: Sequence[np.ndarray], frames: int, *,
                       detect: bool = False, languages: Sequence[str] | None = None,
                       temperature: float = 0.0) -> tuple[list[_Pass], list[str]]:
        import ctranslate2

        batch = np.stack([fit_features(f, frames) for f in features])
        encoded = self._ct2.encode(ctranslate2.StorageView.from_array(batch), to_cpu=False)
        if languages is None:
            languages = self._languages(jobs, encoded if detect else None)
        tokenizers = [self.tokenizer(language) for language in languages]
        prompts = [self._prompt(tokenizer, job) for tokenizer, job in zip(tokenizers, jobs, strict=True)]
        durations = [job.audio.size / SAMPLE_RATE for job in jobs]
        max_length = min(448, max(len(p) + self._token_budget(d) for p, d in zip(prompts, durations, strict=True)))
        options = self._generate_options(jobs[0].beam_size, temperature)
        results = self._ct2.generate(encoded, prompts, max_length=max_length, return_scores=True,
                                     return_no_speech_prob=True, suppress_blank=True,
                                     suppress_tokens=self._suppressed(tokenizers[0]),
                                     max_initial_timestamp_index=int(MAX_INITIAL_TIMESTAMP_S / 0.02), **options)
        passes = [self._read(result, tokenizer, job, frames, encoded, index)
                  for index, (result, tokenizer, job) in enumerate(zip(results, tokenizers, jobs, strict=True))]
        return passes, list(languages)

    @staticmethod
    def _generate_options(beam_size: int, temperature: float) -> dict[str, Any]:
        if temperature > 0:
            return {"beam_size": 1, "num_hypotheses": 5, "sampling_topk": 0, "sampling_temperature": temperature}
        return {"beam_size": beam_size, "patience": 1.0}

    def _read(self, result: Any, tokenizer: Any, job: Job, frames: int, encoded: Any, index: int) -> _Pass:
        duration_s = job.audio.size / SAMPLE_RATE
        tokens = list(result.sequences_ids[0])
        segments = cut_after_end(parse_segments(tokens, tokenizer.timestamp_begin, tokenizer.eot), duration_s)
        if segments and not job.timestamps:  # one segment spanning the audio, closed by construction
            segments = [TokenSegment(0.0, duration_s, tuple(t for s in segments for t in s.tokens))]
        text = "".join(tokenizer.decode(list(segment.tokens)) for segment in segments).strip()
        avg_logprob = result.scores[0] * len(tokens) / (len(tokens) + 1)  # length penalty 1, as faster-whisper
        return _Pass(segments, text, float(avg_logprob), float(result.no_speech_prob), frames, encoded, index)

    def _reason(self, job: Job, done: _Pass) -> str | None:
        """Why this output cannot be trusted, or None. Output the guards will drop as silence needs no redo."""
        if self._silence(done):
            return None
        reason = degenerate_reason(done.segments, done.text, job.audio.size / SAMPLE_RATE, self.limits,
                                   stable_prefix=job.stable_prefix)
        if reason is None and job.final and self._needs_another_try(done):
            reason = "unlikely"  # on the full window this would go to sampling at a higher temperature
        return reason

    def _silence(self, done: _Pass) -> bool:
        return done.no_speech_prob > self.thresholds.no_speech and (
            done.avg_logprob < self.thresholds.log_prob or done.ratio > self.thresholds.compression_ratio)

    def _raise_temperature(self, jobs: Sequence[Job], features: Sequence[np.ndarray], passes: list[_Pass],
                           languages: Sequence[str]) -> None:
        """Whisper's fallback: a full-window final that is repetitive or unlikely is sampled at rising
        temperatures; the most likely of the tries below the compression threshold is kept."""
        for i, job in enumerate(jobs):
            if not job.final or passes[i].window_frames < FULL_WINDOW_FRAMES:
                continue
            tries = [passes[i]]
            for temperature in self.temperatures[1:]:
                if not self._needs_another_try(tries[-1]):
                    break
                again, _ = self._decode_window([job], [features[i]], FULL_WINDOW_FRAMES, languages=[languages[i]],
                                               temperature=temperature)
                tries.append(again[0])
            if len(tries) > 1 and self._needs_another_try(tries[-1]):
                sound = [t for t in tries if t.ratio <= self.thresholds.compression_ratio] or tries
                passes[i] = max(sound, key=lambda t: t.avg_logprob)
            else:
                passes[i] = tries[-1]

    def _needs_another_try(self, done: _Pass) -> bool:
        if self._silence(done) or (done.no_speech_prob > self.thresholds.no_speech
                                   and done.avg_logprob < self.thresholds.log_prob):
            return False
        return done.ratio > self.thresholds.compression_ratio or done.avg_logprob < self.thresholds.log_prob

    # ------------------------------------------------------------------ tokens, languages, words

    def tokenizer(self, language: str) -> Any:
        tokenizer = self._tokenizers.get(language)
        if tokenizer is None:
            tokenizer = self._tokenizer_type(self._whisper.hf_tokenizer, self._ct2.is_multilingual,
                                             task="transcribe", language=language)
            self._tokenizers[language] = tokenizer  # a benign race: both threads build the same thing
        return tokenizer

    def _languages(self, jobs: Sequence[Job], encoded: Any) -> list[str]:
        if all(job.language for job in jobs) or not self._ct2.is_multilingual:
            return [job.language or "en" for job in jobs]
        detected = self._ct2.detect_language(encoded)
        return [job.language or detected[i][0][0][2:-2] for i, job in enumerate(jobs)]

    def _prompt(self, tokenizer: Any, job: Job) -> list[int]:
        previous: list[int] = []
        if job.prompt:
            text = tokenizer.encode(" " + job.prompt.strip())
            previous = [tokenizer.sot_prev, *text[-(self._whisper.max_length // 2 - 1):]]
        return previous + list(tokenizer.sot_sequence) + ([] if job.timestamps else [tokenizer.no_timestamps])

    @staticmethod
    def _suppressed(tokenizer: Any) -> list[int]:
        from faster_whisper.transcribe import get_suppressed_tokens

        return list(get_suppressed_tokens(tokenizer, [-1]))

    def _words(self, jobs: Sequence[Job], passes: Sequence[_Pass], languages: Sequence[str],
               features: Sequence[np.ndarray]) -> dict[int, list[dict[str, Any]]]:
        """Word alignments, one `align` call per encoder output (and language) that produced wanted words."""
        groups: dict[tuple[int, str], list[int]] = {}
        for i, (job, done) in enumerate(zip(jobs, passes, strict=True)):
            if job.final and job.word_timestamps and done.segments:
                groups.setdefault((id(done.encoded), languages[i]), []).append(i)
        words: dict[int, list[dict[str, Any]]] = {}
        for (_, language), members in groups.items():
            words.update(self._align_group(members, passes, self.tokenizer(language), features))
        return words

    def _align_group(self, members: list[int], passes: Sequence[_Pass], tokenizer: Any,
                     features: Sequence[np.ndarray]) -> dict[int, list[dict[str, Any]]]:
        from faster_whisper.transcribe import merge_punctuations

        first = passes[members[0]]
        size = first.encoded.shape[0]
        text_tokens: list[list[int]] = [[tokenizer.eot - 1]] * size  # placeholders for the rows not wanted
        num_frames = [first.window_frames] * size
        for i in members:
            done = passes[i]
            text_tokens[done.batch_index] = [t for segment in done.segments for t in segment.tokens]
            num_frames[done.batch_index] = min(features[i].shape[-1] - 1, done.window_frames)
        alignments = self._whisper.find_alignment(tokenizer, text_tokens, first.encoded, num_frames)
        result = {}
        for i in members:
            alignment = alignments[passes[i].batch_index]
            merge_punctuations(alignment, PREPEND_PUNCTUATIONS, APPEND_PUNCTUATIONS)
            result[i] = alignment
        return result

    def _segments(self, job: Job, done: _Pass, language: str,
                  alignment: list[dict[str, Any]] | None) -> tuple[RawSegment, ...]:
        tokenizer = self.tokenizer(language)
        duration_s = job.audio.size / SAMPLE_RATE
        ratio = done.ratio
        timings = iter(alignment or [])
        segments = []
        for segment in done.segments:
            words = None if alignment is None else _take_words(timings, len(segment.tokens))
            end_s = segment.end_s if segment.end_s is not None else duration_s
            segments.append(RawSegment(segment.start_s, end_s, tokenizer.decode(list(segment.tokens)).strip(),
                                       done.avg_logprob, done.no_speech_prob, ratio, words))
        return tuple(segments)


def _take_words(timings: Any, token_count: int) -> tuple[tuple[str, float, float, float], ...]:
    """The aligned words that cover the next `token_count` text tokens (punctuation merged into words)."""
    words = []
    taken = 0
    while taken < token_count:
        timing = next(timings, None)
        if timing is None:
            break
        taken += len(timing["tokens"])
        if timing["word"].strip():
            words.append((timing["word"].strip(), float(timing["start"]), float(timing["end"]),
                          float(timing["probability"])))
    return tuple(words)
