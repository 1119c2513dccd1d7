"""Codec against the golden vectors of docs/protocol.md §7, and malformed input."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from bridge.errors import FrameError
from bridge.sources.tmc import codec
from bridge.sources.tmc.codec import Fmt, Frame, MessageType, Value

DATA = Path(__file__).parent.parent / "data"
TOKEN = "32e88d28-20b1-40dd-8e2d-abec197277fe"

CONNECTACK_72 = bytes.fromhex(
    "020104000100000005002400000033326538386432382d323062312d343064642d386532642d616265633139"
    "3732373766650000"
)
PUSH_73 = bytes.fromhex(
    "020205002400000033326538386432382d323062312d343064642d386532642d61626563313937323737666501"
    "00060000005f5f6b696e64020301000200000069640515cd371158f8871e010005000000746f706963011a0000"
    "0074616f62616f5f74726164655f54726164654275796572506179010007000000636f6e74656e74018c000000"
    "7b2262757965725f6e69636b223a2274625f62757965723031222c227061796d656e74223a22313739392e3030"
    "222c226f6964223a343132333435363738393031323334353637382c22746964223a3431323334353637383930"
    "31323334353637382c2274797065223a226669786564222c2273656c6c65725f6e69636b223a2264656d6f5f73"
    "686f70227d01000400000074696d65067b68e5cf8b0100000100070000006f757474696d6506b06de5cf8b0100"
    "000100090000007075626c6973686572010800000031323439373931340100060000007573657269640501562183"
    "000000000100040000006e69636b010900000064656d6f5f73686f70010006000000646174616964054ef3c043"
    "1a7639390000"
)
FAILED_ACK_76 = bytes.fromhex(
    "02 01 02 00 01 00 00 00 03 00 0c 00 00 00 69 6e 76 61 6c 69 64 20 73 69 67 6e"
    " 04 00 01 00 00 00 00 00"
)


def captures() -> list[dict[str, object]]:
    return json.loads((DATA / "tmc_captures_2014.json").read_text())["captures"]  # type: ignore[no-any-return]


def test_connectack_vector_decodes_flag_and_token() -> None:
    frame = codec.decode(CONNECTACK_72)
    assert frame.type is MessageType.CONNECTACK
    assert (frame.version, frame.flag, frame.token) == (2, 1, TOKEN)
    assert codec.encode(frame) == CONNECTACK_72
    assert len(CONNECTACK_72) == 52


def test_data_push_vector_keeps_64_bit_ids_exact() -> None:
    frame = codec.decode(PUSH_73)
    assert len(PUSH_73) == 412
    assert frame.custom["id"] == Value(Fmt.INT64, 2200000000123456789)
    assert frame.custom["dataid"] == Value(Fmt.INT64, 4123456789012345678)
    assert frame.custom["time"] == Value(Fmt.DATE, 1700000000123)
    assert frame.custom["__kind"] == Value(Fmt.BYTE, 3)
    content = json.loads(str(frame.get("content")))
    assert content["tid"] == 4123456789012345678  # not 4123456789012345856 (float)
    assert codec.encode(frame) == PUSH_73


def test_failed_connectack_vector_round_trips() -> None:
    frame = codec.decode(FAILED_ACK_76)
    assert (frame.status_code, frame.status_phrase, frame.flag, frame.token) == (
        1,
        "invalid sign",
        1,
        None,
    )
    assert codec.encode(frame) == FAILED_ACK_76


@pytest.mark.parametrize("capture", captures(), ids=lambda c: str(c["name"]))
def test_real_2014_captures_decode_and_round_trip(capture: dict[str, object]) -> None:
    raw = bytes.fromhex(str(capture["hex"]))
    assert len(raw) == capture["bytes"]
    assert hashlib.sha256(raw).hexdigest() == capture["sha256"]
    frame = codec.decode(raw)
    assert frame.type is MessageType.SEND
    assert frame.get("__kind") == 3
    assert frame.custom["id"].fmt is Fmt.INT64
    assert frame.custom["born_time"].fmt is Fmt.INT64  # plain Int64 in 2014, not a Date
    assert frame.custom["retried"] == Value(Fmt.BYTE, 1)
    content = json.loads(str(frame.get("content")))
    assert content["tid"] == frame.get("dataid") == frame.get("data_id")
    assert codec.encode(frame) == raw


def test_the_507_byte_capture_fields() -> None:
    raw = bytes.fromhex(str(captures()[0]["hex"]))
    frame = codec.decode(raw)
    assert len(raw) == 507
    assert frame.token == "d2c3e864-cf6d-4888-8fb3-5bb95719b01b"
    assert frame.get("id") == 2131800080537681927
    assert frame.get("userid") == 720978815
    assert frame.get("topic") == "taobao_trade_TradeBuyerPay"
    assert frame.get("time") == 1394862763110
    assert frame.get("outtime") == 1395035520946
    assert list(frame.custom)[:3] == ["topic", "userid", "__kind"]  # wire order kept


def test_every_value_format_round_trips() -> None:
    frame = Frame(
        MessageType.SEND,
        token="t",
        custom={
            "v": Value(Fmt.VOID, None),
            "s": codec.string("中文"),
            "b": codec.byte(-1),
            "h": Value(Fmt.INT16, -2),
            "i": Value(Fmt.INT32, 2**31 - 1),
            "q": codec.int64(-(2**63)),
            "d": codec.date_ms(1),
            "a": Value(Fmt.BYTE_ARRAY, b"\x00\xff"),
            "e": codec.string(""),
        },
    )
    decoded = codec.decode(codec.encode(frame))
    assert decoded.custom["s"].data == "中文"
    assert decoded.custom["q"].data == -(2**63)
    assert decoded.custom["a"].data == b"\x00\xff"
    assert decoded.custom["e"] == Value(Fmt.STRING, "")  # empty string is 4 zero bytes
    assert b"\x01\x00\x00\x00\x00" in codec.encode(frame)


def test_trailing_bytes_after_end_of_headers_are_ignored() -> None:
    assert codec.decode(CONNECTACK_72 + b"junk").token == TOKEN


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "too short"),
        (b"\x02\x01\x00", "too short"),
        (b"\x01\x01\x00\x00", "version 1"),
        (b"\x02\x09\x00\x00", "unknown message type"),
        (b"\x02\x01\x09\x00\x00\x00", "unknown header type 9"),
        (b"\x02\x02\x05\x00\xff\xff\xff\x7f", "token needs"),
        (b"\x02\x02\x05\x00\xff\xff\xff\xff", "negative token length"),
        (b"\x02\x02\x01\x00\x01\x00\x00\x00k\x08", "unknown value format 8"),
        (b"\x02\x02\x01\x00\x01\x00\x00\x00k\x05\x01\x02", "INT64 value"),
        (b"\x02\x02\x01\x00\x01\x00\x00\x00k\x07\x10\x00\x00\x00ab", "byte array"),
        (b"\x02\x02\x04\x00\x01\x00", "flag needs"),
        (CONNECTACK_72[:-2], "header type needs"),
    ],
)
def test_malformed_frames_raise_frame_error(data: bytes, needle: str) -> None:
    with pytest.raises(FrameError, match=needle):
        codec.decode(data)


def test_every_truncation_of_a_real_capture_is_refused_cleanly() -> None:
    raw = bytes.fromhex(str(captures()[0]["hex"]))
    for cut in range(len(raw) - 1):
        with pytest.raises(FrameError):
            codec.decode(raw[:cut])


def test_invalid_utf8_is_replaced_in_client_mode_and_refused_in_strict_mode() -> None:
    raw = b"\x02\x03\x03\x00\x02\x00\x00\x00\xff\xfe\x00\x00"
    assert codec.decode(raw).status_phrase == "\ufffd\ufffd"
    with pytest.raises(FrameError, match="UTF-8"):
        codec.decode(raw, strict_utf8=True)


def test_encoder_refuses_values_that_do_not_fit() -> None:
    with pytest.raises(FrameError, match="does not fit BYTE"):
        codec.encode_value(codec.byte(300))
    with pytest.raises(FrameError, match="must be int"):
        codec.encode_value(Value(Fmt.INT64, "1"))
