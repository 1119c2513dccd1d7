"""TMC binary frame codec ("MessageIO" protocol version 2): bytes <-> :class:`Frame`.

Pure functions, no I/O, no asyncio. The layout is ``shared/tmc-protocol.md`` §4:

    uint8 version | uint8 type | header* | int16 0 (EndOfHeaders)

Every integer is little-endian. Headers are an int16 type followed by a type-specific
payload (§4.3); Custom headers carry a counted-string key and a typed value (§4.5).

Decoding bound-checks every length and raises :class:`~bridge.errors.FrameError` (one
error type) on anything malformed. Integers are decoded straight from bytes with
``struct``, so 64-bit ids stay exact Python ints and never touch a float (§13.3).

Custom values are kept as :class:`Value` pairs (format code, Python value) so that a
decoded frame re-encodes to the same bytes and the writer controls the wire format of
each key (``id`` must be Int64 and ``__kind`` a Byte, §4.5).
"""

from __future__ import annotations

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
_TYPE_BY_CODE = {t.value: t for t in MessageType}

_MIN_FRAME = 4  # version, type, and at least the int16 EndOfHeaders


def decode(data: bytes | bytearray | memoryview, *, strict_utf8: bool = False) -> Frame:
    """Decode one frame. Raises FrameError on any malformed input (§4.6).

    ``strict_utf8`` is for the simulator, which should catch client bugs; the client
    replaces bad bytes so that one odd nick cannot stall a connection (§4.6 rule 6).
    """
    buf = bytes(data)
    size = len(buf)
    if size < _MIN_FRAME:
        raise FrameError(f"frame too short: {size} bytes, need at least {_MIN_FRAME}")
    version = buf[0]
    if version != PROTOCOL_VERSION:
        raise FrameError(f"unsupported protocol version {version} (only 2 is implemented, §4.7)")
    mtype = _TYPE_BY_CODE.get(buf[1])
    if mtype is None:
        raise FrameError(f"unknown message type {buf[1]} at offset 1")
    errors = "strict" if strict_utf8 else "replace"
    frame = Frame(type=mtype, version=version)
    pos = 2

    def need(n: int, what: str) -> None:
        if n < 0 or pos + n > size:
            raise FrameError(
                f"{what} needs {n} bytes at offset {pos}, only {size - pos} left "
                f"(frame is {size} bytes)"
            )

    def counted_string(what: str) -> str:
        nonlocal pos
        need(4, f"{what} length")
        (length,) = _I32.unpack_from(buf, pos)
        if length < 0:
            raise FrameError(f"negative {what} length {length} at offset {pos}")
        pos += 4
        need(length, what)
        raw = buf[pos : pos + length]
        pos += length
        try:
            return raw.decode("utf-8", errors)
        except UnicodeDecodeError as exc:
            raise FrameError(f"{what} is not valid UTF-8 at offset {pos - length}") from exc

    while True:
        need(2, "header type")
        (htype,) = _I16.unpack_from(buf, pos)
        pos += 2
        if htype == HeaderType.END:
            # Trailing bytes after EndOfHeaders are ignored, like the Java reader (§4.1).
            return frame
        if htype == HeaderType.CUSTOM:
            key = counted_string("custom key")
            need(1, f"value format of {key!r}")
            code = buf[pos]
            fmt = _FMT_BY_CODE.get(code)
            if fmt is None:
                raise FrameError(f"unknown value format {code} for key {key!r} at offset {pos}")
            pos += 1
            value: ValueData
            if fmt is Fmt.VOID:
                value = None
            elif fmt is Fmt.STRING:
                value = counted_string(f"value of {key!r}")
            elif fmt is Fmt.BYTE_ARRAY:
                need(4, f"byte array length of {key!r}")
                (length,) = _I32.unpack_from(buf, pos)
                if length < 0:
                    raise FrameError(f"negative byte array length {length} for key {key!r}")
                pos += 4
                need(length, f"byte array of {key!r}")
                value = buf[pos : pos + length]
                pos += length
            else:
                st = _INT_STRUCT[fmt]
                need(st.size, f"{fmt.name} value of {key!r}")
                (value,) = st.unpack_from(buf, pos)
                pos += st.size
            frame.custom[key] = Value(fmt, value)
        elif htype == HeaderType.STATUS_CODE:
            need(4, "status code")
            (frame.status_code,) = _I32.unpack_from(buf, pos)
            pos += 4
        elif htype == HeaderType.STATUS_PHRASE:
            frame.status_phrase = counted_string("status phrase")
        elif htype == HeaderType.FLAG:
            need(4, "flag")
            (frame.flag,) = _I32.unpack_from(buf, pos)
            pos += 4
        elif htype == HeaderType.TOKEN:
            frame.token = counted_string("token")
        else:
            # An unknown header type has an unknown length: nothing after it can be trusted.
            raise FrameError(f"unknown header type {htype} at offset {pos - 2}")


def _counted(text: str | None) -> bytes:
    # An empty or null string is the four bytes 00 00 00 00, never the 1-byte tmcpy form (§4.4).
    raw = text.encode("utf-8") if text else b""
    return _I32.pack(len(raw)) + raw


def encode_value(value: Value) -> bytes:
    """Encode one typed Custom value (format byte + payload)."""
    fmt, data = value
    head = bytes((fmt,))
    if fmt is Fmt.VOID or data is None:
        return b"\x00"
    if fmt is Fmt.STRING:
        if not isinstance(data, str):
            raise FrameError(f"STRING value must be str, got {type(data).__name__}")
        return head + _counted(data)
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
    return b"\x01\x00" + _counted(key) + encode_value(value)


def encode(frame: Frame) -> bytes:
    """Encode a frame in the Java writer's header order (§4.3): code, phrase, flag, token, customs.

    Headers whose value is 0/None/empty are omitted, as every reference writer does.
    """
    parts = [bytes((frame.version, frame.type))]
    if frame.status_code:
        parts.append(b"\x02\x00" + _I32.pack(frame.status_code))
    if frame.status_phrase:
        parts.append(b"\x03\x00" + _counted(frame.status_phrase))
    if frame.flag:
        parts.append(b"\x04\x00" + _I32.pack(frame.flag))
    if frame.token:
        parts.append(b"\x05\x00" + _counted(frame.token))
    for key, value in frame.custom.items():
        parts.append(encode_custom(key, value))
    parts.append(b"\x00\x00")
    return b"".join(parts)


def string(text: str | None) -> Value:
    """A CountedString value (Void when None)."""
    return Value(Fmt.VOID, None) if text is None else Value(Fmt.STRING, text)


def byte(n: int) -> Value:
    return Value(Fmt.BYTE, n)


def int64(n: int) -> Value:
    return Value(Fmt.INT64, n)


def date_ms(ms: int) -> Value:
    return Value(Fmt.DATE, ms)
