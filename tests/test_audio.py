"""PcmDecoder (s16le; other encodings in test_encodings.py): decoding, resampling to 16 kHz, odd bytes, limits,
and chunking invariance; read_wav."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from speech_fixtures import cut

from dalston.actors.speech.audio import AudioDecoder, InvalidAudio, PcmDecoder, UnsupportedSampleRate, read_wav

LIBRIVOX = sorted((Path(__file__).parent / "data" / "librivox").glob("*.wav"))


def sine_pcm(freq_hz: float, rate: int, seconds: float) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * freq_hz * t) * 12000).astype("<i2").tobytes()


def decode_all(decoder: AudioDecoder, frames: list[bytes]) -> np.ndarray:
    """Every sample of a stream, shape (channels, n); a mono stream as one row flattened."""
    out = np.concatenate([*(decoder.decode(f) for f in frames), decoder.finish()], axis=1)
    return out[0] if out.shape[0] == 1 else out


def peak_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / 16000)[np.argmax(spectrum)])


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000])
def test_a_sine_keeps_its_frequency_and_duration_at_16_khz(rate):
    decoder = PcmDecoder(rate, max_frame_bytes=1 << 20)
    out = decode_all(decoder, cut(sine_pcm(440.0, rate, 2.0), [3200] * 10))
    assert out.dtype == np.float32
    assert abs(len(out) - 32000) <= 2
    assert abs(peak_hz(out) - 440.0) < 2.0
    assert abs(float(np.max(np.abs(out))) - 12000 / 32768) < 0.01


def test_16_khz_input_is_passed_through_without_resampling():
    pcm = np.array([0, 1, -1, 32767, -32768], dtype="<i2")
    out = decode_all(PcmDecoder(16000, 1024), [pcm.tobytes()])
    np.testing.assert_array_equal(out, pcm.astype(np.float32) / 32768)


def test_an_odd_trailing_byte_is_carried_into_the_next_frame():
    pcm = np.array([1000, -2000, 3000], dtype="<i2").tobytes()
    decoder = PcmDecoder(16000, 1024)
    first = decoder.decode(pcm[:3])
    assert first.shape == (1, 1) and decoder.pending_odd_byte
    second = decoder.decode(pcm[3:])
    np.testing.assert_array_equal(np.concatenate([first, second], axis=1)[0] * 32768, [1000, -2000, 3000])
    assert not decoder.pending_odd_byte


def test_finish_reports_an_odd_byte_left_over():
    decoder = PcmDecoder(16000, 1024)
    decoder.decode(b"\x01\x02\x03")
    assert decoder.finish().size == 0
    assert decoder.trailing_byte_dropped


def test_an_oversize_frame_is_rejected_as_invalid_audio():
    decoder = PcmDecoder(16000, max_frame_bytes=1000)
    decoder.decode(b"\x00" * 1000)
    with pytest.raises(InvalidAudio) as caught:
        decoder.decode(b"\x00" * 1001)
    assert caught.value.code == "invalid_audio"
    assert "1001" in str(caught.value)


@pytest.mark.parametrize("rate", [0, 7999, 48001, 96000])
def test_sample_rates_outside_8_to_48_khz_are_refused_at_construction(rate):
    with pytest.raises(UnsupportedSampleRate):
        PcmDecoder(rate, 1024)


def test_decoding_after_finish_is_an_error():
    decoder = PcmDecoder(16000, 1024)
    decoder.finish()
    with pytest.raises(RuntimeError):
        decoder.decode(b"\x00\x00")


@settings(max_examples=25, deadline=None)
@given(
    st.sampled_from([8000, 16000, 44100, 48000]),
    st.lists(st.integers(0, 5000), max_size=30),
)
def test_any_chunking_of_a_stream_gives_the_same_samples(rate, sizes):
    pcm = sine_pcm(300.0, rate, 1.0) + sine_pcm(1234.0, rate, 0.5)
    whole = decode_all(PcmDecoder(rate, 1 << 20), [pcm])
    chunked = decode_all(PcmDecoder(rate, 1 << 20), cut(pcm, sizes))
    assert len(chunked) == len(whole)
    np.testing.assert_allclose(chunked, whole, atol=1e-5)


def test_read_wav_reads_librivox_as_16_khz_int16():
    samples, rate = read_wav(LIBRIVOX[0])
    assert rate == 16000 and samples.dtype == np.int16 and len(samples) > rate


def test_read_wav_downmixes_stereo_by_averaging(tmp_path):
    left = np.array([1000, -1000, 3000], dtype="<i2")
    right = np.array([3000, -3000, 3001], dtype="<i2")
    path = tmp_path / "stereo.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(44100)
        wav.writeframes(np.stack([left, right], axis=1).tobytes())
    samples, rate = read_wav(path)
    assert rate == 44100
    np.testing.assert_array_equal(samples, [2000, -2000, 3000])
