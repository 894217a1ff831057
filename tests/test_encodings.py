"""Every encoding a client may send: G.711 against the standard, Opus in Ogg and WebM, several channels.

No model here: decoders are checked against reference tables, a library encoder (ffmpeg's, via PyAV) and
themselves under any split of the byte stream into frames.
"""

from __future__ import annotations

import random
import struct
import warnings

import numpy as np
import pytest
from audio_encoders import encode, webm_with_blocks
from hypothesis import given, settings
from hypothesis import strategies as st
from speech_fixtures import cut, random_chunks

from dalston.actors.speech import g711
from dalston.actors.speech.audio import InvalidAudio, PcmDecoder, new_decoder
from dalston.actors.speech.ogg import ContainerError, OggReader, ogg_crc
from dalston.actors.speech.webm import WebmPacket, WebmReader


def decode_all(decoder, frames) -> np.ndarray:
    return np.concatenate([*(decoder.decode(frame) for frame in frames), decoder.finish()], axis=1)


def tone(rate: int, seconds: float, hz: float = 440.0, amplitude: int = 12000) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (np.sin(2 * np.pi * hz * t) * amplitude).astype(np.int16)


# ---------------------------------------------------------------- G.711 against the standard

# ITU-T G.711 defines each code by its segment's decision interval; the decoder outputs the interval's middle.
# µ-law (Table 2a), magnitudes in 14-bit units: segment s starts at MULAW_SEGMENT_START[s], steps of 2**(s+1)
# (segment 0: steps of 2 from -1, so code 0 decodes to 0). All 8 bits are inverted on the line; the sign bit
# set after inversion is negative.
MULAW_SEGMENT_START = [0, 31, 95, 223, 479, 991, 2015, 4063]
# A-law (Table 1a), 13-bit units: segments 0 and 1 both step by 2 from 0 and 32; segment s >= 2 starts at
# 2**(s+4) and steps by 2**s. Even bits are inverted on the line (XOR 0x55); the sign bit set is positive.
ALAW_SEGMENT_START = [0, 32, 64, 128, 256, 512, 1024, 2048]


def reference_mulaw(code: int) -> int:
    bits = code ^ 0xFF
    negative, segment, step = bits & 0x80, (bits >> 4) & 7, bits & 0x0F
    middle = 2 * step if segment == 0 else MULAW_SEGMENT_START[segment] + step * 2 ** (segment + 1) + 2 ** segment
    return -4 * middle if negative else 4 * middle  # 14-bit -> 16-bit


def reference_alaw(code: int) -> int:
    bits = code ^ 0x55
    positive, segment, step = bits & 0x80, (bits >> 4) & 7, bits & 0x0F
    width = 2 if segment < 2 else 2 ** segment
    middle = ALAW_SEGMENT_START[segment] + step * width + width // 2
    return 8 * middle if positive else -8 * middle  # 13-bit -> 16-bit


def test_mulaw_table_is_the_middle_of_each_g711_decision_interval():
    assert [int(v) for v in g711.MULAW_TABLE] == [reference_mulaw(code) for code in range(256)]


def test_alaw_table_is_the_middle_of_each_g711_decision_interval():
    assert [int(v) for v in g711.ALAW_TABLE] == [reference_alaw(code) for code in range(256)]


def test_g711_tables_are_odd_monotonic_and_span_the_16_bit_range():
    for table, peak in ((g711.MULAW_TABLE, 32124), (g711.ALAW_TABLE, 32256)):
        assert int(table.max()) == peak and int(table.min()) == -peak
        assert len(set(table.tolist())) >= 255  # µ-law has +0 and -0, both 0
        positive = np.sort(table[table > 0])
        assert np.all(np.diff(positive) > 0)


def test_g711_tables_equal_audioop_where_python_still_has_it():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        audioop = pytest.importorskip("audioop")  # removed in Python 3.13
    codes = bytes(range(256))
    np.testing.assert_array_equal(g711.MULAW_TABLE, np.frombuffer(audioop.ulaw2lin(codes, 2), "<i2"))
    np.testing.assert_array_equal(g711.ALAW_TABLE, np.frombuffer(audioop.alaw2lin(codes, 2), "<i2"))


def test_the_library_encoders_g711_decodes_close_to_the_original():
    pcm = tone(8000, 1.0)
    for encoding in ("pcm_mulaw", "pcm_alaw"):
        data = encode(pcm, 8000, encoding)
        assert len(data) == len(pcm)
        decoded = g711.decode_mulaw(data) if encoding == "pcm_mulaw" else g711.decode_alaw(data)
        error = np.abs(decoded.astype(np.int32) - pcm)
        assert np.all(error <= np.maximum(np.abs(pcm) // 16, 16)), encoding  # G.711: ~4 bits of mantissa


@given(st.lists(st.integers(-32768, 32767), max_size=200))
def test_g711_encoding_then_decoding_picks_the_nearest_level(samples):
    pcm = np.array(samples, dtype=np.int16)
    for table, encoder in ((g711.MULAW_TABLE, g711.encode_mulaw), (g711.ALAW_TABLE, g711.encode_alaw)):
        decoded = table[np.frombuffer(encoder(pcm), dtype=np.uint8)].astype(np.int32)
        nearest = np.min(np.abs(table.astype(np.int32)[None, :] - pcm.astype(np.int32)[:, None]), axis=1) \
            if len(pcm) else np.zeros(0, np.int32)
        np.testing.assert_array_equal(np.abs(decoded - pcm), nearest)


# ---------------------------------------------------------------- framing invariance, all encodings

@settings(max_examples=20, deadline=None)
@given(encoding=st.sampled_from(["pcm_s16le", "pcm_f32le", "pcm_mulaw", "pcm_alaw"]),
       rate=st.sampled_from([8000, 16000, 44100]), channels=st.integers(1, 3),
       sizes=st.lists(st.integers(0, 3000), max_size=20))
def test_any_frame_split_of_pcm_or_g711_gives_the_same_samples(encoding, rate, channels, sizes):
    pcm = np.stack([tone(rate, 0.5, 300.0 * (c + 1)) for c in range(channels)], axis=1)
    data = {"pcm_s16le": pcm.astype("<i2").tobytes(),
            "pcm_f32le": (pcm.astype("<f4") / 32768).tobytes(),
            "pcm_mulaw": g711.encode_mulaw(pcm), "pcm_alaw": g711.encode_alaw(pcm)}[encoding]
    whole = decode_all(PcmDecoder(rate, 1 << 22, encoding=encoding, channels=channels), [data])
    split = decode_all(PcmDecoder(rate, 1 << 22, encoding=encoding, channels=channels), cut(data, sizes))
    assert whole.shape == split.shape and whole.shape[0] == channels
    np.testing.assert_allclose(split, whole, atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(channels=st.integers(1, 8), sizes=st.lists(st.integers(0, 97), max_size=40))
def test_interleaved_channels_are_separated_for_any_frame_split(channels, sizes):
    # Each channel carries its own index in every sample, so any mix-up between channels shows.
    frames = 300
    pcm = (np.arange(frames)[:, None] * 8 + np.arange(channels)[None, :]).astype(np.int16)
    out = decode_all(PcmDecoder(16000, 1 << 20, channels=channels), cut(pcm.tobytes(), sizes))
    assert out.shape == (channels, frames)
    np.testing.assert_array_equal(np.round(out * 32768).astype(np.int32), pcm.T)


OPUS_CLIPS: dict[tuple[str, int], bytes] = {}


def opus_stream(encoding: str, channels: int) -> bytes:
    if (encoding, channels) not in OPUS_CLIPS:
        pcm = np.stack([tone(16000, 1.5, 440.0 * (c + 1)) for c in range(channels)], axis=1)
        OPUS_CLIPS[encoding, channels] = encode(pcm, 16000, encoding)
    return OPUS_CLIPS[encoding, channels]


@settings(max_examples=12, deadline=None)
@given(encoding=st.sampled_from(["ogg_opus", "webm_opus"]), channels=st.sampled_from([1, 2]),
       seed=st.integers(0, 10**6))
def test_any_frame_split_of_an_opus_stream_gives_the_same_samples(encoding, channels, seed):
    data = opus_stream(encoding, channels)
    whole = decode_all(new_decoder(encoding, 16000, 1 << 20, channels), [data])
    split = decode_all(new_decoder(encoding, 16000, 1 << 20, channels),
                       list(random_chunks(data, random.Random(seed), max_bytes=700)))
    np.testing.assert_array_equal(split, whole)


@pytest.mark.parametrize("encoding", ["ogg_opus", "webm_opus"])
def test_a_stereo_opus_stream_keeps_its_channels_apart_or_mixes_them_for_a_mono_session(encoding):
    data = opus_stream(encoding, 2)
    stereo = decode_all(new_decoder(encoding, 16000, 1 << 20, channels=2), [data])
    mono = decode_all(new_decoder(encoding, 16000, 1 << 20, channels=1), [data])
    assert stereo.shape[0] == 2 and mono.shape[0] == 1
    assert abs(stereo.shape[1] - 24000) < 400  # 1.5 s at 16 kHz (plus Opus's last frame padding)
    peaks = [np.fft.rfftfreq(row.size, 1 / 16000)[np.argmax(np.abs(np.fft.rfft(row)))] for row in stereo]
    assert peaks == pytest.approx([440.0, 880.0], abs=2.0)
    np.testing.assert_allclose(mono[0], stereo.mean(axis=0), atol=1e-5)


@pytest.mark.parametrize("encoding", ["ogg_opus", "webm_opus"])
def test_opus_audio_starts_where_the_encoded_audio_started(encoding):
    # The encoder's priming samples (OpusHead pre-skip, 6.5 ms) are dropped once: the decoded audio lines up
    # with the original, no sample of its start lost.
    rng = np.random.default_rng(5)
    pcm = (np.convolve(rng.normal(0, 6000, 16000), np.ones(4) / 4, "same")).astype(np.int16)  # speech-band noise
    out = decode_all(new_decoder(encoding, 16000, 1 << 22), [encode(pcm, 16000, encoding, bitrate=96000)])[0]
    lags = range(-200, 201)
    scores = [float(np.dot(out[max(0, lag):8000 + max(0, lag)], pcm[max(0, -lag):8000 + max(0, -lag)]))
              for lag in lags]
    assert lags[int(np.argmax(scores))] == 0


@pytest.mark.parametrize("second_channels", [1, 2])
def test_a_chained_ogg_stream_decodes_each_of_its_streams_in_turn(second_channels):
    # RFC 3533 chaining: a new logical stream (its own OpusHead, serial and pre-skip) starts after one ends.
    first = tone(16000, 1.0, 440.0)
    second = np.stack([tone(16000, 0.75, 880.0)] * second_channels, axis=1)
    data = encode(first, 16000, "ogg_opus") + encode(second, 16000, "ogg_opus")
    frames = list(random_chunks(data, random.Random(2), max_bytes=4000))
    out = decode_all(new_decoder("ogg_opus", 16000, 1 << 22), frames)[0]
    assert out.shape == (16000 + 12000,)  # each stream to its own exact end
    peaks = [np.fft.rfftfreq(part.size, 1 / 16000)[np.argmax(np.abs(np.fft.rfft(part)))]
             for part in (out[1000:15000], out[17000:27000])]
    assert peaks == pytest.approx([440.0, 880.0], abs=2.0)


def webm_packets(data: bytes) -> tuple[bytes, list[WebmPacket]]:
    """A WebM stream's OpusHead and packets, as the reader gives them."""
    reader = WebmReader()
    packets = reader.feed(data)
    reader.finish()
    assert reader.track is not None
    return reader.track.codec_private, packets


def laceable(lacing: str, packets: list[bytes]) -> list[bytes]:
    """`packets` as a block of that lacing can hold them: one if unlaced, all of one size if fixed."""
    if lacing == "none":
        return packets[:1]
    if lacing == "fixed":
        return [packet.ljust(len(packets[0]), b"x")[:len(packets[0])] for packet in packets]
    return packets


LACED_BLOCKS = st.lists(st.tuples(st.sampled_from(["none", "xiph", "ebml", "fixed"]),
                                  st.lists(st.binary(max_size=700), min_size=1, max_size=6)), min_size=1, max_size=8)


@settings(max_examples=60, deadline=None)
@given(blocks=LACED_BLOCKS, sizes=st.lists(st.integers(0, 400), max_size=30))
def test_laced_webm_blocks_give_their_packets_in_order_for_any_frame_split(blocks, sizes):
    blocks = [(lacing, laceable(lacing, packets)) for lacing, packets in blocks]
    data = webm_with_blocks(b"OpusHead" + bytes(11), blocks)
    reader = WebmReader()
    got = [packet.data for frame in cut(data, sizes) for packet in reader.feed(frame)]
    reader.finish()
    assert got == [packet for _, packets in blocks for packet in packets]


@pytest.mark.parametrize("lacing", ["xiph", "ebml"])
def test_a_laced_webm_opus_stream_decodes_to_the_same_samples_as_one_packet_per_block(lacing):
    head, packets = webm_packets(opus_stream("webm_opus", 1))
    data = [p.data for p in packets]
    single = webm_with_blocks(head, [("none", [p]) for p in data])
    laced = webm_with_blocks(head, [(lacing, data[i:i + 5]) for i in range(0, len(data), 5)])
    expected = decode_all(new_decoder("webm_opus", 16000, 1 << 20), [single])
    assert expected.shape[1] > 20000
    np.testing.assert_array_equal(decode_all(new_decoder("webm_opus", 16000, 1 << 20),
                                             list(random_chunks(laced, random.Random(3), max_bytes=300))), expected)


@pytest.mark.parametrize("samples", [16000, 24000, 33333])
def test_a_webm_opus_stream_decodes_to_exactly_as_many_samples_as_were_encoded(samples):
    # The encoder pads its last Opus frame and says by how much in that block's DiscardPadding.
    pcm = tone(16000, samples / 16000)
    data = encode(pcm, 16000, "webm_opus")
    frames = list(random_chunks(data, random.Random(samples), max_bytes=4000))
    out = decode_all(new_decoder("webm_opus", 16000, 1 << 22), frames)
    assert out.shape == (1, samples)


# ---------------------------------------------------------------- bad data

def test_ogg_crc_equals_the_bitwise_definition():
    def slow(data: bytes) -> int:
        crc = 0
        for byte in data:
            crc ^= byte << 24
            for _ in range(8):
                crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
                crc &= 0xFFFFFFFF
        return crc

    rng = random.Random(7)
    for size in (0, 1, 27, 300):
        data = bytes(rng.randrange(256) for _ in range(size))
        assert ogg_crc(data) == slow(data)


def test_a_corrupt_ogg_page_is_invalid_audio_naming_the_page():
    data = bytearray(opus_stream("ogg_opus", 1))
    data[len(data) // 2] ^= 0x40
    with pytest.raises(InvalidAudio, match="CRC mismatch"):
        decode_all(new_decoder("ogg_opus", 16000, 1 << 20),
                   list(random_chunks(bytes(data), random.Random(1), max_bytes=4000)))


@pytest.mark.parametrize("encoding", ["ogg_opus", "webm_opus"])
def test_a_truncated_opus_stream_is_invalid_audio_at_its_end(encoding):
    data = opus_stream(encoding, 1)
    decoder = new_decoder(encoding, 16000, 1 << 20)
    decoder.decode(data[:-5])
    with pytest.raises(InvalidAudio, match="truncated"):
        decoder.finish()


@pytest.mark.parametrize(("encoding", "data", "message"), [
    ("ogg_opus", b"RIFF\x00\x00\x00\x00WAVE", "not an Ogg page"),
    ("webm_opus", b"RIFF\x00\x00\x00\x00WAVE", "not a WebM stream"),
    ("ogg_opus", bytes(opus_stream("webm_opus", 1)[:64]), "not an Ogg page"),
    ("webm_opus", bytes(opus_stream("ogg_opus", 1)[:64]), "not a WebM stream"),
])
def test_a_stream_of_the_wrong_kind_is_invalid_audio_saying_so(encoding, data, message):
    with pytest.raises(InvalidAudio, match=message):
        new_decoder(encoding, 16000, 1 << 20).decode(data)


def test_an_ogg_stream_without_opus_is_invalid_audio():
    body = b"\x01vorbis" + b"\x00" * 23
    header = struct.pack("<4sBBqIIIB", b"OggS", 0, 2, 0, 1, 0, 0, 1) + bytes([len(body)])
    page = bytearray(header + body)
    page[22:26] = struct.pack("<I", ogg_crc(page))
    with pytest.raises(InvalidAudio, match="OpusHead"):
        new_decoder("ogg_opus", 16000, 1 << 20).decode(bytes(page))


def test_a_stereo_opus_stream_cannot_fill_three_channels():
    with pytest.raises(InvalidAudio, match="channels=3"):
        decode_all(new_decoder("ogg_opus", 16000, 1 << 20, channels=3), [opus_stream("ogg_opus", 2)])


def test_non_finite_float_samples_are_invalid_audio():
    with pytest.raises(InvalidAudio, match="NaN"):
        PcmDecoder(16000, 1024, encoding="pcm_f32le").decode(np.array([0.1, np.nan], "<f4").tobytes())


@given(st.binary(max_size=400))
def test_the_container_readers_take_any_bytes_without_crashing(data):
    for reader in (OggReader(), WebmReader()):
        try:
            reader.feed(data)
            reader.finish()
        except ContainerError:
            pass


@pytest.mark.parametrize("samples", [16000, 24000, 33333])
def test_an_ogg_opus_stream_decodes_to_exactly_as_many_samples_as_were_encoded(samples):
    # The last page's granule position says where the stream ends; the padding of the last Opus frame goes.
    pcm = tone(16000, samples / 16000)
    out = decode_all(new_decoder("ogg_opus", 16000, 1 << 22), list(random_chunks(encode(pcm, 16000, "ogg_opus"),
                                                                               random.Random(samples), max_bytes=4000)))
    assert out.shape == (1, samples)
