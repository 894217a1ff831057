"""An incremental Ogg demuxer (RFC 3533): bytes in, whatever frames they were cut into, packets out (pure).

One logical stream is read at a time: the first one, then, in a chained stream (RFC 3533: files one after
another, as a playlist or a relay sends them), each one that begins after the previous one ended. Streams
multiplexed beside it (a skeleton, a video) are skipped. Every page's CRC is checked, so a corrupt page is
reported where it is instead of being decoded into noise. Raises `ContainerError` with what was wrong.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

CAPTURE = b"OggS"
_HEADER = struct.Struct("<4sBBqIIIB")  # capture, version, flags, granule, serial, sequence, crc, segments
_CONTINUED = 0x01
_BEGINNING_OF_STREAM = 0x02
_END_OF_STREAM = 0x04
MAX_BUFFERED_BYTES = 1 << 20  # a page is at most 65,307 bytes; a packet spanning pages stays under this


class ContainerError(ValueError):
    """The container stream is malformed (the session reports it as `invalid_audio`)."""


_REVERSED_BITS = bytes(int(f"{byte:08b}"[::-1], 2) for byte in range(256))


def ogg_crc(data: bytes | bytearray | memoryview) -> int:
    """Ogg's CRC-32 (polynomial 0x04C11DB7, not reflected, no init or final xor), computed with zlib's
    reflected CRC over bit-reversed bytes: the same code, about a hundred times faster than a Python loop."""
    reflected = zlib.crc32(bytes(data).translate(_REVERSED_BITS), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{reflected:032b}"[::-1], 2)


@dataclass(frozen=True)
class OggPacket:
    data: bytes
    stream: int  # which logical stream of a chain it belongs to, from 0
    end_granule: int | None = None
    """On the packets of a stream's last page: that page's granule position, where the stream ends (for Opus:
    samples at 48 kHz, pre-skip included)."""


class OggReader:
    """Feed bytes with `feed()`; it returns the complete packets of the logical stream being read, in order."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._offset = 0  # stream offset of _buffer[0], for error messages
        self._serial: int | None = None
        self._stream = 0
        self._ended = False  # the stream being read had its last page; the next one to begin is read next
        self._packet = bytearray()  # a packet continued on the next page
        self.pages = 0

    @property
    def pending_bytes(self) -> int:
        """Bytes of an incomplete page (a stream that ends here was truncated)."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[OggPacket]:
        self._buffer += data
        packets: list[OggPacket] = []
        while (page := self._next_page()) is not None:
            packets += page
        if len(self._buffer) + len(self._packet) > MAX_BUFFERED_BYTES:
            raise ContainerError(f"Ogg stream at byte {self._offset}: over {MAX_BUFFERED_BYTES} bytes without a packet")
        return packets

    def finish(self) -> None:
        """End of stream; raises ContainerError if it stopped inside a page or packet."""
        if self._buffer:
            raise ContainerError(f"Ogg stream truncated: it ends {len(self._buffer)} bytes into a page "
                                 f"(at byte {self._offset})")
        if self._packet:
            raise ContainerError("Ogg stream truncated: its last packet continues on a page that never came")

    def _next_page(self) -> list[OggPacket] | None:
        buffer = self._buffer
        if len(buffer) < 4 and CAPTURE.startswith(bytes(buffer)):
            return None
        if not buffer.startswith(CAPTURE):
            raise ContainerError(f"not an Ogg page at byte {self._offset}: expected 'OggS', got {bytes(buffer[:4])!r}")
        if len(buffer) < _HEADER.size:
            return None
        _, version, flags, granule, serial, sequence, crc, segments = _HEADER.unpack_from(buffer)
        if version != 0:
            raise ContainerError(f"Ogg page at byte {self._offset}: unknown version {version}")
        header_size = _HEADER.size + segments
        if len(buffer) < header_size:
            return None
        lacing = buffer[_HEADER.size:header_size]
        page_size = header_size + sum(lacing)
        if len(buffer) < page_size:
            return None
        page = bytearray(buffer[:page_size])
        page[22:26] = b"\0\0\0\0"
        if ogg_crc(page) != crc:
            raise ContainerError(f"Ogg page {sequence} at byte {self._offset}: CRC mismatch (corrupt data)")
        del self._buffer[:page_size]
        self._offset += page_size
        self.pages += 1
        if self._ended and flags & _BEGINNING_OF_STREAM:  # chained: the next stream begins
            self._serial, self._ended, self._stream = serial, False, self._stream + 1
        if self._serial is None:
            self._serial = serial
        if serial != self._serial or self._ended:
            return []  # a stream multiplexed beside ours, or a page after ours ended
        self._ended = bool(flags & _END_OF_STREAM)
        end = granule if self._ended else None
        return [OggPacket(data, self._stream, end)
                for data in self._packets(page[header_size:], lacing, continued=bool(flags & _CONTINUED))]

    def _packets(self, body: bytearray, lacing: bytearray, *, continued: bool) -> list[bytes]:
        if self._packet and not continued:
            raise ContainerError(f"Ogg page at byte {self._offset}: a packet was cut off (page missing)")
        packets: list[bytes] = []
        at = 0
        for size in lacing:
            self._packet += body[at:at + size]
            at += size
            if size < 255:  # a lacing value under 255 ends the packet
                packets.append(bytes(self._packet))
                self._packet.clear()
        return packets
