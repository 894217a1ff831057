"""An incremental WebM (Matroska/EBML) demuxer for one Opus audio track: bytes in, Opus packets out (pure).

A browser's MediaRecorder writes a live WebM: a Segment and Clusters of unknown size, SimpleBlocks inside.
Master elements are read as transparent (their children follow in the stream), so unknown sizes need no
special case; elements Dalston does not need are skipped as they stream past, without buffering them.
Blocks may be laced (Xiph, EBML or fixed-size: several packets in one block), and a BlockGroup's
DiscardPadding (the encoder's padding at the end of the stream) is kept with its block's last packet.
Raises `ContainerError` with what was wrong.
"""

from __future__ import annotations

from dataclasses import dataclass

from dalston.actors.speech.ogg import ContainerError

EBML_HEADER = 0x1A45DFA3
# Masters whose children we need: Segment, Cluster, Tracks, TrackEntry, BlockGroup, Audio.
_TRACK_ENTRY, _BLOCK_GROUP = 0xAE, 0xA0
_MASTERS = frozenset({0x18538067, 0x1F43B675, 0x1654AE6B, _TRACK_ENTRY, _BLOCK_GROUP, 0xE1})
_TRACK_NUMBER, _CODEC_ID, _CODEC_PRIVATE, _CHANNELS = 0xD7, 0x86, 0x63A2, 0x9F
_SIMPLE_BLOCK, _BLOCK, _DISCARD_PADDING = 0xA3, 0xA1, 0x75A2
_READ = frozenset({_TRACK_NUMBER, _CODEC_ID, _CODEC_PRIVATE, _CHANNELS, _SIMPLE_BLOCK, _BLOCK, _DISCARD_PADDING,
                   EBML_HEADER})
MAX_ELEMENT_BYTES = 1 << 20
_NO_LACING, _XIPH_LACING, _FIXED_LACING, _EBML_LACING = 0x00, 0x02, 0x04, 0x06


@dataclass
class WebmPacket:
    """One Opus packet; `discard_ns` is set on a block's last packet when its BlockGroup says how much of the
    decoded end is padding (it may arrive in a later `feed`, so the packet is updated in place)."""

    data: bytes
    discard_ns: int = 0


@dataclass
class OpusTrack:
    number: int | None = None
    codec_id: str = ""
    codec_private: bytes = b""
    channels: int = 1


def read_vint(data: bytes | bytearray, at: int, *, keep_marker: bool) -> tuple[int, int] | None:
    """An EBML variable-length integer at `at`: (value, length), or None if more bytes are needed."""
    if at >= len(data):
        return None
    first = data[at]
    if first == 0:
        raise ContainerError("EBML: invalid variable-length integer (a zero first byte)")
    length = 9 - first.bit_length()
    if at + length > len(data):
        return None
    value = first if keep_marker else first & ((1 << (8 - length)) - 1)
    for byte in data[at + 1:at + length]:
        value = (value << 8) | byte
    return value, length


class WebmReader:
    """Feed bytes with `feed()`; it returns the Opus packets of the first Opus track, in order.

    `track` is known once the Tracks element has gone past (its CodecPrivate is the OpusHead)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._offset = 0
        self._skip = 0  # bytes of an unneeded element still to come
        self._tracks: list[OpusTrack] = []
        self.track: OpusTrack | None = None
        self.blocks = 0
        self._last_packet: WebmPacket | None = None  # of the latest block of our track (for DiscardPadding)

    @property
    def pending_bytes(self) -> int:
        return len(self._buffer) + self._skip

    def feed(self, data: bytes) -> list[WebmPacket]:
        self._buffer += data
        packets: list[WebmPacket] = []
        while True:
            if self._skip:
                dropped = min(self._skip, len(self._buffer))
                self._consume(dropped)
                self._skip -= dropped
                if self._skip:
                    return packets
            element = self._next_element()
            if element is None:
                return packets
            packets += element

    def finish(self) -> None:
        if self._buffer or self._skip:
            raise ContainerError(f"WebM stream truncated: it ends inside an element (at byte {self._offset})")
        if self.track is None:
            raise ContainerError("WebM stream ended before its Opus track was described")

    def _next_element(self) -> list[WebmPacket] | None:
        if self._offset == 0 and len(self._buffer) >= 4 and int.from_bytes(self._buffer[:4]) != EBML_HEADER:
            raise ContainerError(f"not a WebM stream: expected an EBML header, got {bytes(self._buffer[:4]).hex()}")
        head = read_vint(self._buffer, 0, keep_marker=True)
        if head is None:
            return None
        element_id, id_length = head
        size_field = read_vint(self._buffer, id_length, keep_marker=False)
        if size_field is None:
            return None
        size, size_length = size_field
        unknown_size = size == (1 << (7 * size_length)) - 1
        header = id_length + size_length
        if element_id in _MASTERS:
            self._consume(header)  # children follow; their ends need not be tracked
            if element_id == _TRACK_ENTRY:
                self._tracks.append(OpusTrack())
            elif element_id == _BLOCK_GROUP:
                self._last_packet = None  # a DiscardPadding in this group belongs to this group's Block
            return []
        if unknown_size:
            raise ContainerError(f"WebM element {element_id:#x} at byte {self._offset} has an unknown size")
        if element_id not in _READ:
            self._consume(header)
            self._skip = size
            return []
        if size > MAX_ELEMENT_BYTES:
            raise ContainerError(f"WebM element {element_id:#x} at byte {self._offset}: {size} bytes is too large")
        if len(self._buffer) < header + size:
            return None
        body = bytes(self._buffer[header:header + size])
        self._consume(header + size)
        return self._read(element_id, body)

    def _read(self, element_id: int, body: bytes) -> list[WebmPacket]:
        if element_id == EBML_HEADER:
            return []
        if element_id in (_SIMPLE_BLOCK, _BLOCK):
            return self._block(body, grouped=element_id == _BLOCK)
        if element_id == _DISCARD_PADDING:
            if self._last_packet is not None:  # it follows its Block inside the BlockGroup
                self._last_packet.discard_ns = max(0, int.from_bytes(body, signed=True))
            return []
        if self._tracks:
            track = self._tracks[-1]
            if element_id == _TRACK_NUMBER:
                track.number = int.from_bytes(body)
            elif element_id == _CODEC_ID:
                track.codec_id = body.decode("ascii", "replace").rstrip("\0")
            elif element_id == _CODEC_PRIVATE:
                track.codec_private = body
            elif element_id == _CHANNELS:
                track.channels = int.from_bytes(body)
        return []

    def _block(self, body: bytes, *, grouped: bool) -> list[WebmPacket]:
        if self.track is None:
            self.track = next((t for t in self._tracks if t.codec_id == "A_OPUS"), None)
            if self.track is None:
                codecs = ", ".join(t.codec_id or "?" for t in self._tracks) or "none described"
                raise ContainerError(f"WebM stream has no Opus audio track (tracks: {codecs})")
        number = read_vint(body, 0, keep_marker=False)
        if number is None or len(body) < number[1] + 3:
            raise ContainerError(f"WebM block at byte {self._offset} is too short")
        if number[0] != self.track.number:
            return []  # another track (video, say)
        at = number[1] + 3
        packets = [WebmPacket(data) for data in self._unlace(body, at, body[at - 1] & 0x06)]
        self.blocks += 1
        # Only a BlockGroup's Block can be followed by a DiscardPadding (a SimpleBlock has no group).
        self._last_packet = packets[-1] if grouped else None
        return packets

    def _unlace(self, body: bytes, at: int, lacing: int) -> list[bytes]:
        """The packets of one block: the rest of it, or the laced frames (Matroska: Block Lacing)."""
        if lacing == _NO_LACING:
            return [body[at:]]
        if at >= len(body):
            raise ContainerError(f"WebM laced block at byte {self._offset} has no frame count")
        count, at = body[at] + 1, at + 1
        if lacing == _FIXED_LACING:
            size, left = divmod(len(body) - at, count)
            if left:
                raise ContainerError(f"WebM fixed-size laced block at byte {self._offset}: {len(body) - at} bytes "
                                     f"do not split into {count} equal frames")
            sizes = [size] * (count - 1)
        else:
            read = _xiph_sizes if lacing == _XIPH_LACING else _ebml_sizes
            sizes_read = read(body, at, count - 1)
            if sizes_read is None:
                raise ContainerError(f"WebM laced block at byte {self._offset} ends inside its frame sizes")
            sizes, at = sizes_read
        last = len(body) - at - sum(sizes)
        if any(size < 0 for size in sizes) or last < 0:
            raise ContainerError(f"WebM laced block at byte {self._offset}: its frame sizes exceed the block")
        packets = []
        for size in [*sizes, last]:
            packets.append(body[at:at + size])
            at += size
        return packets

    def _consume(self, count: int) -> None:
        del self._buffer[:count]
        self._offset += count


def _xiph_sizes(body: bytes, at: int, count: int) -> tuple[list[int], int] | None:
    """`count` Xiph-laced sizes from `at` (each: bytes of 255, then one under 255, summed), and where they end."""
    sizes = []
    for _ in range(count):
        size = 0
        while True:
            if at >= len(body):
                return None
            size, at = size + body[at], at + 1
            if body[at - 1] != 255:
                break
        sizes.append(size)
    return sizes, at


def _ebml_sizes(body: bytes, at: int, count: int) -> tuple[list[int], int] | None:
    """`count` EBML-laced sizes from `at` (the first a vint, then signed vint differences), and where they end."""
    sizes: list[int] = []
    for _ in range(count):
        field = read_vint(body, at, keep_marker=False)
        if field is None:
            return None
        value, length = field
        at += length
        sizes.append(sizes[-1] + value - ((1 << (7 * length - 1)) - 1) if sizes else value)
    return sizes, at
