"""The simulator's hot-path frame pieces: push bodies, canonical confirms, WebSocket framing.

The simulator pushes and takes back one frame per message, so these are the parts of
its per-message cost that are pure byte work. Each is byte for byte what the general
path produces, and the unit tests compare them with it:

* :func:`push_static` is :func:`bridge.sources.tmc.server.push_static` (which calls it):
  the Custom entries of a push that stay the same for every attempt, from Custom heads
  the codec builds once (:func:`~bridge.sources.tmc.codec.custom_head`) and the values
  packed straight after them, instead of a :class:`~bridge.sources.tmc.codec.Value` and
  an ``encode_value`` dispatch per entry;
* :class:`ConfirmReader` recognises the canonical confirm of one session (the frame
  :meth:`bridge.sources.tmc.session.ClientSession.confirm` writes) by its length and
  prefix and reads the id at its fixed offset; any other frame is left to the full
  decoder, which gives the same answer for the canonical one;
* :func:`binary_frame_header` is the header websockets writes for an unmasked,
  unfragmented Binary frame without extensions (RFC 6455 §5.2), so that many pushes can
  go out in one transport write without a websockets ``Frame`` object per push.
"""

from __future__ import annotations

import struct

from bridge.sources.tmc import codec
from bridge.sources.tmc.codec import Fmt
from bridge.sources.tmc.session import Kind

_I32_PACK = struct.Struct("<i").pack
_I64_PACK = struct.Struct("<q").pack
_I64_UNPACK = struct.Struct("<q").unpack_from

_ID = codec.custom_head("id", Fmt.INT64)
_TOPIC = codec.custom_head("topic", Fmt.STRING)
_CONTENT_STRING = codec.custom_head("content", Fmt.STRING)
_CONTENT_BYTES = codec.custom_head("content", Fmt.BYTE_ARRAY)
_TIME = codec.custom_head("time", Fmt.DATE)
_PUBLISHER = codec.custom_head("publisher", Fmt.STRING)
_USERID = codec.custom_head("userid", Fmt.INT64)
_NICK = codec.custom_head("nick", Fmt.STRING)
_DATAID = codec.custom_head("dataid", Fmt.INT64)


#: Counted topics, publishers and nicks: a few distinct values shared by many messages.
_COUNTED: dict[str, bytes] = {}
_COUNTED_MAX = 4096


def _counted_name(text: str) -> bytes:
    raw = _COUNTED.get(text)
    if raw is None:
        raw = codec.counted_string(text)
        if len(_COUNTED) < _COUNTED_MAX:
            _COUNTED[text] = raw
    return raw


def push_static(  # noqa: PLR0917 - one argument per entry, hot path
    message_id: int,
    topic: str,
    content: str | bytes,
    publish_time_ms: int,
    publisher: str,
    user_id: int,
    nick: str,
    data_id: int | None,
) -> bytes:
    """``id`` (Int64), ``topic``, ``content`` (String, or ByteArray for bytes), ``time``
    (Date), ``publisher``, ``userid`` (Int64), ``nick`` and ``dataid`` (Int64, left out
    when None), in that order. FrameError when an integer does not fit Int64."""
    if isinstance(content, bytes):
        content_entry = _CONTENT_BYTES + _I32_PACK(len(content)) + content
    else:
        content_entry = _CONTENT_STRING + codec.counted_string(content)
    try:
        parts = [
            _ID,
            _I64_PACK(message_id),
            _TOPIC,
            _counted_name(topic),
            content_entry,
            _TIME,
            _I64_PACK(publish_time_ms),
            _PUBLISHER,
            _counted_name(publisher),
            _USERID,
            _I64_PACK(user_id),
            _NICK,
            _counted_name(nick),
        ]
        if data_id is not None:
            parts += (_DATAID, _I64_PACK(data_id))
    except struct.error:
        # The codec's error for it (one of the integers does not fit).
        for number in (message_id, publish_time_ms, user_id, data_id or 0):
            codec.int64_value(number)
        raise
    return b"".join(parts)


_CONFIRM_ID = codec.encode_custom("__kind", codec.byte(Kind.CONFIRM)) + _ID
_END = codec.END_OF_HEADERS


class ConfirmReader:
    """The id of a canonical confirm (§6.2) of one session, without decoding the frame.

    Canonical: version and SEND type, the session's token, ``__kind`` Byte 2, ``id``
    Int64, EndOfHeaders and nothing after it. The full decoder reads exactly such a frame
    as a confirm of that id with nothing to report, so skipping it changes no outcome.
    """

    __slots__ = ("_at", "_prefix", "_size")

    def __init__(self, token: str, version: int) -> None:
        self._prefix = codec.send_head(token, version) + _CONFIRM_ID
        self._at = len(self._prefix)
        self._size = self._at + 8 + len(_END)

    def __call__(self, data: bytes | bytearray) -> int | None:
        if len(data) != self._size or not data.startswith(self._prefix) or data[-2:] != _END:
            return None
        return int(_I64_UNPACK(data, self._at)[0])


_SHORT_HEADER = struct.Struct("!BBH").pack
_LONG_HEADER = struct.Struct("!BBQ").pack
#: FIN set, opcode 2 (Binary); the server does not mask (RFC 6455 §5.1).
_FIN_BINARY = 0x82
#: The one-byte headers of the payload lengths below 126.
_TINY_HEADERS = [bytes((_FIN_BINARY, n)) for n in range(126)]


def binary_frame_header(size: int) -> bytes:
    """The header of an unfragmented, unmasked Binary frame of ``size`` payload bytes, as
    websockets serialises it when no extension is in use."""
    if size < 126:
        return _TINY_HEADERS[size]
    if size < 65536:
        return _SHORT_HEADER(_FIN_BINARY, 126, size)
    return _LONG_HEADER(_FIN_BINARY, 127, size)


__all__ = ["ConfirmReader", "binary_frame_header", "push_static"]
