"""TMC binary frame codec ("MessageIO" protocol version 2): bytes <-> :class:`Frame`.

Pure functions, no I/O, no asyncio. The layout is ``docs/protocol.md`` §4:

    uint8 version | uint8 type | header* | int16 0 (EndOfHeaders)

Every integer is little-endian. Headers are an int16 type followed by a type-specific
payload (§4.3); Custom headers carry a counted-string key and a typed value (§4.5).

Decoding bound-checks every length and raises :class:`~bridge.errors.FrameError` (one
error type) on anything malformed. Integers are decoded straight from bytes with
``struct``, so 64-bit ids stay exact Python ints and never touch a float (§13.3).

Custom values are kept as :class:`Value` pairs (format code, Python value) so that a
decoded frame re-encodes to the same bytes and the writer controls the wire format of
each key (``id`` must be Int64 and ``__kind`` a Byte, §4.5).

This is the only module that knows the byte layout. Sessions that send one shape of
frame per message (confirms, pushes) build its constant parts once from the frame pieces
at the end (:func:`send_head`, :func:`custom_head`, :func:`encode_custom`) and append
only the values (:func:`int64_value`, :func:`byte_value`, :data:`END_OF_HEADERS`).
"""

from __future__ import annotations

import contextlib
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from typing import NamedTuple

from bridge.errors import FrameError

PROTOCOL_VERSION = 2


class MessageType(IntEnum):
    """Byte at offset 1 (§4.2)."""

    CONNECT = 0
    CONNECTACK = 1
    SEND = 2
    SENDACK = 3


class HeaderType(IntEnum):
    """int16 header codes (§4.3)."""

    END = 0
    CUSTOM = 1
    STATUS_CODE = 2
    STATUS_PHRASE = 3
    FLAG = 4
    TOKEN = 5


class Fmt(IntEnum):
    """First byte of a Custom value (§4.5)."""

    VOID = 0
    STRING = 1
    BYTE = 2
    INT16 = 3
    INT32 = 4
    INT64 = 5
    DATE = 6
    BYTE_ARRAY = 7


ValueData = None | str | int | bytes


class Value(NamedTuple):
    """A typed Custom value. DATE holds milliseconds since the epoch (UTC) as an int."""

    fmt: Fmt
    data: ValueData


@dataclass(slots=True)
class Frame:
    """One TMC message. ``custom`` keeps wire order; a repeated key keeps the last value."""

    type: MessageType
    version: int = PROTOCOL_VERSION
    status_code: int = 0
    status_phrase: str | None = None
    flag: int = 0
    token: str | None = None
    custom: dict[str, Value] = field(default_factory=dict)

    def get(self, key: str) -> ValueData:
        """The Python value of a Custom key, or None when absent or Void."""
        value = self.custom.get(key)
        return None if value is None else value.data


# Pre-built structs: struct.Struct avoids re-parsing the format on the hot path.
_I8 = struct.Struct("<b")
_I16 = struct.Struct("<h")
_I32 = struct.Struct("<i")
_I64 = struct.Struct("<q")
_INT_STRUCT = {Fmt.BYTE: _I8, Fmt.INT16: _I16, Fmt.INT32: _I32, Fmt.INT64: _I64, Fmt.DATE: _I64}
_FMT_BY_CODE = {f.value: f for f in Fmt}
_I16_UNPACK = _I16.unpack_from
_I32_UNPACK = _I32.unpack_from
#: Fixed-width formats: code -> (width, unpack_from).
_INT_UNPACK = {int(f): (st.size, st.unpack_from) for f, st in _INT_STRUCT.items()}
_TYPE_BY_CODE = {t.value: t for t in MessageType}

_I64_PACK = _I64.pack
_I8_PACK = _I8.pack
_FMT_BYTE = {f: bytes((f,)) for f in Fmt}
#: The int16 header type codes as written (§4.3).
_H_CUSTOM = _I16.pack(HeaderType.CUSTOM)
_H_STATUS_CODE = _I16.pack(HeaderType.STATUS_CODE)
_H_STATUS_PHRASE = _I16.pack(HeaderType.STATUS_PHRASE)
_H_FLAG = _I16.pack(HeaderType.FLAG)
_H_TOKEN = _I16.pack(HeaderType.TOKEN)
#: The int16 EndOfHeaders that closes every frame.
END_OF_HEADERS = _I16.pack(HeaderType.END)

_MIN_FRAME = 4  # version, type, and at least the int16 EndOfHeaders


def _overrun(what: str, n: int, pos: int, size: int) -> FrameError:
    return FrameError(
        f"{what} needs {n} bytes at offset {pos}, only {size - pos} left (frame is {size} bytes)"
    )


def _read_counted(  # noqa: PLR0917 - hot path: positional is cheaper
    buf: bytes, pos: int, size: int, what: str, errors: str, key: str | None = None
) -> tuple[str, int]:
    """A counted string (§4.4) at ``pos``; returns it and the offset after it.

    ``key`` names the Custom entry in error messages; the label is only built on error.
    """
    if pos + 4 <= size:
        length = _I32_UNPACK(buf, pos)[0]
        end = pos + 4 + length
        if length >= 0 and end <= size:
            try:
                return buf[pos + 4 : end].decode("utf-8", errors), end
            except UnicodeDecodeError as exc:
                label = what if key is None else f"{what} of {key!r}"
                raise FrameError(f"{label} is not valid UTF-8 at offset {pos + 4}") from exc
    label = what if key is None else f"{what} of {key!r}"
    if pos + 4 > size:
        raise _overrun(f"{label} length", 4, pos, size)
    length = _I32_UNPACK(buf, pos)[0]
    if length < 0:
        raise FrameError(f"negative {label} length {length} at offset {pos}")
    raise _overrun(label, length, pos + 4, size)


def decode(
    data: bytes | bytearray | memoryview,
    *,
    strict_utf8: bool = False,
    raw_strings: frozenset[str] = frozenset(),
) -> Frame:
    """Decode one frame. Raises FrameError on any malformed input (§4.6).

    ``strict_utf8`` is for the simulator, which should catch client bugs; the client
    replaces bad bytes so that one odd nick cannot stall a connection (§4.6 rule 6).
    CountedString values of the keys in ``raw_strings`` stay undecoded ``bytes``: the
    bridge forwards ``content`` exactly as received, invalid UTF-8 included.
    """
    buf = bytes(data)
    frame = _start(buf)
    errors = "strict" if strict_utf8 else "replace"
    if not _read_headers_fast(frame, buf, errors, raw_strings):
        # Something unusual: the careful reader finds and names it (or reads it right).
        frame.custom = {}
        _read_headers(frame, buf, errors, raw_strings)
    return frame


def decode_head(
    data: bytes | bytearray | memoryview, *, raw_strings: frozenset[str] = frozenset()
) -> Frame:
    """Decode the complete headers at the start of a frame that was cut short.

    For a frame too large to read whole, only its first bytes are kept; whatever headers
    they hold in full (typically the token, ``__kind`` and ``id``) are returned. Raises
    FrameError only when not even the version and type are valid.
    """
    buf = bytes(data)
    frame = _start(buf)
    # A cut frame ends mid-header by construction; what was decoded before stays.
    with contextlib.suppress(FrameError):
        _read_headers(frame, buf, "replace", raw_strings)
    return frame


def _start(buf: bytes) -> Frame:
    size = len(buf)
    if size < _MIN_FRAME:
        raise FrameError(f"frame too short: {size} bytes, need at least {_MIN_FRAME}")
    version = buf[0]
    if version != PROTOCOL_VERSION:
        raise FrameError(f"unsupported protocol version {version} (only 2 is implemented, §4.7)")
    mtype = _TYPE_BY_CODE.get(buf[1])
    if mtype is None:
        raise FrameError(f"unknown message type {buf[1]} at offset 1")
    return Frame(type=mtype, version=version)


def _read_headers(frame: Frame, buf: bytes, errors: str, raw_strings: frozenset[str]) -> None:
    """Fill ``frame`` with the headers of ``buf`` from offset 2 up to EndOfHeaders.

    This is the hot path of the bridge (one call per message), hence plain integers
    instead of enum members and no closures; every length is still checked before use.
    """
    size = len(buf)
    custom = frame.custom
    new_value = tuple.__new__
    pos = 2
    while True:
        if pos + 2 > size:
            raise _overrun("header type", 2, pos, size)
        htype = _I16_UNPACK(buf, pos)[0]
        pos += 2
        if htype == 1:  # Custom
            key, pos = _read_counted(buf, pos, size, "custom key", errors)
            if pos >= size:
                raise _overrun(f"value format of {key!r}", 1, pos, size)
            code = buf[pos]
            pos += 1
            value: ValueData
            if code == 1:
                if key in raw_strings:
                    value, pos = _read_raw(buf, pos, size, key)
                else:
                    value, pos = _read_counted(buf, pos, size, "value", errors, key)
            elif code in _INT_UNPACK:
                width, unpack = _INT_UNPACK[code]
                if pos + width > size:
                    raise _overrun(f"{_FMT_BY_CODE[code].name} value of {key!r}", width, pos, size)
                value = unpack(buf, pos)[0]
                pos += width
            elif code == 0:
                value = None
            elif code == 7:
                value, pos = _read_raw(buf, pos, size, key, what="byte array")
            else:
                raise FrameError(f"unknown value format {code} for key {key!r} at offset {pos - 1}")
            custom[key] = new_value(Value, (_FMT_BY_CODE[code], value))
        elif htype == 0:
            # Trailing bytes after EndOfHeaders are ignored, like the Java reader (§4.1).
            return
        elif htype == 5:
            frame.token, pos = _read_counted(buf, pos, size, "token", errors)
        elif htype == 4:
            if pos + 4 > size:
                raise _overrun("flag", 4, pos, size)
            frame.flag = _I32_UNPACK(buf, pos)[0]
            pos += 4
        elif htype == 2:
            if pos + 4 > size:
                raise _overrun("status code", 4, pos, size)
            frame.status_code = _I32_UNPACK(buf, pos)[0]
            pos += 4
        elif htype == 3:
            frame.status_phrase, pos = _read_counted(buf, pos, size, "status phrase", errors)
        else:
            # An unknown header type has an unknown length: nothing after it can be trusted.
            raise FrameError(f"unknown header type {htype} at offset {pos - 2}")


#: Custom keys as read, by their bytes: a push repeats the same dozen keys, and a dict
#: lookup is cheaper than decoding each. Bounded, so a hostile peer cannot grow it.
_KEY_CACHE: dict[bytes, str] = {}
_KEY_CACHE_MAX = 256
_FMTS = tuple(_FMT_BY_CODE[code] for code in range(len(_FMT_BY_CODE)))
_INT_WIDTH = {code: width for code, (width, _unpack) in _INT_UNPACK.items()}


def _read_headers_fast(  # noqa: PLR0911 - one flat loop is the point
    frame: Frame, buf: bytes, errors: str, raw_strings: frozenset[str]
) -> bool:
    """:func:`_read_headers` for the frames that make up the traffic (Custom, Token, Flag
    and the status headers, every length in bounds), about a third cheaper per push.

    Returns False at the first thing it does not take in stride (a bound overrun, an
    unknown header or format, invalid UTF-8, any exception): the caller then reads the
    frame again with :func:`_read_headers`, which raises the precise FrameError. So
    whatever this returns True for, the careful reader reads the same way."""
    size = len(buf)
    custom = frame.custom
    keys = _KEY_CACHE
    ints = _INT_UNPACK
    unpack32 = _I32_UNPACK
    new_value = tuple.__new__
    fmts = _FMTS
    pos = 2
    try:
        while pos + 2 <= size:
            htype = buf[pos] | (buf[pos + 1] << 8)
            pos += 2
            if htype == 1:
                if pos + 4 > size:
                    return False
                end = pos + 4 + unpack32(buf, pos)[0]
                if end < pos + 4 or end >= size:
                    return False
                raw_key = buf[pos + 4 : end]
                key = keys.get(raw_key)
                if key is None:
                    key = raw_key.decode("utf-8", errors)
                    if len(keys) < _KEY_CACHE_MAX and errors == "replace" and raw_key.isascii():
                        keys[raw_key] = key
                code = buf[end]
                pos = end + 1
                value: ValueData
                if code in {1, 7}:
                    if pos + 4 > size:
                        return False
                    end = pos + 4 + unpack32(buf, pos)[0]
                    if end < pos + 4 or end > size:
                        return False
                    value = buf[pos + 4 : end]
                    if code == 1 and key not in raw_strings:
                        value = value.decode("utf-8", errors)
                    pos = end
                elif code in ints:
                    width, unpack = ints[code]
                    if pos + width > size:
                        return False
                    value = unpack(buf, pos)[0]
                    pos += width
                elif code == 0:
                    value = None
                else:
                    return False
                custom[key] = new_value(Value, (fmts[code], value))
            elif htype == 0:
                return True
            elif htype == 5:
                if pos + 4 > size:
                    return False
                end = pos + 4 + unpack32(buf, pos)[0]
                if end < pos + 4 or end > size:
                    return False
                frame.token = buf[pos + 4 : end].decode("utf-8", errors)
                pos = end
            elif htype in {2, 4}:
                if pos + 4 > size:
                    return False
                if htype == 4:
                    frame.flag = unpack32(buf, pos)[0]
                else:
                    frame.status_code = unpack32(buf, pos)[0]
                pos += 4
            else:
                return False
    except (UnicodeDecodeError, struct.error):
        return False
    return False


def _read_raw(buf: bytes, pos: int, size: int, key: str, what: str = "value") -> tuple[bytes, int]:
    """An int32-counted run of bytes (a ByteArray, or a CountedString kept undecoded)."""
    if pos + 4 > size:
        raise _overrun(f"{what} length of {key!r}", 4, pos, size)
    length = _I32_UNPACK(buf, pos)[0]
    if length < 0:
        raise FrameError(f"negative {what} length {length} for key {key!r}")
    pos += 4
    if pos + length > size:
        raise _overrun(f"{what} of {key!r}", length, pos, size)
    return buf[pos : pos + length], pos + length


def counted_string(text: str | None) -> bytes:
    """The payload of a CountedString (§4.4): int32 length and the UTF-8 bytes."""
    # An empty or null string is the four bytes 00 00 00 00, never the 1-byte tmcpy form (§4.4).
    # "replace": a lone surrogate (e.g. in a failure reason) must not make a frame unwritable.
    raw = text.encode("utf-8", "replace") if text else b""
    return _I32.pack(len(raw)) + raw


def encode_value(value: Value) -> bytes:
    """Encode one typed Custom value (format byte + payload)."""
    fmt, data = value
    head = bytes((fmt,))
    if fmt is Fmt.VOID or data is None:
        return _FMT_BYTE[Fmt.VOID]
    if fmt is Fmt.STRING:
        if isinstance(data, bytes):  # kept undecoded (decode's raw_strings)
            return head + _I32.pack(len(data)) + data
        if not isinstance(data, str):
            raise FrameError(f"STRING value must be str, got {type(data).__name__}")
        return head + counted_string(data)
    if fmt is Fmt.BYTE_ARRAY:
        if not isinstance(data, bytes | bytearray):
            raise FrameError(f"BYTE_ARRAY value must be bytes, got {type(data).__name__}")
        return head + _I32.pack(len(data)) + bytes(data)
    if not isinstance(data, int) or isinstance(data, bool):
        raise FrameError(f"{fmt.name} value must be int, got {type(data).__name__}")
    try:
        return head + _INT_STRUCT[fmt].pack(data)
    except struct.error as exc:
        raise FrameError(f"{data} does not fit {fmt.name}") from exc


def encode_custom(key: str, value: Value) -> bytes:
    """One complete Custom header: type, counted key, typed value."""
    return _H_CUSTOM + counted_string(key) + encode_value(value)


def encode(frame: Frame) -> bytes:
    """Encode a frame in the Java writer's header order (§4.3): code, phrase, flag, token, customs.

    Headers whose value is 0/None/empty are omitted, as every reference writer does.
    """
    parts = [bytes((frame.version, frame.type))]
    if frame.status_code:
        parts.append(_H_STATUS_CODE + _I32.pack(frame.status_code))
    if frame.status_phrase:
        parts.append(_H_STATUS_PHRASE + counted_string(frame.status_phrase))
    if frame.flag:
        parts.append(_H_FLAG + _I32.pack(frame.flag))
    if frame.token:
        parts.append(_H_TOKEN + counted_string(frame.token))
    for key, value in frame.custom.items():
        parts.append(encode_custom(key, value))
    parts.append(END_OF_HEADERS)
    return b"".join(parts)


# ------------------------------------------------------------------ frame pieces
#
# A session that sends the same shape of frame many times (a confirm per message, a push
# per attempt) builds its constant parts once from these and appends only the values:
#
#     send_head(token) + encode_custom("__kind", byte(2)) + custom_head("id", Fmt.INT64)
#     + int64_value(message_id) + END_OF_HEADERS
#
# is byte for byte ``encode(Frame(SEND, token=token, custom={"__kind": ..., "id": ...}))``.


def send_head(token: str, version: int = PROTOCOL_VERSION) -> bytes:
    """The start of a SEND frame after login: version, type and the Token header.

    Custom headers follow, then :data:`END_OF_HEADERS`.
    """
    return bytes((version, MessageType.SEND)) + _H_TOKEN + counted_string(token)


def custom_head(key: str, fmt: Fmt) -> bytes:
    """A Custom header up to its value: header type, counted key and format byte.

    Append the value's payload (:func:`int64_value`, :func:`byte_value`) to complete it.
    """
    return _H_CUSTOM + counted_string(key) + _FMT_BYTE[fmt]


def int64_value(n: int) -> bytes:
    """The 8 payload bytes of an Int64 or Date value. FrameError when ``n`` does not fit."""
    try:
        return _I64_PACK(n)
    except struct.error:
        raise FrameError(f"{n} does not fit INT64") from None


def byte_value(n: int) -> bytes:
    """The payload byte of a Byte value (signed). FrameError when ``n`` does not fit."""
    try:
        return _I8_PACK(n)
    except struct.error:
        raise FrameError(f"{n} does not fit BYTE") from None


def string(text: str | None) -> Value:
    """A CountedString value (Void when None)."""
    return Value(Fmt.VOID, None) if text is None else Value(Fmt.STRING, text)


def byte(n: int) -> Value:
    return Value(Fmt.BYTE, n)


def int64(n: int) -> Value:
    return Value(Fmt.INT64, n)


def date_ms(ms: int) -> Value:
    return Value(Fmt.DATE, ms)
