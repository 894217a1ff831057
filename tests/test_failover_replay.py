"""The gateway's replay buffer: what it keeps for a failover, for any frames and finals (DESIGN §6)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dalston.web.replay import SAMPLE_BYTES, RelayedFinal, ReplayBuffer

RATE = 8000

# A session: frames of random bytes (any sizes, odd ones included) and, between them, finals whose end lies
# somewhere in the audio received so far (as a worker's final can only cover audio it was sent).
steps = st.lists(
    st.one_of(st.binary(min_size=1, max_size=700).map(lambda b: ("audio", b)),
              st.floats(min_value=0.0, max_value=1.0).map(lambda f: ("final", f))),
    max_size=60,
)


def _run(encoding: str, channels: int, items: list[tuple[str, object]], keep_s: float, cap_bytes: int
         ) -> tuple[ReplayBuffer, bytes, float]:
    buffer = ReplayBuffer(encoding, RATE, channels, keep_s=keep_s, cap_bytes=cap_bytes)
    stream = b""
    last_end_s = 0.0
    for kind, value in items:
        if kind == "audio":
            assert isinstance(value, bytes)
            buffer.append(value)
            stream += value
        else:
            assert isinstance(value, float)
            received_s = buffer.time_at(len(stream))
            last_end_s = max(last_end_s, last_end_s + (received_s - last_end_s) * value)
            for channel in range(channels):
                buffer.final_relayed(RelayedFinal("words", last_end_s / 2, last_end_s,
                                                  None if channels == 1 else channel))
    return buffer, stream, last_end_s


@settings(max_examples=300, deadline=None)
@given(items=steps, encoding=st.sampled_from(sorted(SAMPLE_BYTES)), channels=st.sampled_from([1, 2]),
       keep_s=st.floats(min_value=0.01, max_value=0.5), cap_bytes=st.integers(min_value=8, max_value=4000))
def test_the_buffer_keeps_exactly_the_audio_after_the_last_final_and_never_more_than_its_bound(
        items: list[tuple[str, object]], encoding: str, channels: int, keep_s: float, cap_bytes: int) -> None:
    buffer, stream, last_end_s = _run(encoding, channels, items, keep_s, cap_bytes)
    frame = SAMPLE_BYTES[encoding] * channels
    bound = min(cap_bytes, int(keep_s * RATE * frame))
    bound -= bound % frame
    from_final = int(last_end_s * RATE + 1e-6) * frame
    expected_start = max(min(from_final, len(stream)), len(stream) - bound)
    expected_start -= expected_start % frame  # a replay never starts mid-sample
    assert buffer.start_offset == expected_start
    assert buffer.start_offset % frame == 0
    assert buffer.kept_bytes <= bound + frame  # rounded down to a frame: at most one frame over
    kept = b"".join(buffer.chunks_from(buffer.start_offset, 256))
    assert kept == stream[expected_start:]
    assert abs(buffer.start_s - expected_start / frame / RATE) < 1e-9


@settings(max_examples=200, deadline=None)
@given(items=steps, offset_fraction=st.floats(min_value=0.0, max_value=1.0),
       max_bytes=st.integers(min_value=1, max_value=900))
def test_replay_from_any_offset_gives_the_stream_from_there_in_frame_aligned_pieces_within_the_size(
        items: list[tuple[str, object]], offset_fraction: float, max_bytes: int) -> None:
    buffer, stream, _ = _run("pcm_s16le", 1, items, 10.0, 1 << 20)
    offset = buffer.start_offset + int((buffer.end_offset - buffer.start_offset) * offset_fraction)
    pieces = buffer.chunks_from(offset, max_bytes)
    assert b"".join(pieces) == stream[offset:]
    assert all(len(piece) <= max(2, max_bytes) for piece in pieces)
    assert all(len(piece) % 2 == 0 for piece in pieces[:-1]) or offset % 2 == 1


@given(frames=st.lists(st.binary(min_size=1, max_size=500), max_size=40))
def test_a_container_stream_is_kept_whole_from_its_start_until_it_outgrows_the_cap(frames: list[bytes]) -> None:
    buffer = ReplayBuffer("ogg_opus", 48000, 1, keep_s=1.0, cap_bytes=3000)
    stream = b""
    for data in frames:
        buffer.append(data)
        stream += data
        buffer.final_relayed(RelayedFinal("x", 0.0, 0.5))  # finals never trim a stream that has no index
    if len(stream) <= 3000:
        assert buffer.movable
        assert b"".join(buffer.chunks_from(0, 1 << 20)) == stream
        assert buffer.start_s == 0.0
    else:
        assert not buffer.movable
        assert buffer.kept_bytes <= 3000


def test_with_two_channels_audio_is_kept_from_the_earliest_last_final_of_any_channel() -> None:
    buffer = ReplayBuffer("pcm_s16le", RATE, 2, keep_s=100.0, cap_bytes=1 << 20)
    buffer.append(bytes(4 * RATE * 3))  # 3 s, two channels
    buffer.final_relayed(RelayedFinal("left", 0.0, 2.0, 0))
    assert buffer.start_offset == 0  # channel 1 has no final yet: all of its audio may still be speech
    buffer.final_relayed(RelayedFinal("right", 0.5, 1.0, 1))
    assert buffer.start_s == 1.0
    assert [f.text for f in buffer.finals] == ["left", "right"]
