"""ServerSession.handle: every client frame gets a decision (answer, close, facts to log).

Frames are the protocol's vectors (the CONNECT of §7.1, the client frames of §7.4-§7.6),
the CONNECT the official Java client 2.0.0 sends (its nine keys in its map order, ``token``
Void) and variants of real third-party clients built with the codec.
"""

from __future__ import annotations

import pytest

from bridge.errors import FrameError, ProtocolError
from bridge.sources.tmc import codec, sim_frames
from bridge.sources.tmc import server as tmc_server
from bridge.sources.tmc import session as tmc_session
from bridge.sources.tmc.codec import Fmt, Frame, MessageType, Value
from bridge.sources.tmc.server import Decision, Deviation, Outcome, ServerSession
from tests.unit.test_codec import CONNECTACK_72, FAILED_ACK_76, TOKEN
from tests.unit.test_protocol import (
    BRIDGE_CONNECT,
    CONFIRM_74,
    CONNECT_71,
    FAILED_76,
    PULL_75,
    SECRET,
)

KEY = "12345678"
SIGN = "8A25D19D03C04B2896272784405F9CDF"  # §5.3 worked example, timestamp 1700000000000


def java_connect(**changes: Value | None) -> bytes:
    """The official Java client 2.0.0's CONNECT for the §7.1 inputs; ``changes`` replace
    (or, with None, remove) entries."""
    custom: dict[str, Value] = {
        "app_key": codec.string(KEY),
        "group_name": codec.string("default"),
        "filter_exp": codec.string("*"),
        "minor_group": codec.string("default"),
        "sign": codec.string(SIGN),
        "sdk": codec.string("top-sdk-java-dynamicVersionNo"),
        "intranet_ip": codec.string("192.168.1.10"),
        "timestamp": codec.string("1700000000000"),
        "token": Value(Fmt.VOID, None),
    }
    for key, value in changes.items():
        if value is None:
            custom.pop(key)
        else:
            custom[key] = value
    return codec.encode(Frame(MessageType.CONNECT, flag=1, custom=custom))


def new_server(*, strict: bool = False, **kw: object) -> ServerSession:
    return ServerSession({KEY: SECRET}, strict=strict, new_token=lambda: TOKEN, **kw)  # type: ignore[arg-type]


def online(*, strict: bool = False) -> ServerSession:
    server = new_server(strict=strict)
    assert server.handle(java_connect()).outcome is Outcome.LOGIN
    return server


def send(token: str | None = TOKEN, *, flag: int = 0, **custom: Value) -> bytes:
    return codec.encode(Frame(MessageType.SEND, flag=flag, token=token, custom=custom))


def failed_ack(decision: Decision) -> Frame:
    assert decision.reply is not None
    frame = codec.decode(decision.reply)
    assert frame.type is MessageType.CONNECTACK and frame.token is None
    assert frame.status_code == 1 and frame.status_phrase
    return frame


# ----------------------------------------------------------------------------- login


@pytest.mark.parametrize("strict", [False, True])
def test_official_java_client_connect_logs_in(strict: bool) -> None:
    server = new_server(strict=strict)
    decision = server.handle(java_connect())
    assert decision.outcome is Outcome.LOGIN and decision.reason == "ok"
    assert decision.reply == CONNECTACK_72  # Flag 1 echoed, the token (§7.2)
    assert not decision.protocol_errors and not decision.tolerated and not decision.close
    request = decision.event
    assert isinstance(request, tmc_server.ConnectRequest)
    assert (request.app_key, request.group_name, request.sdk, request.intranet_ip) == (
        KEY,
        "default",
        "top-sdk-java-dynamicVersionNo",
        "192.168.1.10",
    )
    assert server.online and server.login == request
    assert decision.log_fields() == {
        "outcome": "login",
        "reason": "ok",
        "app_key": KEY,
        "group": "default",
        "sdk": "top-sdk-java-dynamicVersionNo",
        "intranet_ip": "192.168.1.10",
    }


@pytest.mark.parametrize("vector", [CONNECT_71, BRIDGE_CONNECT], ids=["notes-7.1", "bridge"])
def test_notes_vector_and_the_bridges_own_connect_log_in_strictly(vector: str) -> None:
    decision = new_server(strict=True).handle(bytes.fromhex(vector))
    assert decision.outcome is Outcome.LOGIN and decision.reply == CONNECTACK_72
    assert not decision.tolerated


def test_wrong_sign_gets_the_failed_connectack_layout_of_the_notes() -> None:
    server = ServerSession({KEY: "other-secret"})
    decision = server.handle(java_connect())
    assert decision.outcome is Outcome.LOGIN_FAILED and decision.reason == "invalid_sign"
    assert decision.reply == FAILED_ACK_76  # code 1, "invalid sign", Flag 1 echoed
    assert not decision.protocol_errors  # a credentials problem, not a protocol error
    assert isinstance(decision.event, tmc_server.ConnectRequest) and not server.online
    assert not decision.close


@pytest.mark.parametrize("key", ["sign", "app_key", "group_name", "timestamp"])
def test_connect_without_a_required_key_is_answered(key: str) -> None:
    server = new_server()
    decision = server.handle(java_connect(**{key: None}))
    assert decision.outcome is Outcome.LOGIN_FAILED and decision.reason == "missing_field"
    frame = failed_ack(decision)
    assert frame.status_phrase == f"missing {key}" and frame.flag == 1
    assert decision.protocol_errors == (
        Deviation(key, "missing_field", f"CONNECT without {key!r}"),
    )
    assert not server.online


def test_empty_sign_counts_as_missing() -> None:
    decision = new_server().handle(java_connect(sign=codec.string("")))
    assert failed_ack(decision).status_phrase == "missing sign"


def test_unknown_app_key() -> None:
    decision = ServerSession({"other": SECRET}).handle(java_connect())
    assert decision.outcome is Outcome.LOGIN_FAILED and decision.reason == "unknown_app_key"
    assert failed_ack(decision).status_phrase == "unknown app_key"
    assert decision.log_fields()["app_key"] == KEY


def test_version_1_connect_is_refused_in_its_own_version() -> None:
    data = b"\x01" + java_connect()[1:]
    decision = new_server().handle(data)
    assert decision.outcome is Outcome.LOGIN_FAILED and decision.reason == "unsupported_version"
    assert decision.reply is not None and decision.reply[0] == 1
    frame = codec.decode(b"\x02" + decision.reply[1:])
    assert frame.status_code == 1 and frame.flag == 1
    assert frame.status_phrase == "unsupported protocol version 1"
    assert decision.protocol_errors[0].field == "version"


@pytest.mark.parametrize("vector", [PULL_75, CONFIRM_74], ids=["pull", "confirm"])
def test_send_before_login_gets_a_failed_connectack(vector: str) -> None:
    server = new_server()
    decision = server.handle(bytes.fromhex(vector))
    assert decision.outcome is Outcome.LOGIN_FAILED and decision.reason == "send_before_login"
    assert failed_ack(decision).status_phrase == "not connected: send CONNECT first"
    assert decision.protocol_errors[0].field == "type"
    # The socket may still log in afterwards.
    assert server.handle(java_connect()).outcome is Outcome.LOGIN


def test_malformed_first_frame_is_answered_and_names_the_field() -> None:
    data = java_connect()[:-3]  # cut inside the last Custom entry (token)
    decision = new_server().handle(data)
    assert decision.outcome is Outcome.LOGIN_FAILED and decision.reason == "malformed_frame"
    frame = failed_ack(decision)
    assert frame.flag == 1 and frame.status_phrase.startswith("malformed frame: ")  # type: ignore[union-attr]
    assert decision.protocol_errors[0].field == "token"
    assert failed_ack(new_server().handle(b"\x07")).flag == 0


def test_login_error_then_retry_on_the_same_socket() -> None:
    server = ServerSession({KEY: SECRET}, new_token=lambda: TOKEN)
    assert server.handle(java_connect(sign=codec.string("0" * 32))).reason == "invalid_sign"
    assert server.handle(java_connect()).reply == CONNECTACK_72


def test_close_on_login_error_and_configured_phrases() -> None:
    server = ServerSession(
        {KEY: "other"},
        close_on_login_error=True,
        login_errors={"invalid_sign": (7, "isv.tmc-switch-off")},
    )
    decision = server.handle(java_connect())
    assert decision.close
    frame = codec.decode(decision.reply or b"")
    assert (frame.status_code, frame.status_phrase) == (7, "isv.tmc-switch-off")


def test_second_connect_is_refused_and_the_first_login_stays() -> None:
    server = online()
    decision = server.handle(bytes.fromhex(CONNECT_71))
    assert decision.outcome is Outcome.REFUSED and decision.reason == "second_connect"
    frame = failed_ack(decision)
    assert frame.status_phrase == "only allow sinle endpoint connected on a channel"
    assert frame.flag == 1
    assert server.online and server.token == TOKEN
    assert server.handle(bytes.fromhex(PULL_75)).event == tmc_server.PullRequest()


def test_strict_connect_refuses_non_canonical_fields() -> None:
    lower = java_connect(sign=codec.string(SIGN.lower()), app_key=Value(Fmt.INT64, 12345678))
    lenient = new_server().handle(lower)
    assert lenient.outcome is Outcome.LOGIN
    assert {d.reason for d in lenient.tolerated} == {"app_key_not_string", "sign_not_upper_case"}
    strict = new_server(strict=True).handle(lower)
    assert strict.outcome is Outcome.LOGIN_FAILED
    assert [d.field for d in strict.protocol_errors] == ["app_key", "sign"]
    assert "app_key has format INT64" in (failed_ack(strict).status_phrase or "")


# ----------------------------------------------------------------------------- requests


@pytest.mark.parametrize("strict", [False, True])
def test_canonical_requests(strict: bool) -> None:
    server = online(strict=strict)
    cases: list[tuple[str, tmc_server.ServerEvent]] = [
        (PULL_75, tmc_server.PullRequest()),
        (CONFIRM_74, tmc_server.Confirm(2200000000123456789)),
        (FAILED_76, tmc_server.Failed(2200000000123456789, "db timeout")),
    ]
    for vector, event in cases:
        decision = server.handle(bytes.fromhex(vector))
        assert decision == Decision(Outcome.REQUEST, event=event)


@pytest.mark.parametrize("strict", [False, True])
def test_java_entry_order_is_no_deviation(strict: bool) -> None:
    server = online(strict=strict)
    confirm = send(id=codec.int64(5), __kind=codec.byte(2))
    failed = send(msg=codec.string(None), id=codec.int64(5), __kind=codec.byte(20))
    assert server.handle(confirm) == Decision(Outcome.REQUEST, event=tmc_server.Confirm(5))
    assert server.handle(failed) == Decision(Outcome.REQUEST, event=tmc_server.Failed(5, None))


STRING_KIND_PULL = (  # §7.8: a pull whose __kind is the String "1" (token made ours)
    "0202050024000000" + TOKEN.encode().hex() + "0100060000005f5f6b696e6401010000003100" + "00"
)

DEVIATIONS = {
    "int32 id (tmcpy, PHP)": (
        send(__kind=codec.byte(2), id=Value(Fmt.INT32, 7)),
        tmc_server.Confirm(7),
        [("id", "id_not_int64")],
    ),
    "byte id": (
        send(__kind=codec.byte(2), id=Value(Fmt.BYTE, 7)),
        tmc_server.Confirm(7),
        [("id", "id_not_int64")],
    ),
    "failed without token (PHP)": (
        send(None, __kind=codec.byte(20), id=codec.int64(7), msg=codec.string("x")),
        tmc_server.Failed(7, "x"),
        [("token", "token_missing")],
    ),
    "failed as SENDACK (tmc.js)": (
        codec.encode(
            Frame(
                MessageType.SENDACK,
                token=TOKEN,
                custom={"__kind": codec.byte(20), "id": codec.int64(7)},
            )
        ),
        tmc_server.Failed(7, None),
        [("type", "failed_as_sendack")],
    ),
    "string __kind (§7.8)": (
        bytes.fromhex(STRING_KIND_PULL[:-2] + "00"),
        tmc_server.PullRequest(),
        [("__kind", "kind_not_byte")],
    ),
    "int32 id, no token, int msg": (
        send(None, __kind=codec.byte(20), id=Value(Fmt.INT32, 7), msg=Value(Fmt.INT32, 3)),
        tmc_server.Failed(7, "3"),
        [("token", "token_missing"), ("id", "id_not_int64"), ("msg", "msg_not_string")],
    ),
}


@pytest.mark.parametrize("case", list(DEVIATIONS))
def test_lenient_takes_real_client_variants_and_strict_names_each_field(case: str) -> None:
    data, event, expected = DEVIATIONS[case]
    lenient = online().handle(data)
    assert lenient.outcome is Outcome.REQUEST and lenient.event == event
    assert [(d.field, d.reason) for d in lenient.tolerated] == expected
    assert not lenient.protocol_errors and lenient.reply is None
    strict = online(strict=True).handle(data)
    assert strict.outcome is Outcome.REFUSED and strict.event is None
    assert [(d.field, d.reason) for d in strict.protocol_errors] == expected
    assert strict.reason == expected[0][1]
    assert all(d.field in strict.log_fields()["fields"] for d in strict.protocol_errors)  # type: ignore[operator]


HARD_ERRORS = {
    "foreign token": (send("other", __kind=codec.byte(1)), "token", "token_mismatch"),
    "no __kind": (send(id=codec.int64(1)), "__kind", "kind_missing"),
    "unknown __kind": (send(__kind=codec.byte(9)), "__kind", "kind_unknown"),
    "confirm without id": (send(__kind=codec.byte(2)), "id", "id_missing"),
    "string id": (send(__kind=codec.byte(2), id=codec.string("7")), "id", "id_not_integer"),
    "CONNECTACK from a client": (
        codec.encode(Frame(MessageType.CONNECTACK, token=TOKEN)),
        "type",
        "unexpected_type",
    ),
    "cut frame": (bytes.fromhex(CONFIRM_74)[:-5], "id", "malformed_frame"),
}


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("case", list(HARD_ERRORS))
def test_frames_refused_in_both_modes(case: str, strict: bool) -> None:
    data, field, reason = HARD_ERRORS[case]
    server = online(strict=strict)
    decision = server.handle(data)
    assert decision.outcome is Outcome.REFUSED and decision.reason == reason
    assert decision.protocol_errors[0].field == field and decision.reply is None
    assert server.online  # a bad frame never logs the session out


# ----------------------------------------------------------------------------- publish


def publish(flag: int, **extra: Value) -> bytes:
    custom = {
        "__kind": codec.byte(3),
        "topic": codec.string("isv_demo_Topic"),
        "content": codec.string('{"a":1}'),
        **extra,
    }
    return send(TOKEN, flag=flag, **custom)


@pytest.mark.parametrize("strict", [False, True])
def test_publish_with_a_flag_gets_its_sendack(strict: bool) -> None:
    server = online(strict=strict)
    decision = server.handle(publish(42, session=codec.string("user-session")))
    assert decision.outcome is Outcome.REQUEST
    assert decision.event == tmc_server.Publish(
        "isv_demo_Topic", '{"a":1}', 42, app_key=KEY, group_name="default", session="user-session"
    )
    assert decision.reply is not None
    ack = codec.decode(decision.reply)
    assert (ack.type, ack.flag, ack.token, ack.status_code, ack.status_phrase) == (
        MessageType.SENDACK,
        42,
        TOKEN,
        0,
        None,
    )
    assert codec.encode(Frame(MessageType.SENDACK, flag=42, token=TOKEN)) == decision.reply


def test_publish_without_a_flag_gets_no_reply() -> None:
    decision = online().handle(publish(0))
    assert isinstance(decision.event, tmc_server.Publish) and decision.reply is None


@pytest.mark.parametrize(
    ("drop", "field"), [("topic", "topic"), ("content", "content")], ids=["topic", "content"]
)
def test_bad_publish_gets_an_error_sendack(drop: str, field: str) -> None:
    frame = codec.decode(publish(9))
    del frame.custom[drop]
    decision = online().handle(codec.encode(frame))
    assert decision.outcome is Outcome.REFUSED and decision.protocol_errors[0].field == field
    assert decision.reply is not None
    ack = codec.decode(decision.reply)
    assert ack.type is MessageType.SENDACK and ack.flag == 9 and ack.token == TOKEN
    assert (
        ack.status_code == 1
        and ack.status_phrase == f"publish without {'a ' if drop == 'topic' else ''}{drop}"
    )


def test_strict_refused_publish_with_a_flag_is_answered_with_the_field() -> None:
    decision = online(strict=True).handle(publish(5, __kind=Value(Fmt.INT32, 3)))
    assert decision.reply is not None
    ack = codec.decode(decision.reply)
    assert ack.status_code == 1 and "__kind" in (ack.status_phrase or "")


def test_the_java_client_accepts_the_publish_sendack_and_login() -> None:
    """The bridge's client session takes the server's answers as a real client would."""
    client = tmc_session.ClientSession(KEY, SECRET, "default")
    server = ServerSession({KEY: SECRET})
    login = server.handle(client.connect(1700000000000))
    assert login.reply is not None and not login.tolerated
    assert isinstance(client.receive(login.reply), tmc_session.LoggedIn)
    decision = server.handle(client.pull())
    assert decision.event == tmc_server.PullRequest()


def test_old_receive_interface_still_answers_as_before() -> None:
    server = new_server(strict=True)
    request = server.receive(java_connect())
    assert isinstance(request, tmc_server.ConnectRequest) and request.sign_ok
    assert server.accept(request, TOKEN) == CONNECTACK_72
    with pytest.raises(ProtocolError, match="sinle"):
        server.receive(java_connect())
    with pytest.raises(ProtocolError, match="id has format INT32"):
        server.receive(send(__kind=codec.byte(2), id=Value(Fmt.INT32, 7)))


# -- the simulator's hot-path pieces (sim_frames): byte for byte the general path ---------


@pytest.mark.parametrize(
    ("content", "data_id", "nick"),
    [
        ('{"tid":3658921147856000001}', 3658921147856000001, "demo_shop_0"),
        (b"\x1f\x8b gzip bytes", None, "店铺"),
        ("", 0, ""),
        ("lone \ud800 surrogate", -1, "n"),
    ],
)
def test_push_static_is_the_codec_encoding_of_the_same_entries(
    content: str | bytes, data_id: int | None, nick: str
) -> None:
    body = tmc_server.push_static(
        2**63 - 1,
        "taobao_trade_TradeCreate",
        content,
        publish_time_ms=1_700_000_000_123,
        publisher="12497914",
        user_id=2_200_000_001,
        nick=nick,
        data_id=data_id,
    )
    custom = {
        "id": codec.int64(2**63 - 1),
        "topic": codec.string("taobao_trade_TradeCreate"),
        "content": Value(Fmt.BYTE_ARRAY, content)
        if isinstance(content, bytes)
        else codec.string(content),
        "time": codec.date_ms(1_700_000_000_123),
        "publisher": codec.string("12497914"),
        "userid": codec.int64(2_200_000_001),
        "nick": codec.string(nick),
    }
    if data_id is not None:
        custom["dataid"] = codec.int64(data_id)
    expected = codec.encode(Frame(MessageType.SEND, custom=custom))
    assert body == expected[2:-2]  # without version/type and EndOfHeaders
    server = online()
    pushed = server.push(body + tmc_server.push_extras(5, 2))
    assert pushed == codec.encode(
        Frame(
            MessageType.SEND,
            token=TOKEN,
            custom={
                "__kind": codec.byte(3),
                **custom,
                "outtime": codec.date_ms(5),
                "retried": codec.byte(2),
            },
        )
    )
    assert pushed.startswith(server.push_head)


def test_push_static_refuses_an_id_beyond_int64_like_the_codec() -> None:
    with pytest.raises(FrameError, match="does not fit INT64"):
        tmc_server.push_static(
            2**63, "t", "c", publish_time_ms=1, publisher="p", user_id=1, nick="n", data_id=None
        )


def test_confirm_reader_takes_exactly_the_canonical_confirm() -> None:
    server = online()
    read = server.confirm_reader
    assert read is not None and new_server().confirm_reader is None
    client = tmc_session.ClientSession(KEY, SECRET, "default")
    client.connect(1)
    client.receive(
        server.accept(tmc_server.ConnectRequest(KEY, "default", "1", 1, True, None), TOKEN)
    )
    for msg_id in (0, 1, -(2**63), 2**63 - 1, 2200000000123456789):
        frame = client.confirm(msg_id)
        assert read(frame) == msg_id == read(bytearray(frame))
        # What the full decoder makes of it: the same confirm, nothing to report.
        assert server.handle(frame) == Decision(Outcome.REQUEST, event=tmc_server.Confirm(msg_id))
    assert read(bytes.fromhex(CONFIRM_74)) == 2200000000123456789
    canonical = client.confirm(7)
    variants = [
        canonical + b"\x00",  # trailing byte
        canonical[:-1],
        canonical[:-2] + b"\x01\x00",  # no EndOfHeaders where it should be
        codec.encode(
            Frame(
                MessageType.SEND,
                token=TOKEN,
                custom={"__kind": codec.byte(2), "id": Value(Fmt.INT32, 7)},
            )
        ),
        codec.encode(
            Frame(
                MessageType.SEND,
                token=TOKEN,
                custom={"id": codec.int64(7), "__kind": codec.byte(2)},
            )
        ),
        codec.encode(
            Frame(
                MessageType.SEND,
                token="other-token-of-the-same-length-xxxxxx",
                custom={"__kind": codec.byte(2), "id": codec.int64(7)},
            )
        ),
        codec.encode(
            Frame(
                MessageType.SENDACK,
                token=TOKEN,
                custom={"__kind": codec.byte(2), "id": codec.int64(7)},
            )
        ),
        codec.encode(
            Frame(
                MessageType.SEND,
                token=TOKEN,
                custom={"__kind": codec.byte(20), "id": codec.int64(7)},
            )
        ),
        client.pull(),
    ]
    for frame in variants:
        assert read(frame) is None, frame.hex()


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_binary_frame_header_is_what_websockets_writes(size: int) -> None:
    from websockets.frames import Frame as WsFrame
    from websockets.frames import Opcode

    data = bytes(size)
    wire = WsFrame(Opcode.BINARY, data).serialize(mask=False)
    assert sim_frames.binary_frame_header(size) + data == wire
