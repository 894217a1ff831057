"""Streaming Opus in an Ogg or WebM container -> float32 16 kHz, one row per channel.

Demuxing is Dalston's own (`ogg.py`, `webm.py`: incremental, frame splits do not matter); the Opus packets are
decoded by libopus through PyAV's codec API, in this process, with no ffmpeg subprocess per session.
The stream's channels are transcribed as `channels` asks: the same count, or mixed down to one.
"""

from __future__ import annotations

import struct

import av
import numpy as np

from dalston.actors.speech.audio import DecoderStatistics, InvalidAudio, Resampler, empty_channels
from dalston.actors.speech.ogg import ContainerError, OggPacket, OggReader
from dalston.actors.speech.webm import WebmPacket, WebmReader

OPUS_RATE = 48000  # libopus decodes at 48 kHz here; soxr takes it to 16 kHz
_OPUS_HEAD = struct.Struct("<8sBBHIhB")  # magic, version, channels, pre-skip, input rate, gain, mapping


class OpusStreamDecoder:
    def __init__(self, encoding: str, max_frame_bytes: int, channels: int = 1) -> None:
        if encoding not in ("ogg_opus", "webm_opus"):
            raise ValueError(f"OpusStreamDecoder does not decode {encoding!r}")
        self.encoding = encoding
        self.channels = channels
        self.max_frame_bytes = max_frame_bytes
        self._reader: OggReader | WebmReader = OggReader() if encoding == "ogg_opus" else WebmReader()
        self._codec: av.CodecContext | None = None
        self._stream_channels = 0
        # The encoder's priming samples at 48 kHz (OpusHead pre-skip). FFmpeg's libopus decoder drops them
        # itself (it sets the codec's skip_samples from the header); Ogg's end position counts them.
        self._stream_pre_skip = 0
        self._stream = 0  # Ogg: the logical stream of a chain being decoded
        self._decoded = 0  # samples at 48 kHz of that stream kept so far (after pre-skip)
        self._resampler = Resampler(OPUS_RATE, channels)
        self._held: tuple[WebmPacket, np.ndarray] | None = None  # WebM: the last packet's audio, not yet final
        self._headers_seen = 0
        self._frames = self._bytes_in = self._samples_out = 0
        self._finished = False

    def decode(self, frame: bytes) -> np.ndarray:
        if self._finished:
            raise RuntimeError("OpusStreamDecoder.decode() after finish()")
        if len(frame) > self.max_frame_bytes:
            raise InvalidAudio(f"audio frame of {len(frame)} bytes exceeds the limit of {self.max_frame_bytes} bytes")
        self._frames += 1
        self._bytes_in += len(frame)
        try:
            packets = self._reader.feed(frame)
        except ContainerError as error:
            raise InvalidAudio(f"{self.encoding}: {error}") from None
        pieces = [self._webm_audio(packet) if isinstance(packet, WebmPacket) else self._ogg_audio(packet)
                  for packet in packets]
        audio = np.concatenate(pieces) if pieces else np.zeros((0, self.channels), np.float32)
        return self._emit(audio)

    def finish(self) -> np.ndarray:
        """End of stream; raises `InvalidAudio` if it was cut inside a page or block."""
        if self._finished:
            return empty_channels(self.channels)
        self._finished = True
        try:
            self._reader.finish()
        except ContainerError as error:
            raise InvalidAudio(f"{self.encoding}: {error}") from None
        return self._emit(self._release_held(), last=True)

    def statistics(self) -> DecoderStatistics:
        return DecoderStatistics(self._frames, self._bytes_in, self._samples_out,
                                 pending_odd_byte=self._reader.pending_bytes > 0, finished=self._finished)

    def _decode_packet(self, packet: bytes) -> np.ndarray:
        """One packet -> (n, channels) float32 at 48 kHz; Ogg's two header packets give nothing."""
        if self._codec is None:
            if self.encoding == "ogg_opus":
                self._open(self._ogg_head(packet))
                return np.zeros((0, self.channels), np.float32)
            self._open(self._webm_head())  # WebM's first block is audio already
        elif self._headers_seen < 2:
            self._headers_seen += 1  # OpusTags: comments, no audio
            return np.zeros((0, self.channels), np.float32)
        assert self._codec is not None
        try:
            frames = self._codec.decode(av.Packet(packet))
        except av.error.FFmpegError as error:
            raise InvalidAudio(f"{self.encoding}: an Opus packet could not be decoded ({error})") from None
        pieces = [self._interleaved(frame.to_ndarray(), frame.format.is_planar) for frame in frames]
        audio = np.concatenate(pieces) if pieces else np.zeros((0, self._stream_channels), np.float32)
        return self._mix(audio)

    def _webm_audio(self, packet: WebmPacket) -> np.ndarray:
        """A WebM packet's audio is held until the next packet arrives: a DiscardPadding read after it (the
        encoder's padding at the stream's end) may still cut its end. Returns the previous packet's audio."""
        audio = self._decode_packet(packet.data)
        released = self._release_held()
        self._held = (packet, audio)
        return released

    def _release_held(self) -> np.ndarray:
        if self._held is None:
            return np.zeros((0, self.channels), np.float32)
        packet, audio = self._held
        self._held = None
        padding = round(packet.discard_ns * OPUS_RATE / 1_000_000_000)
        return audio[:max(0, len(audio) - padding)]

    def _ogg_audio(self, packet: OggPacket) -> np.ndarray:
        """An Ogg packet's audio; a stream's last page says where it ends (the padding of its last Opus frame
        goes), and a chained stream that begins brings its own OpusHead."""
        if packet.stream != self._stream:
            self._stream, self._codec, self._decoded = packet.stream, None, 0
        audio = self._decode_packet(packet.data)
        if packet.end_granule is not None:
            audio = audio[:max(0, packet.end_granule - self._stream_pre_skip - self._decoded)]
        self._decoded += len(audio)
        return audio

    def _ogg_head(self, packet: bytes) -> bytes:
        if not packet.startswith(b"OpusHead") or len(packet) < _OPUS_HEAD.size:
            raise InvalidAudio("ogg_opus: the stream does not start with an OpusHead packet (is it Opus?)")
        self._headers_seen = 1
        return packet

    def _webm_head(self) -> bytes:
        track = self._reader.track  # type: ignore[union-attr]
        head = track.codec_private if track is not None else b""
        if not head.startswith(b"OpusHead") or len(head) < _OPUS_HEAD.size:
            raise InvalidAudio("webm_opus: the Opus track has no OpusHead in its CodecPrivate")
        self._headers_seen = 2
        return head

    def _open(self, head: bytes) -> None:
        _, version, stream_channels, pre_skip, _, _, _ = _OPUS_HEAD.unpack_from(head)
        if version >> 4 != 0 or stream_channels == 0:
            raise InvalidAudio(f"{self.encoding}: unsupported OpusHead (version {version}, {stream_channels} channels)")
        if self.channels not in (1, stream_channels):
            raise InvalidAudio(f"{self.encoding}: channels={self.channels} asked, but the stream has "
                               f"{stream_channels} channel(s)")
        codec = av.CodecContext.create("libopus", "r")
        codec.extradata = head
        codec.sample_rate = OPUS_RATE
        codec.layout = {1: "mono", 2: "stereo"}.get(stream_channels, f"{stream_channels}c")
        self._codec = codec
        self._stream_channels = stream_channels
        self._stream_pre_skip = pre_skip

    def _interleaved(self, array: np.ndarray, planar: bool) -> np.ndarray:
        if array.dtype == np.int16:
            array = array.astype(np.float32) / 32768.0
        array = array.astype(np.float32, copy=False)
        if planar:
            return array.T  # (channels, n) -> (n, channels)
        return array.reshape(-1, self._stream_channels)

    def _mix(self, audio: np.ndarray) -> np.ndarray:
        if self.channels == 1 and self._stream_channels > 1:
            return audio.mean(axis=1, keepdims=True, dtype=np.float32)
        return audio

    def _emit(self, samples: np.ndarray, *, last: bool = False) -> np.ndarray:
        out = self._resampler.push(np.ascontiguousarray(samples, dtype=np.float32), last=last)
        self._samples_out += out.shape[1]
        return out
