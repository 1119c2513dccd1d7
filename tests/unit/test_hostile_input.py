"""Named hostile inputs (issue item 7: bad input never stops the bridge), each with its exact
outcome. tests/unit/test_fuzz.py generates such inputs at random; these pin the ones that
matter, so a regression names itself."""

from __future__ import annotations

import gzip
import struct

import pytest
from prometheus_client import generate_latest

from bridge.config import PipelineConfig, RoutingConfig
from bridge.errors import ProtocolError, TmcError
from bridge.model import Delivery, SourceMessage
from bridge.observability.metrics import Metrics
from bridge.pipeline.engine import Pipeline
from bridge.pipeline.routing import Router
from bridge.rocketmq.client import InMessage
from bridge.sources import ons
from bridge.sources.tmc import codec
from bridge.sources.tmc import server as tmc_server
from bridge.sources.tmc import session as tmc_session
from bridge.sources.tmc.codec import Fmt, Frame, MessageType, Value
from tests.unit.test_codec import TOKEN
from tests.unit.test_pipeline import ScriptedSink
from tests.unit.test_protocol import CONNECT_71, SECRET, online_session

TRADE = "taobao_trade_TradeBuyerPay"  # keyed by the content's tid
UNKEYED = "tmall_fuwu_ServiceItemUpdate"  # matches no routing.keys pattern
ID = 2200000000123456789
DLQ = RoutingConfig().dead_letter_topic
ROUTER = Router(RoutingConfig())


def push_frame(**fields: Value) -> bytes:
    """A data push with our token; ``fields`` replace or add to a valid message."""
    custom = {
        "__kind": codec.byte(tmc_session.Kind.DATA),
        "id": codec.int64(ID),
        "topic": codec.string(TRADE),
        "content": codec.string('{"tid":4123456789012345678}'),
        "time": codec.date_ms(1700000000123),
        **fields,
    }
    return codec.encode(Frame(MessageType.SEND, token=TOKEN, custom=custom))


def receive(**fields: Value) -> tmc_session.ClientEvent:
    return online_session().receive(push_frame(**fields))


def push(**fields: Value) -> tmc_session.Push:
    event = receive(**fields)
    assert isinstance(event, tmc_session.Push), event
    return event


def nested_objects(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize("wire", ["String", "gzip ByteArray"])
def test_content_nested_1000_levels_on_a_keyed_topic_is_dead_lettered(wire: str) -> None:
    content = nested_objects(1000)
    value = (
        Value(Fmt.STRING, content)
        if wire == "String"
        else Value(Fmt.BYTE_ARRAY, gzip.compress(content))
    )
    msg = push(content=value).message
    assert msg.malformed is None and msg.content == content
    record = ROUTER.route(msg)
    assert record.topic == DLQ and record.key is None and record.value == content
    assert record.dead_letter_reason == ("content nests deeper than routing.max_json_depth (64)")
    assert dict(record.headers)["tmc.dlq.target_topic"] == b"tmc.messages"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("²", "²"),  # str.isdigit() is True for it
        ("5" * 5000, "5" * 40),  # int() refuses over 4,300 digits
        ("9223372036854775808", "9223372036854775808"),  # INT64_MAX + 1
    ],
    ids=["superscript-two", "5000-digits", "int64-max-plus-one"],
)
def test_id_string_that_is_no_int64_is_rejected(text: str, shown: str) -> None:
    event = receive(id=codec.string(text))
    assert isinstance(event, tmc_session.Rejected)
    assert event.reason.startswith("data push not confirmable: field 'id' is the String")
    assert event.message_id == shown


def test_id_string_of_int64_max_is_still_a_push() -> None:
    assert push(id=codec.string("9223372036854775807")).message.message_id == 2**63 - 1


def test_time_string_of_400_digits_marks_the_push_malformed() -> None:
    event = push(time=codec.string("7" * 400))
    msg = event.message
    assert msg.malformed == f"field 'time' is the String {'7' * 40!r}, not a decimal Int64"
    assert msg.message_id == ID and msg.publish_time_ms is None
    record = ROUTER.route(msg)
    assert record.topic == DLQ and record.dead_letter_reason == msg.malformed


def test_gzip_bomb_over_max_content_bytes_is_malformed_with_the_bytes_received() -> None:
    bomb = gzip.compress(bytes(10 * 1024 * 1024), 9)  # 10 MiB of zeros in ~10 KiB
    assert len(bomb) < 64 * 1024
    msg = push(content=Value(Fmt.BYTE_ARRAY, bomb)).message
    assert msg.malformed == (
        "gzip content inflates to more than source.tmc.max_content_bytes "
        f"({tmc_session.DEFAULT_MAX_CONTENT_BYTES})"
    )
    assert msg.content == bomb
    record = ROUTER.route(msg)
    assert record.topic == DLQ and record.value == bomb


def test_leading_zeros_of_any_length_are_a_small_number_not_a_crash() -> None:
    # 5,000 characters: int() alone would refuse them (over 4,300 digits).
    msg = push(time=codec.string("0" * 4990 + "1700000000"), retried=codec.string("0" * 5000))
    assert msg.message.malformed is None and msg.message.publish_time_ms == 1_700_000_000
    assert msg.retried == 0


def test_gzip_content_of_many_members_is_dead_lettered_quickly() -> None:
    members = gzip.compress(b"") * 100_000  # 2 MB of empty members
    msg = push(content=Value(Fmt.BYTE_ARRAY, members)).message
    assert msg.malformed == "gzip content has more than 16 members"
    two = gzip.compress(b'{"tid":') + gzip.compress(b"7}")
    assert push(content=Value(Fmt.BYTE_ARRAY, two)).message.content == b'{"tid":7}'


INVALID_UTF8 = b'{"tid":1,"note":"\xff\xfe caf\xe9"}'


def test_invalid_utf8_content_of_an_unkeyed_topic_is_forwarded_byte_for_byte() -> None:
    msg = push(topic=codec.string(UNKEYED), content=Value(Fmt.STRING, INVALID_UTF8)).message
    assert msg.malformed is None and msg.content == INVALID_UTF8
    record = ROUTER.route(msg)
    assert record.dead_letter_reason is None
    assert (record.topic, record.key, record.value) == ("tmc.messages", None, INVALID_UTF8)


def test_invalid_utf8_content_of_a_keyed_topic_is_dead_lettered_as_received() -> None:
    msg = push(content=Value(Fmt.STRING, INVALID_UTF8)).message
    assert msg.malformed is None and msg.content == INVALID_UTF8
    record = ROUTER.route(msg)
    assert record.topic == DLQ and record.value == INVALID_UTF8
    assert record.dead_letter_reason == "content is not valid UTF-8 (byte 0xff at offset 17)"


@pytest.mark.parametrize("message_id", [2**63, -(2**63) - 1, 2**64])
def test_confirm_and_fail_of_an_id_beyond_int64_raise_protocol_error(message_id: int) -> None:
    session = online_session()
    with pytest.raises(ProtocolError, match="does not fit Int64") as info:
        session.confirm(message_id)
    assert not isinstance(info.value, struct.error)
    with pytest.raises(ProtocolError, match="does not fit Int64"):
        session.fail(message_id, "db timeout")


# Found by tests/unit/test_fuzz.py (test_fuzz_server_session, test_fuzz_metrics_...).


def online_server(*, strict: bool) -> tmc_server.ServerSession:
    server = tmc_server.ServerSession({"12345678": SECRET}, strict=strict)
    request = server.receive(bytes.fromhex(CONNECT_71))
    assert isinstance(request, tmc_server.ConnectRequest)
    server.accept(request, TOKEN)
    return server


@pytest.mark.parametrize(
    "kind", ["x", "²", "2" * 5000], ids=["x", "superscript-two", "5000-digits"]
)
def test_lenient_server_answers_a_text_kind_with_protocol_error(kind: str) -> None:
    server = online_server(strict=False)
    frame = codec.encode(Frame(MessageType.SEND, custom={"__kind": codec.string(kind)}))
    with pytest.raises(ProtocolError):
        server.receive(frame)


def test_server_takes_a_connect_with_a_non_ascii_sign_as_a_wrong_sign() -> None:
    server = tmc_server.ServerSession({"12345678": SECRET})
    fields = {"app_key": "12345678", "group_name": "g", "timestamp": "1", "sign": "é" * 32}
    custom = {k: codec.string(v) for k, v in fields.items()}
    try:
        request = server.receive(codec.encode(Frame(MessageType.CONNECT, flag=1, custom=custom)))
    except TmcError:
        return  # refusing the frame is as good as a failed sign check
    assert isinstance(request, tmc_server.ConnectRequest) and not request.sign_ok


async def test_ons_topic_with_a_lone_surrogate_leaves_metrics_renderable() -> None:
    body = b'{"topic":"\\ud800","content":"{\\"tid\\":1}","outgoing_id":7}'
    msg = ons.to_source_message(
        InMessage("jushita", "", "", body, "0A0B", 0, 0, 0, 0, 0, properties={})
    )
    assert msg.malformed is not None and "'topic' holds a lone surrogate" in msg.malformed
    assert msg.content == body  # the dead letter carries the body as received
    # Any source's topic reaches the metrics as a label; one with a lone surrogate must
    # not make /metrics unrenderable from then on.
    direct = SourceMessage("ons", 8, "\ud800", b'{"tid":1}')
    pipeline = Pipeline(
        PipelineConfig(batch_linger_ms=0), ROUTER, ScriptedSink(), metrics=Metrics()
    )
    await pipeline.submit(Delivery(msg, []))
    await pipeline.submit(Delivery(direct, []))
    pipeline.close()
    await pipeline.run()
    await pipeline.shutdown()
    text = generate_latest(pipeline.metrics.registry)
    assert b"tmc_bridge_source_received_messages_total" in text
    assert b'topic="?"' in text
