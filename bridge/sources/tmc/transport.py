"""What the TMC connection needs of WebSocket beyond the ``websockets`` defaults.

**Frames over the size limit are skipped, not fatal.** With ``max_size`` the library fails
the whole connection (Close 1009) on a message over the limit. For TMC that is a loop:
the server pushes the same message again after the reconnect, the connection fails
again, and everything queued behind it waits. Here a single frame over the limit is
read through in chunks and dropped as it arrives (memory stays bounded), and the
application receives a short stand-in instead: :data:`OVERSIZED_MAGIC`, the declared
size, and the first :data:`HEAD_BYTES` of the frame, from which the TMC session can
still read the token, ``__kind`` and ``id`` to dead-letter and confirm the message.

Fragmented messages (the TMC server sends one unfragmented frame per message; the
official Java client even drops fragments, so only a broken server fragments at all):
each fragment over the limit is dropped the same way, so the message delivered is no
valid TMC frame and the session skips it; fragments that add up past the limit fail the
connection with 1009, as the library would. A text frame over the limit fails the
connection with 1007 (its stand-in is no UTF-8); TMC never sends text.

**Many small frames, one write.** The bridge sends one confirm frame per message (the
protocol has no batch confirm). ``ClientConnection.send`` costs a context manager, a
drain, a masking key from the system's CSPRNG and a socket write per frame;
:func:`send_all` frames everything queued since the last write itself
(:func:`masked_binary_frames`, one CSPRNG draw) and hands it to the protocol as one
write inside one ``send_context``. On this project's benchmark that is about a third of
the cost per confirm.

This relies on seams of websockets that are documented by its code rather than its
API: the Sans-I/O protocol's ``reader``, the ``parse`` generator it drives,
``recv_frame`` and ``writes``, and the asyncio connection's ``send_context``,
``process_event`` and ``recv_messages``. The pinned version in constraints.txt is the
one the unit tests exercise against a real server.
"""

from __future__ import annotations

import secrets
import struct
from collections.abc import Callable, Generator
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.client import ClientProtocol
from websockets.exceptions import PayloadTooBig
from websockets.frames import Frame, Opcode
from websockets.protocol import Event, State
from websockets.streams import StreamReader

try:  # the library's C helper when it was built with it, as websockets itself does
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - wheels ship it on the platforms we build for
    from websockets.utils import apply_mask

#: Starts the stand-in for a skipped frame. A TMC frame starts with version byte 2, so a
#: real server's frame is never taken for one.
OVERSIZED_MAGIC = b"\xff\x00tmc-bridge:oversized\x00"
#: How much of a skipped frame is kept for the session to find the message id in.
HEAD_BYTES = 64 * 1024
_SIZE = struct.Struct("<q")


def oversized(data: bytes) -> tuple[int, bytes] | None:
    """(declared size, head) when ``data`` is the stand-in of a skipped frame."""
    if not data.startswith(OVERSIZED_MAGIC):
        return None
    start = len(OVERSIZED_MAGIC)
    return _SIZE.unpack_from(data, start)[0], data[start + _SIZE.size :]


class _SkippingReader(StreamReader):
    """A StreamReader whose payload reads over ``limit`` keep a head and drop the rest.

    Only payload reads can be that large (frame headers are read 2-8 bytes at a time),
    and only once the handshake is over (``active``), so the HTTP response is untouched.
    """

    def __init__(self, limit: int, active: Callable[[], bool]) -> None:
        super().__init__()
        self._limit = limit
        self._active = active

    def read_exact(self, n: int) -> Generator[None, None, bytearray]:
        if n <= self._limit or not self._active():
            return (yield from super().read_exact(n))
        keep = min(self._limit, HEAD_BYTES)
        head = yield from super().read_exact(keep)
        left = n - keep
        while left:
            # Drop what has arrived so far, without copying it anywhere.
            while not self.buffer:
                if self.eof:
                    raise EOFError(f"stream ended {left} bytes before the end of a frame")
                yield
            step = min(left, len(self.buffer))
            del self.buffer[:step]
            left -= step
        return bytearray(OVERSIZED_MAGIC + _SIZE.pack(n)) + head


def _limit_frames(protocol: ClientProtocol, limit: int) -> None:
    """Give ``protocol`` the skipping reader; called before it has read any byte."""
    # No compression, ever: an inflating extension would turn a small frame into an
    # unbounded message past the reader's limit (and no TMC client negotiates one).
    protocol.available_extensions = None
    # No library limit on a single frame (the reader enforces it by skipping)...
    protocol.max_message_size = None
    protocol.max_fragment_size = None
    # Also while closing: a large frame may still arrive after our Close went out.
    protocol.reader = _SkippingReader(limit, lambda: protocol.state in (State.OPEN, State.CLOSING))
    # ...and the parser restarted, so that it reads from the new reader.
    protocol.parser = protocol.parse()
    next(protocol.parser)
    recv_frame = protocol.recv_frame

    def bounded_recv_frame(frame: Frame) -> None:
        # ...but fragments of one message still add up to at most the limit.
        current = protocol.current_size or 0
        if frame.opcode is Opcode.CONT and current + len(frame.data) > limit:
            raise PayloadTooBig(len(frame.data), limit - current)
        recv_frame(frame)

    # The parse loop looks the method up on the instance, and turns PayloadTooBig into
    # a Close 1009, exactly as for its own limit.
    setattr(protocol, "recv_frame", bounded_recv_frame)  # noqa: B010


class TmcConnection(ClientConnection):
    """A ClientConnection that can hand complete Binary messages to a callback as they
    are parsed.

    ``on_binary``, once set (after login), receives each unfragmented Binary message
    synchronously from the protocol's ``data_received``, instead of the message being
    queued for ``recv()``: no future, no task switch per message. Only while nothing
    waits in the ``recv()`` queue, so messages keep their order; text and fragmented
    messages, and anything before the callback is set, go to ``recv()`` as usual.
    ``direct_paused`` stops the direct path (the owner is busy with a ``recv()``ed
    message)."""

    on_binary: Callable[[bytes], None] | None = None
    direct_paused = False

    def process_event(self, event: Event) -> None:
        handler = self.on_binary
        if (
            handler is not None
            and not self.direct_paused
            and isinstance(event, Frame)
            and event.opcode is Opcode.BINARY
            and event.fin
            and not self.recv_messages.frames.queue
        ):
            handler(bytes(event.data))
            return
        super().process_event(event)


def masked_binary_frames(payloads: list[bytes]) -> bytes:
    """``payloads`` as consecutive client-to-server Binary frames (RFC 6455 §5.2: FIN,
    opcode 2, masked, no extension), byte for byte what websockets writes for each, with
    the masking keys drawn from the system's CSPRNG in one call rather than one per frame
    (the library's per-frame draw was a few percent of the bridge's CPU)."""
    keys = secrets.token_bytes(4 * len(payloads))
    out = []
    for i, payload in enumerate(payloads):
        key = keys[4 * i : 4 * i + 4]
        size = len(payload)
        if size < 126:
            head = bytes((0x82, 0x80 | size))
        elif size < 65536:
            head = _HEAD_16.pack(0x82, 0x80 | 126, size)
        else:
            head = _HEAD_64.pack(0x82, 0x80 | 127, size)
        out.append(head + key + apply_mask(payload, key))
    return b"".join(out)


_HEAD_16 = struct.Struct("!BBH")
_HEAD_64 = struct.Struct("!BBQ")


async def send_all(ws: ClientConnection, frames: list[bytes]) -> None:
    """Send ``frames`` as binary messages in order, written to the socket together.

    Raises ConnectionClosed like ``ws.send`` when the connection is not open. The frames
    go straight into the protocol's outgoing buffer, inside ``send_context`` (which checks
    that the connection is open and applies flow control): the bridge never fragments a
    message and negotiates no extension, the two things the library's own send_binary
    would otherwise have to respect."""
    async with ws.send_context():
        ws.protocol.writes.append(masked_binary_frames(frames))


def connection_class(max_frame_bytes: int) -> type[ClientConnection]:
    """A :class:`TmcConnection` for ``websockets.asyncio.client.connect(create_connection=...)``
    whose frames over ``max_frame_bytes`` are skipped (see the module docstring)."""

    class LimitedTmcConnection(TmcConnection):
        def __init__(self, protocol: ClientProtocol, **kwargs: Any) -> None:
            _limit_frames(protocol, max_frame_bytes)
            super().__init__(protocol, **kwargs)

    return LimitedTmcConnection
