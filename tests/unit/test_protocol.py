"""Sans-I/O sessions against the vectors of docs/protocol.md §5-§7."""

from __future__ import annotations

import gzip

import pytest

from bridge.errors import FrameError, LoginError, ProtocolError
from bridge.sources.tmc import codec
from bridge.sources.tmc import server as tmc_server
from bridge.sources.tmc import session as tmc_session
from bridge.sources.tmc.codec import Frame, MessageType
from tests.unit.test_codec import CONNECTACK_72, FAILED_ACK_76, PUSH_73, TOKEN

SECRET = "0123456789abcdef0123456789abcdef"
CONNECT_71 = (
    "02000400010000000100070000006170705f6b65790108000000313233343536373801000a00000067726f7570"
    "5f6e616d65010700000064656661756c7401000900000074696d657374616d70010d0000003137303030303030"
    "30303030300100040000007369676e0120000000384132354431394430334330344232383936323732373834"
    "343035463943444601000300000073646b0115000000746f702d73646b2d6a6176612d32303234303130310100"
    "0b000000696e7472616e65745f6970010c0000003139322e3136382e312e31300000"
)
CONFIRM_74 = (
    "020205002400000033326538386432382d323062312d343064642d386532642d61626563313937323737666501"
    "00060000005f5f6b696e64020201000200000069640515cd371158f8871e0000"
)
PULL_75 = (
    "020205002400000033326538386432382d323062312d343064642d386532642d61626563313937323737666501"
    "00060000005f5f6b696e6402010000"
)
FAILED_76 = (
    "020205002400000033326538386432382d323062312d343064642d386532642d61626563313937323737666501"
    "00060000005f5f6b696e64021401000200000069640515cd371158f8871e0100030000006d7367010a00000064"
    "622074696d656f75740000"
)


#: The bridge's own CONNECT for the inputs of §7.1 (sdk ``tmc-bridge``): the keys of the
#: official Java client 2.0.0 in its order, ``token`` as Void.
BRIDGE_CONNECT = (
    "02000400010000000100070000006170705f6b65790108000000313233343536373801000a00000067726f7570"
    "5f6e616d65010700000064656661756c7401000a00000066696c7465725f65787001010000002a01000b000000"
    "6d696e6f725f67726f7570010700000064656661756c740100040000007369676e012000000038413235443139"
    "4430334330344232383936323732373834343035463943444601000300000073646b010a000000746d632d6272"
    "6964676501000b000000696e7472616e65745f6970010c0000003139322e3136382e312e313001000900000074"
    "696d657374616d70010d00000031373030303030303030303030010005000000746f6b656e000000"
)


def online_session() -> tmc_session.ClientSession:
    s = tmc_session.ClientSession("12345678", SECRET, "default", intranet_ip="192.168.1.10")
    assert s.connect(1700000000000).hex() == BRIDGE_CONNECT
    assert s.receive(CONNECTACK_72) == tmc_session.LoggedIn(TOKEN)
    return s


def test_sign_worked_example() -> None:
    assert tmc_session.sign(SECRET, "12345678", "default", "1700000000000") == (
        "8A25D19D03C04B2896272784405F9CDF"
    )


def test_bridge_connect_carries_the_java_client_keys() -> None:
    frame = codec.decode(bytes.fromhex(BRIDGE_CONNECT))
    assert list(frame.custom) == [
        "app_key",
        "group_name",
        "filter_exp",
        "minor_group",
        "sign",
        "sdk",
        "intranet_ip",
        "timestamp",
        "token",
    ]
    assert frame.get("filter_exp") == "*" and frame.get("minor_group") == "default"
    assert frame.custom["token"] == codec.Value(codec.Fmt.VOID, None)
    assert frame.get("sdk") == "tmc-bridge" and frame.flag == 1
    assert frame.get("sign") == "8A25D19D03C04B2896272784405F9CDF"
    # The socket's local address, when the caller passes it, wins; without any the key
    # is left out.
    s = tmc_session.ClientSession("12345678", SECRET, "default")
    assert codec.decode(s.connect(1, intranet_ip="10.0.0.7")).get("intranet_ip") == "10.0.0.7"
    assert "intranet_ip" not in codec.decode(s.connect(1)).custom


def test_client_frames_match_vectors_byte_for_byte() -> None:
    s = online_session()
    assert s.confirm(2200000000123456789).hex() == CONFIRM_74
    assert s.pull().hex() == PULL_75
    assert s.fail(2200000000123456789, "db timeout").hex() == FAILED_76
    assert len(s.confirm(1)) == 77


def test_push_becomes_a_source_message_with_exact_ids() -> None:
    s = online_session()
    event = s.receive(PUSH_73, received_ns=42)
    assert isinstance(event, tmc_session.Push)
    m = event.message
    assert (m.message_id, m.topic, m.user_id, m.data_id) == (
        2200000000123456789,
        "taobao_trade_TradeBuyerPay",
        2200000001,
        4123456789012345678,
    )
    assert (m.publish_time_ms, m.publisher, m.nick, m.received_ns) == (
        1700000000123,
        "12497914",
        "demo_shop",
        42,
    )
    assert b'"tid":4123456789012345678' in m.content


def test_failed_login_raises_login_error_with_code_and_phrase() -> None:
    s = tmc_session.ClientSession("12345678", "wrong", "default")
    s.connect(1)
    with pytest.raises(LoginError) as info:
        s.receive(FAILED_ACK_76)
    assert (info.value.status_code, info.value.status_phrase) == (1, "invalid sign")
    assert "wrong" not in str(info.value)
    with pytest.raises(ProtocolError, match="not logged in"):
        s.confirm(1)


def test_connectack_must_echo_the_flag() -> None:
    s = tmc_session.ClientSession("k", "s", "g")
    s.connect(1)
    s.lost()
    s.connect(2)  # flag 2 now; the vector echoes flag 1
    with pytest.raises(ProtocolError, match="does not echo 2"):
        s.receive(CONNECTACK_72)


def test_nothing_may_be_sent_before_login() -> None:
    s = tmc_session.ClientSession("k", "s", "g")
    with pytest.raises(ProtocolError):
        s.pull()


def test_foreign_token_push_is_ignored_not_delivered() -> None:
    s = online_session()
    frame = codec.decode(PUSH_73)
    frame.token = "another-token"
    assert isinstance(s.receive(codec.encode(frame)), tmc_session.Ignored)


def test_gzip_bytearray_content_is_inflated_and_bad_gzip_is_flagged() -> None:
    s = online_session()
    body = tmc_server.push_body(
        7,
        "taobao_trade_TradeCreate",
        gzip.compress(b'{"tid":1}'),
        publish_time_ms=1,
        out_time_ms=2,
        publisher="p",
        user_id=3,
        nick="n",
        data_id=1,
    )
    server = tmc_server.ServerSession({})
    server.token = TOKEN
    server._push_head = codec.encode(Frame(MessageType.SEND, token=TOKEN))[:-2] + (
        codec.encode_custom("__kind", codec.byte(3))
    )
    event = s.receive(server.push(body))
    assert isinstance(event, tmc_session.Push)
    assert event.message.content == b'{"tid":1}'
    bad = tmc_server.push_body(
        8,
        "t",
        b"not gzip",
        publish_time_ms=1,
        out_time_ms=2,
        publisher="p",
        user_id=3,
        nick="n",
        data_id=None,
    )
    event = s.receive(server.push(bad))
    assert isinstance(event, tmc_session.Push)
    assert event.message.malformed is not None


def test_push_without_id_is_rejected_not_raised() -> None:
    s = online_session()
    frame = Frame(
        MessageType.SEND, token=TOKEN, custom={"__kind": codec.byte(3), "topic": codec.string("x")}
    )
    event = s.receive(codec.encode(frame))
    assert isinstance(event, tmc_session.Rejected) and "without an id" in event.reason


def test_malformed_bytes_raise_frame_error() -> None:
    s = online_session()
    with pytest.raises(FrameError):
        s.receive(b"\x02\x02\x05\x00\xff\xff")


def test_server_session_full_exchange() -> None:
    server = tmc_server.ServerSession({"12345678": SECRET}, strict=True)
    request = server.receive(bytes.fromhex(CONNECT_71))
    assert isinstance(request, tmc_server.ConnectRequest)
    assert request.sign_ok and request.flag == 1 and request.sdk == "top-sdk-java-20240101"
    assert server.accept(request, TOKEN) == CONNECTACK_72
    assert server.receive(bytes.fromhex(PULL_75)) == tmc_server.PullRequest()
    assert server.receive(bytes.fromhex(CONFIRM_74)) == tmc_server.Confirm(2200000000123456789)
    assert server.receive(bytes.fromhex(FAILED_76)) == tmc_server.Failed(
        2200000000123456789, "db timeout"
    )
    body = tmc_server.push_body(
        2200000000123456789,
        "taobao_trade_TradeBuyerPay",
        "{}",
        publish_time_ms=1,
        out_time_ms=2,
        publisher="12497914",
        user_id=2200000001,
        nick="demo_shop",
        data_id=5,
    )
    push = codec.decode(server.push(body))
    assert push.token == TOKEN and push.flag == 0
    assert push.custom["id"].fmt is codec.Fmt.INT64


def test_server_rejects_a_wrong_sign_and_answers_failed_connectack() -> None:
    server = tmc_server.ServerSession({"12345678": "other-secret"})
    request = server.receive(bytes.fromhex(CONNECT_71))
    assert isinstance(request, tmc_server.ConnectRequest)
    assert not request.sign_ok
    assert server.reject(request.flag, 1, "invalid sign") == FAILED_ACK_76


def test_server_strict_mode_requires_token_and_byte_kind() -> None:
    server = tmc_server.ServerSession({"12345678": SECRET}, strict=True)
    server.accept(server.receive(bytes.fromhex(CONNECT_71)), TOKEN)  # type: ignore[arg-type]
    no_token = Frame(MessageType.SEND, custom={"__kind": codec.byte(1)})
    with pytest.raises(ProtocolError, match="token"):
        server.receive(codec.encode(no_token))
    string_kind = bytes.fromhex(
        PULL_75.replace("5f5f6b696e640201", "5f5f6b696e6401010000003100")[:-4] + "0000"
    )
    with pytest.raises(ProtocolError):
        server.receive(string_kind)
    lenient = tmc_server.ServerSession({"12345678": SECRET})
    lenient.accept(lenient.receive(bytes.fromhex(CONNECT_71)), TOKEN)  # type: ignore[arg-type]
    failed_no_token = Frame(
        MessageType.SENDACK,
        custom={"__kind": codec.byte(20), "id": codec.int64(5), "msg": codec.string(None)},
    )
    assert lenient.receive(codec.encode(failed_no_token)) == tmc_server.Failed(5, None)
